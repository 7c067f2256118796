"""Sampling for data: DDIM eta and guidance of both stages against identity accuracy, diversity
and domain FID, on the generator and recogniser benchmarks/bench_sampling.py trains and caches in
its --work folder (the same setup, trained there if missing).

Every setting samples the same users with the same seed; eta = 0 runs the default sampler,
eta > 0 runs DDIM (the only stochastic one). Augmentation gain per setting is not measured
here (it needs one recogniser training per setting; see `dalle2-md augment-eval`).

    python experiments/sweep_sampling.py                     # 32 settings, a few minutes at 16 px
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from dalle2_md.augmentation.harness import train_generator
from dalle2_md.data.dataset import MicroDopplerDataset
from dalle2_md.data.synthesize import synthesize_dataset
from dalle2_md.evaluation.metrics import diversity, domain_fid
from dalle2_md.evaluation.recogniser import (RecogniserConfig, RecogniserTrainConfig, accuracy, cached_recogniser,
                                             extract_features)
from dalle2_md.models.chain import MicroDopplerDALLE2
from dalle2_md.training.presets import GeneratorBudget


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def setup(work: Path, quick: bool, num_users: int, image_size: int):
    """Data, the recogniser and the generator (each cached in `work`), as benchmarks/bench_sampling.py
    makes them (so the two scripts share a --work folder)."""
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
