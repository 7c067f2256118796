"""How varied the K-shot generators' draws are, stage by stage: the prior's embeddings against the
real ones, and the images of each source against the real images in recogniser features.

One gait31 K-shot pick (32 px, data seed 1, the split of benchmarks/augment_ablation.py). Embedding space:
for the two-stage generator with priors trained for each `--prior_steps` (the embedding model and
decoder come from the cache; only the prior is trained), the within-user spread of the prior's
samples over that of the K-shot and of all real train embeddings, their nearest-centroid accuracy,
their mean distance to the nearest K-shot embedding (real test images: their own distance, as the
reference for "new") and their per-user recall of the real train embeddings. Image space: for the
single-stage generator, the prior chain, SDEdit and its conditions, and the real K-shot and test
images, the within-user spread of recogniser features, per-user precision and recall against all
real train images (`evaluation.metrics.precision_recall`), A_gen and domain FID, judged by a recogniser
trained on all real train images.

    python experiments/sample_variety.py --seed 0 --generator_cache DIR [--prior_steps 1000,4000,12000]

Prints two tables; writes benchmarks/results/sample_variety_k<K>_s<seed>.json. One torch thread.
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dalle2_md.defaults import SamplingConfig  # noqa: E402
from dalle2_md.training.presets import GeneratorBudget
from dalle2_md.augmentation.harness import cached_generator, kshot_indices
from dalle2_md.generation.samples import sample_tensors
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.evaluation.metrics import domain_fid, precision_recall
from dalle2_md.augmentation.recipe import AugmentRecipe, draw_candidates  # noqa: E402
from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, train_recogniser  # noqa: E402
from dalle2_md.evaluation.stages import nearest_centroid_accuracy, user_centroids, within_user_spread  # noqa: E402
from dalle2_md.data.simulator import get_profile  # noqa: E402
from dalle2_md.evaluation.protocol import KSHOT_RECOGNISER, simulated_sets  # noqa: E402
from dalle2_md.generation.variations import embed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SDEDIT = {"sdedit 0.5": "own", "sdedit 0.5, partner": "partner", "sdedit 0.5, prior": "prior"}


def prior_rows(gen, shot, train, test, prior_steps, args, budget, num_users) -> list[dict]:
    e_shot, e_train, e_test = (embed(gen.model, x[0]) for x in (shot, train, test))
    centroids = user_centroids(e_train, train[1], num_users)
    shot_spread, train_spread = within_user_spread(e_shot, shot[1]), within_user_spread(e_train, train[1])
    nearest_shot = lambda e: float(torch.cdist(F.normalize(e, dim=-1), e_shot).min(1).values.mean())
    rows = [{"draw": "real K-shot embeddings", "spread_over_shot": 1.0, "spread_over_train": shot_spread / train_spread,
             "recall_of_train": precision_recall(e_train, train[1], e_shot, shot[1])["recall"]},
            {"draw": "real test embeddings", "nearest_shot": nearest_shot(e_test),
             "spread_over_shot": within_user_spread(e_test, test[1]) / shot_spread}]
    for steps in prior_steps:
        model = cached_generator(*shot, cache_dir=args.generator_cache, kind="two_stage",
                                 budget=replace(budget, prior_train_steps=steps), seed=args.seed, num_users=num_users,
                                 run_dir=Path(f"/tmp/sample_variety_{os.getpid()}/prior{steps}"), colormap="jet").model
        e = model.sample_image_embeds(list(range(num_users)), num_samples_per_user=args.samples_per_user,
                                      prior_steps=args.sample_steps, seed=args.seed)
        users = torch.arange(num_users).repeat_interleave(args.samples_per_user)
        spread = within_user_spread(e, users)
        rows.append({"draw": f"prior, {steps} steps", "spread_over_shot": spread / shot_spread,
                     "spread_over_train": spread / train_spread,
                     "centroid_accuracy": nearest_centroid_accuracy(e, users, centroids), "nearest_shot": nearest_shot(e),
                     "recall_of_train": precision_recall(e_train, train[1], e, users)["recall"]})
        print(rows[-1], flush=True)
    return rows


def image_sets(two, one, shot, test, args, budget, num_users) -> dict:
    users = list(range(num_users))
    n = args.samples_per_user
    guided, unguided = budget.sampling, replace(budget.sampling, cond_scale=1.0)
    sets = {"single-stage, guidance 3": sample_tensors(one, users, n, seed=args.seed, sampling=guided),
            "single-stage, guidance 1": sample_tensors(one, users, n, seed=args.seed, sampling=unguided),
            "prior chain, guidance 3": sample_tensors(two, users, n, seed=args.seed, sampling=guided)}
    for name, condition in SDEDIT.items():
        recipe = AugmentRecipe(source="sdedit", strength=0.5, condition=condition)
        sets[name] = draw_candidates(two, recipe, budget, shot, n, seed=args.seed)
    sets["real K-shot"], sets["real test"] = shot, test
    return sets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior_steps", default="1000,4000,12000")
    ap.add_argument("--samples_per_user", type=int, default=30)
    ap.add_argument("--sample_steps", type=int, default=15)
    ap.add_argument("--decoder_train_steps", "--decoder_steps", type=int, default=GeneratorBudget.decoder_train_steps)
    ap.add_argument("--generator_cache", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    profile = get_profile("gait31")
    num_users = profile.num_users
    sets = simulated_sets(num_users, 100, 32, 1, 20)
    train, test = sets["train"], sets["test"]
    pick = kshot_indices(train[1], args.k, args.seed)
    shot = (train[0][pick].clone(), train[1][pick].clone())
    budget = GeneratorBudget(decoder_train_steps=args.decoder_train_steps, prior_train_steps=1000,
                             sampling=SamplingConfig(decoder_steps=args.sample_steps, prior_steps=args.sample_steps))
    common = dict(cache_dir=args.generator_cache, budget=budget, seed=args.seed, num_users=num_users, colormap="jet",
                  run_dir=Path(f"/tmp/sample_variety_{os.getpid()}"))
    two = cached_generator(*shot, kind="two_stage", **common)
    one = cached_generator(*shot, kind="baseline", **common).model
    result = {"args": vars(args), "prior": prior_rows(two, shot, train, test, [int(s) for s in args.prior_steps.split(",")],
                                                      args, budget, num_users)}
    shape = RecogniserConfig(num_users=num_users, channels=1, image_size=32, **{**KSHOT_RECOGNISER, "time_pool": 2})
    judge = train_recogniser(*train, num_users=num_users, config=shape, train=replace(RecogniserTrainConfig(), seed=args.seed))
    judge.eval()
    with torch.no_grad():
        features = lambda x: torch.cat([judge.features(x[i:i + 256]) for i in range(0, len(x), 256)])
        f_train = features(train[0])
        train_spread = within_user_spread(f_train, train[1])
        result["images"] = []
        for name, (x, u) in image_sets(two.model, one, shot, test, args, budget, num_users).items():
            f = features(x)
            pr = precision_recall(f_train, train[1], f, u)
            row = {"draw": name, "images": len(x), "spread": within_user_spread(f, u) / train_spread,
                   "precision": pr["precision"], "recall": pr["recall"], "a_gen": accuracy(judge, x, u)[0],
                   "fid": None if name == "real test" else domain_fid(judge, test[0], x)}
            result["images"].append(row)
            print(row, flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"sample_variety_k{args.k}_s{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
