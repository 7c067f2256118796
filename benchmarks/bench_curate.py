"""Curated synthetic sets on a small trained generator: acceptance rate of each filter and the
identity accuracy of what each keeps, judged by a second recogniser the filter never used.

Simulates a small data set, trains the two-stage generator (CPU sizes) on its train split only,
fits the filters on that same split, then curates N samples per user with each filter from the
same draws (sample i of a user is the same image whichever filter asks for it, so draws are
cached and shared). The judge is a recogniser with another seed, trained on the train split and
reported on the real test split too (A_real).

    python benchmarks/bench_curate.py [--users 5] [--images 30] [--size 32] [--n 20] [--cap 100]
        [--decoder_steps 600] [--out benchmarks/results/bench_curate.json]
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from dalle2_md.defaults import SamplingConfig
from dalle2_md.generation import curate
from dalle2_md.training.presets import GeneratorBudget
from dalle2_md.augmentation.harness import train_generator
from dalle2_md.data.dataset import load_splits
from dalle2_md.data.display import save_grid
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig, train_recogniser
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.models.chain import MicroDopplerDALLE2
from dalle2_md.generation.variations import sdedit, variations_of
from dalle2_md.data.synthesize import synthesize_dataset


def cached_draws(draw):
    """Memoise a GenerateFn per (user, index): only indices never drawn are generated."""
    store = {}

    def fn(user, indices, seed):
        missing = [i for i in indices if (user, i, seed) not in store]
        if missing:
            for i, x in zip(missing, draw(user, missing, seed)):
                store[(user, i, seed)] = x
        return torch.stack([store[(user, i, seed)] for i in indices])

    return fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--images", type=int, default=30, help="real images per user (80 %% go to the train split)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n", type=int, default=20, help="kept samples wanted per user")
    ap.add_argument("--cap", type=int, default=100, help="most draws per user")
    ap.add_argument("--clip_train_steps", "--clip_steps", type=int, default=200)
    ap.add_argument("--decoder_train_steps", "--decoder_steps", type=int, default=600)
    ap.add_argument("--prior_train_steps", "--prior_steps", type=int, default=400)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0], help="decoder guidance scales")
    ap.add_argument("--sampler", default=None, help="ddim or dpmpp_2m [default: DEFAULT_SAMPLER]")
    ap.add_argument("--min_confidence", type=float, default=0.5)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--out", default="benchmarks/results/bench_curate.json")
    ap.add_argument("--generator", default=None, help="load this chained bundle if it exists, else train and save it there")
    ap.add_argument("--grid", default="benchmarks/results/curate_variations.png",
                    help="variations and SDEdit (0.3, 0.6) of 3 real test images, one row each")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    synthesize_dataset(work / "data", num_users=args.users, images_per_user=args.images, image_size=args.size,
                       layout="kaggle", progress=False)
    sets = load_splits(work / "data", image_size=args.size, split_file=work / "split.json")
    lm = sets["train"].label_map
    train_x, train_y = sets["train"].tensors()
    test_x, test_y = sets["test"].tensors()
    budget = GeneratorBudget(clip_train_steps=args.clip_train_steps, decoder_train_steps=args.decoder_train_steps,
                             prior_train_steps=args.prior_train_steps)
    t0 = time.perf_counter()
    loaded = bool(args.generator and Path(args.generator).is_file())
    if loaded:
        model = MicroDopplerDALLE2.load(args.generator)
    else:
        model = train_generator(train_x, train_y, num_users=len(lm), budget=budget, run_dir=work / "gen",
                                label_map=lm.to_dict()).model
        if args.generator:
            model.save(args.generator)
    train_seconds = time.perf_counter() - t0
    judge = train_recogniser(train_x, train_y, num_users=len(lm), train=RecogniserTrainConfig(steps=300, seed=1))
    a_real = accuracy(judge, test_x, test_y)[0]

    filters = {}
    for kind in ("none", "recogniser", "kinematic", "both"):
        filters[kind] = curate.build_filter(kind, train_x, train_y, num_users=len(lm), min_confidence=args.min_confidence,
                                            kinematic_margin=args.margin, recogniser_train=RecogniserTrainConfig(steps=300))[0]
    rows = []
    for guidance in args.guidance:
        draw = cached_draws(curate.chain_sampler(model, SamplingConfig(cond_scale=guidance, sampler=args.sampler)))
        for kind, filter_fn in filters.items():
            t0 = time.perf_counter()
            out = work / f"set_g{guidance}_{kind}"
            result = curate.curate_dataset(draw, out, label_map=lm, user_indices=list(range(len(lm))), num_samples_per_user=args.n,
                                           filter_fn=filter_fn if kind != "none" else None, filter_info={"kind": kind},
                                           batch_size=32, max_draws_per_user=args.cap, progress=False, log=lambda m: None)
            kept = [json.loads(line) for line in (out / curate.JOURNAL).read_text().splitlines()[1:]]
            keep = [r for block in kept for r in block["samples"] if r["status"] == "kept"]
            images = torch.stack([draw(r["user_index"], [r["sample_index"]], 0)[0] for r in keep]) if keep else None
            a_gen = accuracy(judge, images, torch.tensor([r["user_index"] for r in keep]))[0] if keep else float("nan")
            kept_n = sum(u["kept"] for u in result.users.values())
            drawn = sum(u["drawn"] for u in result.users.values())
            rows.append({"guidance": guidance, "filter": kind, "kept": kept_n, "drawn": drawn, "acceptance": kept_n / drawn,
                         "users_short": len(result.short), "A_gen_judge": a_gen,
                         "per_user_acceptance": {k: u["acceptance"] for k, u in result.users.items()},
                         "seconds": time.perf_counter() - t0})

    # one row per real test image: the image, 4 variations, SDEdit at strength 0.3 and 0.6
    picks = test_x[[int((test_y == u).nonzero()[0]) for u in range(min(3, len(lm)))]]
    rows_img = [torch.cat([x[None], variations_of(model, x[None], 4, seed=0, sampler=args.sampler), sdedit(model, x[None], 0.3, seed=0),
                           sdedit(model, x[None], 0.6, seed=0)]) for x in picks]
    save_grid((torch.cat(rows_img) + 1) / 2, args.grid, nrow=7, colormap="jet", min_tile=64)
    a_var = accuracy(judge, variations_of(model, test_x, 4, seed=0, sampler=args.sampler), test_y.repeat_interleave(4))[0]
    a_sd = accuracy(judge, sdedit(model, test_x, 0.6, seed=0), test_y)[0]
    print(f"variations of real test images: A = {a_var:.3f}; SDEdit 0.6: A = {a_sd:.3f}; grid {args.grid}")

    how = f"loaded from {args.generator}" if loaded else f"trained in {train_seconds:.0f}s"
    print(f"A_real (judge, real test split) = {a_real:.3f}; generator {how}")
    print(f"{'guidance':>8} {'filter':>10} {'kept':>5} {'drawn':>6} {'accept':>7} {'short':>5} {'A_gen':>6}")
    for r in rows:
        print(f"{r['guidance']:>8.1f} {r['filter']:>10} {r['kept']:>5} {r['drawn']:>6} {r['acceptance']:>7.2f} "
              f"{r['users_short']:>5} {r['A_gen_judge']:>6.3f}")
    result = {"args": vars(args), "A_real_judge": a_real, "A_variations_judge": a_var, "A_sdedit_0.6_judge": a_sd, "generator_train_seconds": None if loaded else train_seconds,
              "generator_loaded_from": args.generator if loaded else None,
              "num_train_images": len(train_x), "num_test_images": len(test_x), "rows": rows,
              "seconds": time.perf_counter() - start, "machine": platform.platform(), "threads": 1}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
