"""K-shot curve of the real-only recogniser on the gait31 simulator profile (or the held-out digits).

Simulates gait31 in memory and splits it per user (`dalle2_md.evaluation.protocol.simulate` and
`split`: the last `--num_test` recordings test, the `--num_val` before them validation), then
trains the real-only recogniser (`protocol.KSHOT_RECOGNISER` shape) on K = 5, 10, 20, 50 and all
training images per user, over several seeds, once per training arm of `protocol.RECOGNISER_ARMS`:
"strong" (the `RecogniserTrainConfig` defaults: SpecAugment masks, mixup, 2500 steps) and "legacy"
(time shift and noise only, 300 steps). Reports real test accuracy, mean ± std over seeds; writes
benchmarks/results/kshot.json and kshot.md. One torch thread.

    python benchmarks/kshot.py [--ks 5 10 20 50 0] [--seeds 0 1 2] [--data_seed 1] [--arms strong legacy]
    python benchmarks/kshot.py --data digits --out benchmarks/results/kshot_digits.json   # held out (32 px, 10 classes)

The recogniser's defaults were picked on data seed 0's validation split, so the table uses data
seed 1. The work can be split over processes and merged (a run's log stands in for its JSON when
the run was cut short: its finished seeds are used, and cells with fewer than 3 seeds say so):

    python benchmarks/kshot.py --ks 5 10 --out /tmp/a.json & python benchmarks/kshot.py --ks 20 50 0 --arms strong --out /tmp/b.json
    python benchmarks/kshot.py --merge /tmp/a.json /tmp/b.json [/tmp/c.log]
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dalle2_md.augmentation.harness import kshot_indices  # noqa: E402
from dalle2_md.data.simulator import get_profile  # noqa: E402
from dalle2_md.evaluation.protocol import KSHOT_RECOGNISER, RECOGNISER_ARMS, digits, simulate, split  # noqa: E402
from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, accuracy, train_recogniser  # noqa: E402

ARM_NAMES = {"strong": "strong (defaults)", "legacy": "earlier settings (shift + noise, 300 steps)",
             "physics": "strong + Doppler flip 0.5 (best on validation)"}


def run_arm(name, train_cfg, rec_cfg, images, ids, parts, ks, seeds, pool):
    rows = []
    for k in ks:
        accs, secs = [], []
        for seed in seeds:
            tr = parts["train"]
            if k < pool:
                tr = tr[kshot_indices(ids[tr], k, seed)]
            t0 = time.perf_counter()
            model = train_recogniser(images[tr], ids[tr], config=rec_cfg, train=replace(train_cfg, seed=seed))
            secs.append(time.perf_counter() - t0)
            acc, _ = accuracy(model, images[parts["test"]], ids[parts["test"]])
            accs.append(acc)
            print(f"  {name} K={k if k < pool else f'all ({pool})'} seed={seed}: test acc {acc:.3f} ({secs[-1]:.0f}s)", flush=True)
        rows.append({"arm": name, "k": k if k < pool else pool, "all": k >= pool, "acc": accs, "seeds": list(seeds),
                     "mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else float("nan"),
                     "train_seconds_mean": float(np.mean(secs))})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    ks = sorted({(r["k"], r["all"]) for r in rows})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    head = "| recogniser | " + " | ".join(f"K = {k}" + (" (all)" if a else "") for k, a in ks) + " |"
    lines = [head, "|---|" + "---:|" * len(ks)]
    for arm in arms:
        cells = []
        for k, a in ks:
            r = next((r for r in rows if r["arm"] == arm and r["k"] == k and r["all"] == a), None)
            if r is None:
                cells.append("not run")
                continue
            n = len(r["acc"])
            cells.append(f"{r['mean']:.3f} ± {r['std']:.3f}" + ("" if n >= 3 else f" (n={n})"))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Real-only test accuracy (mean ± std over seeds {meta['seeds']}), {meta['profile']}, "
                 f"{meta['num_users']} users, {meta['image_size']} px, {meta['num_test_per_user']} test images per user "
                 f"(chance {1 / meta['num_users']:.3f}); recogniser widths {meta['recogniser']['widths']}, time pool {meta['recogniser'].get('time_pool', 1)}; "
                 f"{meta['train_configs'].get(ARM_NAMES['strong'], {}).get('steps', '?')} steps for the strong arm; "
                 + (f"`python benchmarks/kshot.py` split over {len(meta['merged_from'])} processes and merged "
                    f"(longest part {meta['seconds']:.0f} s, all parts {meta['seconds_total_cpu_processes']:.0f} s"
                    if "merged_from" in meta else f"`python benchmarks/kshot.py` ({meta['seconds']:.0f} s")
                 + f", 1 torch thread each, data seed {meta['data_seed']}).")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 50, 0], help="images per user; 0 = all (default: 5 10 20 50 0)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="K-shot pick and training seeds")
    ap.add_argument("--data_seed", type=int, default=1, help="simulator seed (default 1; 0 was used to pick the defaults)")
    ap.add_argument("--data", choices=["gait31", "digits"], default="gait31",
                    help="gait31 (simulated) or digits (held out: scikit-learn's digits, never tuned on)")
    ap.add_argument("--image_size", type=int, default=None, help="default 64 (gait31) or 32 (digits)")
    ap.add_argument("--per_user", type=int, default=None,
                    help="recordings (digits: images) per user; default 120 (gait31), 170 (digits); test 20, val 10, rest train")
    ap.add_argument("--num_test", type=int, default=20)
    ap.add_argument("--num_val", type=int, default=10)
    ap.add_argument("--arms", nargs="+", choices=["strong", "legacy", "physics"], default=["strong", "legacy", "physics"])
    ap.add_argument("--merge", nargs="+", default=None, help="combine result JSONs of split runs into --out")
    ap.add_argument("--out", default="benchmarks/results/kshot.json")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, Path(args.out))
    torch.set_num_threads(1)
    started = time.perf_counter()

    if args.data == "digits":
        args.image_size, args.per_user = args.image_size or 32, args.per_user or 170
        images, ids = digits(args.per_user, args.image_size, args.data_seed)
        data_name, num_users = "digits", 10
    else:
        args.image_size, args.per_user = args.image_size or 64, args.per_user or 120
        profile = get_profile("gait31")
        images, ids = simulate(profile.num_users, args.per_user, args.image_size, args.data_seed, profile)
        data_name, num_users = profile.name, profile.num_users
    parts = split(ids, args.per_user, args.num_test, args.num_val)
    pool = args.per_user - args.num_test - args.num_val
    print(f"simulated {len(images)} images in {time.perf_counter() - started:.0f}s; train pool {pool} per user")
    ks = [k if 0 < k < pool else pool for k in args.ks]
    rec_cfg = RecogniserConfig(num_users=num_users, channels=1, image_size=args.image_size, **KSHOT_RECOGNISER)
    arms = [(ARM_NAMES[a], cfg) for a, cfg in RECOGNISER_ARMS.items() if a in args.arms]
    rows = []
    for name, cfg in arms:
        rows += run_arm(name, cfg, rec_cfg, images, ids, parts, ks, args.seeds, pool)

    meta = {"benchmark": "kshot", "profile": data_name, "num_users": num_users, "image_size": args.image_size,
            "data_seed": args.data_seed, "seeds": args.seeds, "per_user": args.per_user, "num_test_per_user": args.num_test,
            "num_val_per_user": args.num_val, "train_pool_per_user": pool, "recogniser": asdict(rec_cfg),
            "train_configs": {name: asdict(cfg) for name, cfg in arms}, "threads": 1, "python": platform.python_version(),
            "torch": torch.__version__, "load_average": list(os.getloadavg()), "seconds": time.perf_counter() - started}
    write(meta, rows, Path(args.out))


def write(meta: dict, rows: list[dict], out: Path) -> None:
    order = list(ARM_NAMES.values())
    rows = sorted(rows, key=lambda r: (order.index(r["arm"]), r["k"]))
    table = markdown(rows, meta)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


LOG_LINE = re.compile(r"^\s+(?P<arm>.+) K=(?:all \((?P<pool>\d+)\)|(?P<k>\d+)) seed=(?P<seed>\d+): test acc (?P<acc>[0-9.]+) \((?P<s>\d+)s\)")


def _rows_from_log(path: str) -> list[dict]:
    """Per-seed rows from the lines a (possibly unfinished) run printed."""
    rows = []
    for line in Path(path).read_text().splitlines():
        m = LOG_LINE.match(line)
        if m:
            rows.append({"arm": m["arm"], "k": int(m["pool"] or m["k"]), "all": m["pool"] is not None,
                         "acc": [float(m["acc"])], "seeds": [int(m["seed"])], "train_seconds_mean": float(m["s"])})
    return rows


def merge(paths: list[str], out: Path) -> None:
    """One table from split runs (result JSONs, or the logs of runs cut short, on the same data
    and recogniser): per (arm, K) the accuracies of every seed found, each seed once."""
    parts = [json.loads(Path(p).read_text()) for p in paths if p.endswith(".json")]
    if not parts:
        raise SystemExit("give at least one result JSON (for the data and recogniser settings)")
    same = ("data_seed", "per_user", "image_size", "recogniser")
    for part in parts[1:]:
        if any(part[k] != parts[0][k] for k in same):
            raise SystemExit(f"cannot merge: the runs differ in one of {same}")
    per_seed = []
    for part in parts:
        for r in part["rows"]:
            per_seed += [{**r, "acc": [a], "seeds": [s]} for a, s in zip(r["acc"], r.get("seeds", part["seeds"]))]
    for path in paths:
        if not path.endswith(".json"):
            per_seed += _rows_from_log(path)
    cells: dict = {}
    for r in per_seed:
        cell = cells.setdefault((r["arm"], r["k"], r["all"]), {"arm": r["arm"], "k": r["k"], "all": r["all"], "acc": [], "seeds": []})
        if r["seeds"][0] not in cell["seeds"]:
            cell["seeds"].append(r["seeds"][0])
            cell["acc"].append(r["acc"][0])
    rows = []
    for cell in cells.values():
        acc = cell["acc"]
        rows.append({**cell, "mean": float(np.mean(acc)), "std": float(np.std(acc, ddof=1)) if len(acc) > 1 else float("nan")})
    meta = {k: v for k, v in parts[0].items() if k != "rows"}
    meta["seeds"] = sorted({s for r in rows for s in r["seeds"]})
    meta["seconds"] = max(p["seconds"] for p in parts)
    meta["seconds_total_cpu_processes"] = sum(p["seconds"] for p in parts)
    meta["merged_from"] = paths
    meta["train_configs"] = {k: v for p in parts for k, v in p["train_configs"].items()}
    meta["train_configs"].setdefault(ARM_NAMES["strong"], asdict(RecogniserTrainConfig()))
    write(meta, rows, out)


if __name__ == "__main__":
    main()
