"""Search for the best hand-made augmentation of the real-only recogniser, on gait31's validation split.

Simulates gait31 in memory and splits it per user as benchmarks/kshot.py does
(`dalle2_md.evaluation.protocol.simulate` and `split`: the last `--num_test` recordings test, the
`--num_val` before them validation), then trains the real-only recogniser (`protocol.KSHOT_RECOGNISER`
shape) on K = 10 and all training images per user under each augmentation setting, and scores it on
the VALIDATION split (the test split is never used). Settings, in order:

1. "default": the strong `RecogniserTrainConfig` defaults (time shift, noise, SpecAugment masks, mixup);
2. each physics augmentation of `dalle2_md.evaluation.augmentations` alone, at two small ranges, on
   top of the defaults (`SINGLES`);
3. combinations of the `--combine` best augmentations of step 2 (each at its better range): every
   subset of two or more of them, the others off (off alone is "default", one alone is step 2).

The best setting is the one with the highest validation accuracy averaged over the Ks and seeds
(ties keep the earlier, so the default wins a tie). Writes a markdown table and a JSON
(`--out`, rewritten after every setting, so a run cut short keeps what it finished).

    python benchmarks/search_augment.py [--ks 10 0] [--seeds 0] [--data_seed 0] [--threads 1]
    python benchmarks/search_augment.py --only default doppler_flip_0.5   # just these, no combinations
    python benchmarks/search_augment.py --smoke                           # tiny, seconds
"""

import os
import sys

_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = _threads

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dalle2_md.augmentation.harness import kshot_indices  # noqa: E402
from dalle2_md.data.simulator import get_profile  # noqa: E402
from dalle2_md.evaluation.protocol import KSHOT_RECOGNISER, simulate, split  # noqa: E402
from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, accuracy, train_recogniser  # noqa: E402

# each physics augmentation at two small ranges (its field of `RecogniserTrainConfig`, values)
SINGLES = {
    "doppler_scale": (0.05, 0.1),  # walking direction (cos 0-25 deg) and speed (+-6 %)
    "time_stretch": (0.02, 0.05),  # cadence (+-2 %)
    "doppler_flip": (0.25, 0.5),  # towards vs away (gait31: half each)
    "snr_jitter_db": (3.0, 6.0),  # noise floor (range changes the SNR)
    "respeckle": (0.25, 0.5),  # background speckle redrawn
}


def first_settings(only=None) -> list[tuple[str, dict]]:
    """The default, then each augmentation alone at each range: (name, `RecogniserTrainConfig` overrides)."""
    settings = [("default", {})] + [(f"{field}_{value:g}", {field: value}) for field, values in SINGLES.items() for value in values]
    if only:
        unknown = set(only) - {name for name, _ in settings}
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}; choose from {[name for name, _ in settings]}")
        settings = [s for s in settings if s[0] in only]
    return settings


def combinations(rows: list[dict], combine: int) -> list[tuple[str, dict]]:
    """Every subset of two or more of the `combine` augmentations whose better range scored best alone."""
    best = {}
    for field in SINGLES:
        mine = [r for r in rows if set(r["overrides"]) == {field}]
        if mine:
            best[field] = max(mine, key=lambda r: r["mean"])  # the first of equals: the smaller range
    top = sorted(best.values(), key=lambda r: -r["mean"])[:combine]
    out = []
    for size in range(2, len(top) + 1):
        for subset in itertools.combinations(top, size):
            overrides = {k: v for r in subset for k, v in r["overrides"].items()}
            out.append(("+".join(r["setting"] for r in subset), overrides))
    return out


def run_setting(name, overrides, base, data, ks, seeds) -> dict:
    """Validation accuracy of one setting at every K and seed."""
    images, ids, parts, rec_cfg, pool = data
    cfg = replace(base, **overrides)
    per_k, seconds = {}, []
    for k in ks:
        accs = []
        for seed in seeds:
            tr = parts["train"]
            if k < pool:
                tr = tr[kshot_indices(ids[tr], k, seed)]
            t0 = time.perf_counter()
            model = train_recogniser(images[tr], ids[tr], config=rec_cfg, train=replace(cfg, seed=seed))
            seconds.append(time.perf_counter() - t0)
            accs.append(accuracy(model, images[parts["val"]], ids[parts["val"]])[0])
            print(f"  {name} K={k if k < pool else f'all ({pool})'} seed={seed}: val acc {accs[-1]:.3f} "
                  f"({seconds[-1]:.0f}s)", flush=True)
        per_k[str(k if k < pool else "all")] = {"k": min(k, pool), "val_acc": accs, "mean": float(np.mean(accs)),
                                               "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None}
    return {"setting": name, "overrides": overrides, "per_k": per_k, "mean": float(np.mean([c["mean"] for c in per_k.values()])),
            "seconds_per_recogniser": float(np.mean(seconds))}


def markdown(rows: list[dict], best: dict | None, meta: dict) -> str:
    ks = list(rows[0]["per_k"]) if rows else []
    lines = ["| setting | " + " | ".join(f"K = {k}" for k in ks) + " | mean | s / recogniser |",
             "|---|" + "---:|" * (len(ks) + 2)]
    for r in rows:
        cells = [f"{c['mean']:.3f}" + (f" ± {c['std']:.3f}" if c["std"] is not None else "") for c in r["per_k"].values()]
        mark = " **best**" if best and r["setting"] == best["setting"] else ""
        lines.append(f"| {r['setting']}{mark} | " + " | ".join(cells) + f" | {r['mean']:.3f} | {r['seconds_per_recogniser']:.1f} |")
    lines += ["", f"Validation accuracy (mean ± std over seeds {meta['seeds']}) of the real-only recogniser, gait31 at "
              f"{meta['image_size']} px, {meta['num_users']} users, {meta['num_val_per_user']} validation recordings per user, "
              f"data seed {meta['data_seed']}, {meta['steps']} steps, {meta['threads']} torch thread(s); every setting is the "
              f"strong defaults plus its overrides. `python benchmarks/search_augment.py` ({meta['seconds']:.0f} s)."]
    return "\n".join(lines) + "\n"


def write(rows, meta, out: Path) -> dict | None:
    best = max(rows, key=lambda r: r["mean"]) if rows else None  # max keeps the first of equals
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": rows, "best": best}, indent=2))
    out.with_suffix(".md").write_text(markdown(rows, best, meta))
    return best


def arguments():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 0], help="images per user; 0 = all (default: 10 0)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="K-shot pick and training seeds (default: 0)")
    ap.add_argument("--data_seed", type=int, default=0, help="simulator seed (default 0, the one the defaults were picked on)")
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--per_user", type=int, default=120, help="recordings per user (test 20, val 10, rest train)")
    ap.add_argument("--num_test", type=int, default=20)
    ap.add_argument("--num_val", type=int, default=10)
    ap.add_argument("--num_users", type=int, default=None, help="users (default: the profile's 31)")
    ap.add_argument("--steps", type=int, default=None, help="recogniser steps (default: the strong default's)")
    ap.add_argument("--combine", type=int, default=3, help="best single augmentations to combine (default 3)")
    ap.add_argument("--only", nargs="+", default=None, help="run just these settings of steps 1-2 (no combinations)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--smoke", action="store_true", help="a tiny run (5 users at 32 px, 8 steps): proves the script runs")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/search_augment.json; smoke: "
                                                 "search_augment_smoke.json)")
    args = ap.parse_args()
    if args.smoke:
        args.num_users, args.per_user, args.num_test, args.num_val = 5, 10, 2, 2
        args.image_size, args.ks, args.steps, args.combine = 32, [2, 0], args.steps or 8, 2
    args.out = Path(args.out or f"benchmarks/results/search_augment{'_smoke' if args.smoke else ''}.json")
    return args


def main():
    args = arguments()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    profile = get_profile("gait31")
    num_users = args.num_users or profile.num_users
    images, ids = simulate(num_users, args.per_user, args.image_size, args.data_seed, profile)
    parts = split(ids, args.per_user, args.num_test, args.num_val)
    pool = args.per_user - args.num_test - args.num_val
    ks = [k if 0 < k < pool else pool for k in args.ks]
    rec_cfg = RecogniserConfig(num_users=num_users, channels=1, image_size=args.image_size, **KSHOT_RECOGNISER)
    base = RecogniserTrainConfig() if args.steps is None else replace(RecogniserTrainConfig(), steps=args.steps)
    if args.smoke:
        base = replace(base, batch_size=8)
    print(f"simulated {len(images)} images in {time.perf_counter() - started:.0f}s; train pool {pool} per user, "
          f"{args.num_val} val per user (selection), test unused")
    meta = {"benchmark": "search_augment", "profile": profile.name, "num_users": num_users, "image_size": args.image_size,
            "data_seed": args.data_seed, "seeds": args.seeds, "ks": ks, "per_user": args.per_user,
            "num_val_per_user": args.num_val, "num_test_per_user": args.num_test, "selected_on": "val",
            "train_pool_per_user": pool, "recogniser": asdict(rec_cfg), "base_train": asdict(base), "steps": base.steps,
            "singles": {k: list(v) for k, v in SINGLES.items()}, "threads": args.threads, "smoke": args.smoke,
            "python": platform.python_version(), "torch": torch.__version__}
    data = (images, ids, parts, rec_cfg, pool)
    rows = []

    def run(settings):
        for name, overrides in settings:
            rows.append(run_setting(name, overrides, base, data, ks, args.seeds))
            write(rows, {**meta, "seconds": time.perf_counter() - started, "load_average": list(os.getloadavg())}, args.out)

    run(first_settings(args.only))
    if not args.only:
        run(combinations(rows, args.combine))
    best = write(rows, {**meta, "seconds": time.perf_counter() - started, "load_average": list(os.getloadavg())}, args.out)
    print(args.out.with_suffix(".md").read_text())
    print(f"best on validation: {best['setting']} ({best['mean']:.3f}); wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
