"""Sampling for data: DDIM eta and guidance of both stages against identity accuracy, diversity
and domain FID (issue 10, item 3), on the generator and recogniser `bench_sampling.py` trained
and cached in its --work folder (trained there if missing).

Every setting samples the same users with the same seed; eta = 0 runs the default sampler,
eta > 0 runs DDIM (the only stochastic one). Augmentation gain per setting is not measured
here (it needs one recogniser training per setting; see `dalle2-md augment-eval`).

    python benchmarks/sweep_sampling.py                     # 32 settings, a few minutes at 16 px
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sampling import log, setup  # noqa: E402
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.evaluation.metrics import diversity, domain_fid
from dalle2_md.evaluation.recogniser import extract_features


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_sampling")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--num_users", type=int, default=6)
    ap.add_argument("--image_size", type=int, default=16)
    ap.add_argument("--per_user", type=int, default=24)
    ap.add_argument("--steps", type=int, default=15, help="network evaluations per stage")
    ap.add_argument("--etas", default="0,1")
    ap.add_argument("--scales", default="1,2,3,4", help="guidance scales tried for each stage")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/sweep_sampling.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    sets, rec, model = setup(work, args.quick, args.num_users, args.image_size)
    train_x, _ = sets["train"].tensors()
    test_x, test_ids = sets["test"].tensors()
    a_real, _ = accuracy(rec, test_x, test_ids)
    floor = domain_fid(rec, test_x, train_x)
    real_div = diversity(extract_features(rec, test_x), test_ids)["mean"]
    users = list(range(model.num_users))
    ids = torch.arange(len(users)).repeat_interleave(args.per_user)
    etas = [float(e) for e in args.etas.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    rows = []
    for eta, cond, prior_cond in itertools.product(etas, scales, scales):
        start = time.perf_counter()
        fake = model.sample(users, num_samples_per_user=args.per_user, prior_steps=args.steps, decoder_steps=args.steps,
                            seed=1234, eta=eta, cond_scale=cond, prior_cond_scale=prior_cond, colorize=False) * 2 - 1
        a_gen, _ = accuracy(rec, fake, ids)
        row = {"eta": eta, "cond_scale": cond, "prior_cond_scale": prior_cond, "a_gen": a_gen,
               "a_gen_over_a_real": a_gen / a_real, "fid_ratio": domain_fid(rec, test_x, fake) / floor,
               "diversity_over_real": diversity(extract_features(rec, fake), ids)["mean"] / real_div,
               "seconds": time.perf_counter() - start}
        rows.append(row)
        log(f"eta {eta:g} decoder {cond:g} prior {prior_cond:g}: A_gen {a_gen:.3f}  FID ratio {row['fid_ratio']:.2f}  "
            f"diversity {row['diversity_over_real']:.2f} x real")
    print()
    print("| eta | decoder guidance | prior guidance | A_gen / A_real | domain FID / floor | diversity / real |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['eta']:g} | {r['cond_scale']:g} | {r['prior_cond_scale']:g} | {r['a_gen_over_a_real']:.3f} | "
              f"{r['fid_ratio']:.2f} | {r['diversity_over_real']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"a_real": a_real, "fid_floor": floor, "real_diversity": real_div, "steps": args.steps,
                               "per_user": args.per_user, "num_users": args.num_users, "image_size": args.image_size,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
