"""Steps vs quality for each sampler: identity accuracy (A_gen / A_real), domain FID ratio and
kinematic error of samples at 5..1000 network evaluations, DDIM vs DPM-Solver++(2M).

Trains one small two-stage generator on simulated data once (kept in --work, reused by later
runs), and a recogniser on the real train split; then samples the same users with the same
seed at every step count (both stages get the same count), so rows differ only in the solver.
Two rules pick a step count per sampler, both against the reference:
  within:   |A_gen - reference A_gen| <= 0.02 (converged to the reference);
  no_worse: A_gen >= reference A_gen - 0.02 and domain FID ratio <= 1.1 x the reference's
            (equal quality: few-step samples that are *more* recognisable than the 1000-step
            ones are not rejected, blurry ones with a high FID are).
The recommended default is the cheaper sampler under the no_worse rule.

The reference is the 1000-step DDIM sample (both samplers solve the same ODE, and DDIM with
every step of the training schedule is its finest discretisation here); `--reference_all` also
runs DPM-Solver++ at 1000 steps (another ~5 min). The smallest count whose A_gen is within 0.02
of the reference A_gen is reported per sampler, and the cheaper of the two is the recommended
default.

    python benchmarks/bench_sampling.py --reference_all    # ~15 min on 1 busy CPU thread
    python benchmarks/bench_sampling.py --quick            # smoke run (minutes, tiny models)
"""

import argparse
import json
import time
from pathlib import Path

import torch

from dalle2_md.training.presets import GeneratorBudget
from dalle2_md.augmentation.harness import train_generator
from dalle2_md.data.dataset import MicroDopplerDataset
from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, cached_recogniser
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.evaluation.metrics import domain_fid, kinematic_fidelity, to_scalar_images
from dalle2_md.models.chain import MicroDopplerDALLE2  # noqa: E402
from dalle2_md.defaults import SAMPLERS
from dalle2_md.data.synthesize import synthesize_dataset

NFES = (5, 10, 15, 25, 50, 100, 1000)
TOLERANCE = 0.02
FID_SLACK = 1.1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def setup(work: Path, quick: bool, num_users: int, image_size: int):
    """Data, the recogniser and the generator (each cached in `work`)."""
    data_dir = work / "data"
    if not data_dir.exists():
        synthesize_dataset(data_dir, num_users=num_users, images_per_user=30 if quick else 40, image_size=image_size,
                           seed=0, progress=False)
    sets = {s: MicroDopplerDataset(data_dir, image_size=image_size, split=s, split_file=work / "split.json",
                                   split_fractions=(0.7, 0.1, 0.2)) for s in ("train", "val", "test")}
    train, val = sets["train"].tensors(), sets["val"].tensors()
    label_map = sets["train"].label_map.to_dict()
    rec = cached_recogniser(work / "recogniser.pt", *train, val=val, label_map=label_map,
                            config=RecogniserConfig(num_users=num_users, channels=1, image_size=image_size,
                                                    widths=(8, 16, 32), feature_dim=16),
                            train=RecogniserTrainConfig(steps=60 if quick else 300, batch_size=32))
    bundle = work / "generator.pt"
    if bundle.exists():
        model = MicroDopplerDALLE2.load(bundle)
    else:
        budget = GeneratorBudget(clip_train_steps=150, decoder_train_steps=800, prior_train_steps=400) if not quick \
            else GeneratorBudget(clip_train_steps=20, decoder_train_steps=40, prior_train_steps=40)
        start = time.perf_counter()
        gen = train_generator(*train, num_users=num_users, budget=budget, seed=0, run_dir=work / "runs",
                              label_map=label_map, colormap="jet")
        log(f"generator trained in {time.perf_counter() - start:.0f}s ({gen.seconds})")
        model = gen.model
        model.save(bundle)
    return sets, rec, model.eval()


def measure(model, rec, sets, sampler: str, nfe: int, per_user: int, seed: int) -> dict:
    train_x, _ = sets["train"].tensors()
    test_x, test_ids = sets["test"].tensors()
    users = list(range(model.num_users))
    start = time.perf_counter()
    fake = model.sample(users, num_samples_per_user=per_user, prior_steps=nfe, decoder_steps=nfe, seed=seed,
                        sampler=sampler, colorize=False) * 2 - 1
    seconds = time.perf_counter() - start
    fake_ids = torch.arange(len(users)).repeat_interleave(per_user)
    a_gen, _ = accuracy(rec, fake, fake_ids)
    fid, floor = domain_fid(rec, test_x, fake), domain_fid(rec, test_x, train_x)
    kin = kinematic_fidelity(to_scalar_images(test_x, None), test_ids, to_scalar_images(fake, None), fake_ids)
    kin_err = float(sum(kin["mean_rel_error"].values()) / len(kin["mean_rel_error"]))
    return {"sampler": sampler, "nfe": nfe, "a_gen": a_gen, "fid": fid, "fid_floor": floor, "fid_ratio": fid / floor,
            "kinematic_rel_error": kin_err, "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models and fewer samples (a smoke run)")
    ap.add_argument("--work", default="/tmp/bench_sampling", help="cache of data, recogniser and generator")
    ap.add_argument("--num_users", type=int, default=6)
    ap.add_argument("--image_size", type=int, default=16)
    ap.add_argument("--per_user", type=int, default=None, help="samples per user per row (default 24; quick 4)")
    ap.add_argument("--reference_all", action="store_true", help="run the 1000-step row for every sampler")
    ap.add_argument("--nfe", default=",".join(map(str, NFES)), help="comma-separated step counts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/bench_sampling[_quick].json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    per_user = args.per_user or (4 if args.quick else 24)
    nfes = [int(n) for n in args.nfe.split(",")]

    sets, rec, model = setup(work, args.quick, args.num_users, args.image_size)
    a_real, _ = accuracy(rec, *sets["test"].tensors())
    log(f"A_real {a_real:.3f} on {len(sets['test'])} real test images")
    rows, top = [], max(nfes)
    for sampler in SAMPLERS:
        for nfe in nfes:
            if nfe == top and sampler != "ddim" and not args.reference_all:
                continue
            row = measure(model, rec, sets, sampler, nfe, per_user, seed=1234)
            row["a_gen_over_a_real"] = row["a_gen"] / a_real
            rows.append(row)
            log(f"{sampler:9s} NFE {nfe:5d}: A_gen {row['a_gen']:.3f}  FID ratio {row['fid_ratio']:.2f}  "
                f"kinematic error {row['kinematic_rel_error']:.3f}  ({row['seconds']:.1f}s)")

    best = {}
    for sampler in SAMPLERS:
        mine = {r["nfe"]: r for r in rows if r["sampler"] == sampler}
        ref = mine.get(top) or next(r for r in rows if r["sampler"] == "ddim" and r["nfe"] == top)
        within = [n for n in sorted(mine) if abs(mine[n]["a_gen"] - ref["a_gen"]) <= TOLERANCE]
        no_worse = [n for n in sorted(mine) if mine[n]["a_gen"] >= ref["a_gen"] - TOLERANCE
                    and mine[n]["fid_ratio"] <= FID_SLACK * ref["fid_ratio"]]
        best[sampler] = {"within": within[0] if within else None, "no_worse": no_worse[0] if no_worse else None,
                         "reference": f"{ref['sampler']} {top}", "reference_a_gen": ref["a_gen"],
                         "reference_fid_ratio": ref["fid_ratio"]}
    winner = min((s for s in best if best[s]["no_worse"]), key=lambda s: (best[s]["no_worse"], s != "dpmpp_2m"),
                 default=None)

    print()
    print("| sampler | NFE | A_gen | A_gen / A_real | domain FID / floor | kinematic rel. error | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['nfe']} | {r['a_gen']:.3f} | {r['a_gen_over_a_real']:.3f} | {r['fid_ratio']:.2f} | "
              f"{r['kinematic_rel_error']:.3f} | {r['seconds']:.1f} |")
    print()
    for s, b in best.items():
        print(f"{s}: reference {b['reference']} steps (A_gen {b['reference_a_gen']:.3f}, FID ratio "
              f"{b['reference_fid_ratio']:.2f}); smallest NFE within {TOLERANCE}: {b['within']}; "
              f"no worse (A_gen >= ref - {TOLERANCE}, FID ratio <= {FID_SLACK} x ref): {b['no_worse']}")
    print(f"recommended default (no_worse rule): {winner} at {best[winner]['no_worse'] if winner else None} steps "
          f"(A_real {a_real:.3f}; {args.num_users} users x {per_user} samples, {args.image_size} px)")

    out = Path(args.out or f"benchmarks/results/bench_sampling{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": args.threads, "num_users": args.num_users,
                               "image_size": args.image_size, "per_user": per_user, "a_real": a_real,
                               "tolerance": TOLERANCE, "rows": rows, "smallest_within_tolerance": best,
                               "recommended": {"sampler": winner, "nfe": best[winner]["no_worse"] if winner else None,
                                               "rule": "no_worse"}, "fid_slack": FID_SLACK,
                               "torch": torch.__version__}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
