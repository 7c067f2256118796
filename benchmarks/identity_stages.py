"""Identity stage by stage, and what makes the decoder obey its embedding.

Trains the embedding model and prior once per data set, then one decoder per variant (same data,
same seed, same step budget), and measures for each: embedding accuracy (nearest real centroid),
prior accuracy (its samples, nearest real centroid) and decoder accuracy on the TRUE embeddings
of real test images (recogniser on the decoded images), each per guidance scale; and A_gen of the
full chain. Prints a table, writes benchmarks/results/identity_stages_<data>.json.

    python benchmarks/identity_stages.py --data sim                 # the simulator (tuning set)
    python benchmarks/identity_stages.py --data digits              # held-out second data set
    python benchmarks/identity_stages.py --data sim --variants base,embed_noise
    python benchmarks/identity_stages.py --data digits --variants p2_noise --decoder_steps 2400 \
        --sample_starts 1,0.96 --guidance 1,3      # where the decoder's sampling starts, held out

Data sets: "sim" = `dalle2-md synth` (default profile, or --profile gait31 when available);
"digits" = scikit-learn's bundled 8x8 handwritten digits (10 classes, ~180 images each) upscaled
to 32 px, greyscale; nothing is downloaded. "digits" is kept out of tuning and only reported.
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.generation.samples import sample_tensors
from dalle2_md.augmentation.harness import train_generator
from dalle2_md.evaluation.metrics import background_levels  # noqa: E402
from dalle2_md.evaluation.protocol import KSHOT_RECOGNISER, all_digits  # noqa: E402
from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, accuracy, train_recogniser  # noqa: E402
from dalle2_md.evaluation.stages import stage_identity_accuracies  # noqa: E402
from dalle2_md.training.presets import GeneratorBudget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# decoder variants: overrides of GeneratorBudget (decoder sizes under "decoder")
_PLAIN = {"embed_noise_std": 0.0, "p2_loss_weight_gamma": 0.0}  # the decoder before these options
VARIANTS = {
    "base": {"decoder": dict(_PLAIN)},
    "embed_noise": {"decoder": {**_PLAIN, "embed_noise_std": 0.3}},
    "p2": {"decoder": {**_PLAIN, "p2_loss_weight_gamma": 1.0}},
    "p2_noise": {"decoder": {"p2_loss_weight_gamma": 1.0, "embed_noise_std": 0.3}},  # today's defaults
    "drop20": {"decoder": {**_PLAIN, "cond_drop_prob": 0.2}},
    "tokens4": {"decoder": {**_PLAIN, "num_image_tokens": 4}},
    "lr2x": {"decoder": dict(_PLAIN), "lr": 2e-3},
}


def split_per_user(images, labels, test_fraction=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for u in labels.unique():
        idx = (labels == u).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, int(round(test_fraction * len(idx))))
        test_idx += idx[:n_test].tolist()
        train_idx += idx[n_test:].tolist()
    tr, te = torch.tensor(train_idx), torch.tensor(test_idx)
    return (images[tr], labels[tr]), (images[te], labels[te])


def load_sim(size: int, num_users: int, per_user: int, profile: str, seed: int = 0):
    from dalle2_md.data.dataset import MicroDopplerDataset
    from dalle2_md.data.synthesize import synthesize_dataset

    root = Path(tempfile.mkdtemp(prefix="idstages_"))
    kwargs = dict(num_users=num_users, images_per_user=per_user, image_size=size, seed=seed, progress=False)
    if profile != "default":
        kwargs["profile"] = profile
    synthesize_dataset(root, **kwargs)
    ds = MicroDopplerDataset(root, image_size=size, colormap="jet", split=None)
    return ds.tensors()


def measure(model, recogniser, train, test, budget, scales, args, num_users, train_s) -> dict:
    started = time.time()
    stages = stage_identity_accuracies(model, recogniser, train, test, guidance_scales=scales,
                                       num_samples_per_user=args.samples_per_user, max_decoded=args.max_decoded)
    a_gen, level = {}, {}
    for s in scales:
        sampling = replace(budget.sampling, cond_scale=s)
        x, ids = sample_tensors(model, list(range(num_users)), args.samples_per_user, seed=1234, sampling=sampling)
        a_gen[s], level[s] = accuracy(recogniser, x, ids)[0], float(background_levels(x).mean())
    return {"budget": budget.to_dict(), "sample_start": model.decoder.config.sample_start, "train_seconds": train_s,
            "stages": stages, "A_gen": a_gen, "background": level,
            "background_real": float(background_levels(test[0]).mean()),
            "seconds": train_s + time.time() - started}


def report(name: str, row: dict) -> None:
    stages = row["stages"]
    dec = " ".join(f"g{s:g}:{v:.2f}" for s, v in stages["decoder"].items())
    pri = " ".join(f"g{s:g}:{v:.2f} (spread {stages['prior_spread'][s]:.2f})" for s, v in stages["prior"].items())
    ag = " ".join(f"g{s:g}:{v:.2f}" for s, v in row["A_gen"].items())
    bg = " ".join(f"g{s:g}:{v:.3f}" for s, v in row["background"].items())
    print(f"{name:>14} | emb {stages['embedding']:.2f} | prior {pri} | decoder(true emb) {dec} | A_gen {ag} "
          f"| background {bg} (real {row['background_real']:.3f}) | {row['train_seconds']:.0f}+"
          f"{row['seconds'] - row['train_seconds']:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["sim", "digits"], default="sim")
    ap.add_argument("--profile", default="default", help="simulator profile (sim only)")
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--num_users", type=int, default=8)
    ap.add_argument("--images_per_user", type=int, default=60)
    ap.add_argument("--variants", default="base")
    ap.add_argument("--clip_train_steps", "--clip_steps", type=int, default=300)
    ap.add_argument("--decoder_train_steps", "--decoder_steps", type=int, default=800)
    ap.add_argument("--prior_train_steps", "--prior_steps", type=int, default=600)
    ap.add_argument("--recogniser_steps", type=int, default=600)
    ap.add_argument("--recogniser", choices=["default", "kshot"], default="default",
                    help="judge: the default recogniser shape, or the K-shot one (protocol.KSHOT_RECOGNISER as it is; "
                         "protocol.recogniser_config pools time by image size instead, 2 at 32 px)")
    ap.add_argument("--guidance", default="1,2,3,4")
    ap.add_argument("--samples_per_user", type=int, default=16)
    ap.add_argument("--max_decoded", type=int, default=96)
    ap.add_argument("--sample_starts", default=None,
                    help="comma-separated DecoderConfig.sample_start values, each measured on the same decoders "
                         "(default: the decoder's own)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.data == "digits":
        images, labels = all_digits(args.image_size)
        colormap = "none"
    else:
        images, labels = load_sim(args.image_size, args.num_users, args.images_per_user, args.profile)
        colormap = "jet"
    train, test = split_per_user(images, labels)
    num_users = int(labels.max()) + 1
    print(f"data {args.data}: {num_users} users, train {len(train[0])}, test {len(test[0])}, {tuple(images.shape[1:])}")
    t0 = time.time()
    config = None
    if args.recogniser == "kshot":
        config = RecogniserConfig(num_users=num_users, channels=images.shape[1], image_size=args.image_size,
                                  **KSHOT_RECOGNISER)
    recogniser = train_recogniser(*train, num_users=num_users, config=config,
                                  train=RecogniserTrainConfig(steps=args.recogniser_steps))
    a_real, _ = accuracy(recogniser, *test)
    print(f"recogniser: A_real {a_real:.3f} ({time.time() - t0:.0f} s)")
    scales = [float(s) for s in args.guidance.split(",")]

    results = {"args": vars(args), "A_real": a_real, "variants": {}}
    for name in args.variants.split(","):
        over = dict(VARIANTS[name])
        dec_over = over.pop("decoder", {})
        base = GeneratorBudget(clip_train_steps=args.clip_train_steps, decoder_train_steps=args.decoder_train_steps,
                               prior_train_steps=args.prior_train_steps)
        budget = replace(base, decoder={**base.decoder, **dec_over}, **over)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as run_dir:
            gen = train_generator(*train, num_users=num_users, budget=budget, seed=0, run_dir=run_dir, colormap=colormap)
        train_s = time.time() - t0
        starts = [float(v) for v in args.sample_starts.split(",")] if args.sample_starts else [None]
        for start in starts:
            key = name if start is None else f"{name}@start{start:g}"
            with gen.model.decoder.sampling_config_for(sample_start=start):
                results["variants"][key] = measure(gen.model, recogniser, train, test, budget, scales, args,
                                                   num_users, train_s)
            report(key, results["variants"][key])
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"identity_stages_{args.data}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
