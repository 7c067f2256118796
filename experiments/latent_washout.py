"""Where a latent chain's washed-out backgrounds come from: the VQGAN, or the latent decoder's draws.

Takes a finished `dalle2-md demo` folder (its data, split and run), and reports:
- the background-defect rate of the VQGAN's reconstructions of the real train and test images
  (the autoencoder alone: if these wash out, no decoder can do better);
- the defect rate of the chain's samples (`--per_user` per user, drawn as the demo's report
  draws them: its sampling steps, seed 1 for a demo run with seed 0);
- per latent channel, the per-image spatial mean of the washed-out samples and of the others, in
  standard deviations of the real images' per-image means from their average (a latent's
  per-image mean is the lowest frequency the decoder draws: the background level);
- the defect rate of real latents moved by the washed-out samples' mean offset and decoded (does
  that offset alone wash a real image out?).

    python experiments/latent_washout.py --demo DIR --out benchmarks/results/latent_washout.json
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.data.dataset import load_splits  # noqa: E402
from dalle2_md.evaluation.metrics import background_defects, background_levels, background_range  # noqa: E402
from dalle2_md.generation.samples import sample_tensors  # noqa: E402
from dalle2_md.models.chain import MicroDopplerDALLE2  # noqa: E402
from dalle2_md.models.vqgan import reconstruct  # noqa: E402
from dalle2_md.training.presets import GeneratorBudget  # noqa: E402


def sampled_latents(model, per_user: int, seed: int):
    """(images in [-1, 1], user indices, the scaled latents the decoder drew before the VQGAN decoded them)."""
    vqgan, drawn = model.decoder.vqgan, []
    decode = vqgan.decode

    def keep(z):  # the decoder hands the VQGAN its latents divided by latent_scale
        drawn.append(z.detach().clone())
        return decode(z)

    vqgan.decode = keep
    try:
        images, ids = sample_tensors(model, list(range(model.num_users)), per_user, seed=seed,
                                     sampling=GeneratorBudget().sampling)  # the demo's sampling
    finally:
        vqgan.decode = decode
    return images, ids, torch.cat(drawn) * model.decoder.latent_scale


def diagnose(demo: Path, per_user: int, seed: int) -> dict:
    run = demo / "run"
    model = MicroDopplerDALLE2.from_parts(prior_path=run / "prior_final.pt", decoder_path=run / "decoder_final.pt",
                                          clip_path=run / "clip_final.pt")
    decoder = model.decoder
    if not decoder.config.use_vqgan:
        raise SystemExit(f"{run / 'decoder_final.pt'} is a pixel decoder: this diagnosis is for latent chains")
    sets = load_splits(demo / "data", image_size=model.image_size, split_file=run / "split.json", must_exist=True)
    (train, _), (test, _) = sets["train"].tensors(), sets["test"].tensors()
    bounds = background_range(train)
    result = {"bounds": bounds, "real_test": background_defects(test, bounds)["rate"]}
    for name, images in (("train", train), ("test", test)):
        result[f"vqgan_reconstruction_{name}"] = background_defects(reconstruct(decoder.vqgan, images), bounds)["rate"]
    images, ids, latents = sampled_latents(model, per_user, seed)
    washed = background_levels(images) > bounds[1]  # the too-light share of the rate below
    result.update(samples=len(images), sample_defects=background_defects(images, bounds)["rate"])
    real_means = decoder.encode_latents(train).mean((2, 3))  # (N, channels) per-image spatial means
    centre, spread = real_means.mean(0), real_means.std(0)
    z = (latents.mean((2, 3)) - centre) / spread
    result["latent_channels"] = latents.shape[1]
    result["z_washed_out"] = z[washed].mean(0).tolist() if washed.any() else None
    result["z_others_abs"] = z[~washed].abs().mean(0).tolist() if (~washed).any() else None
    if washed.any():
        offset = (latents.mean((2, 3))[washed].mean(0) - centre)[None, :, None, None]
        real_latents = decoder.encode_latents(train[:64])
        moved = decoder.vqgan.decode((real_latents + offset) / decoder.latent_scale).clamp(-1, 1)
        result["real_moved_by_offset_defects"] = background_defects(moved, bounds)["rate"]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="a finished `dalle2-md demo` output folder")
    ap.add_argument("--per_user", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1, help="sampling seed (the demo's report: its --seed + 1)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = diagnose(Path(args.demo), args.per_user, args.seed)
    for key in ("real_test", "vqgan_reconstruction_train", "vqgan_reconstruction_test", "sample_defects",
                "real_moved_by_offset_defects"):
        if key in result:
            print(f"{key:32s} {result[key]:.3f}")
    if result["z_washed_out"] is not None:
        print("washed-out samples' latent means (real std):", " ".join(f"{v:+.1f}" for v in result["z_washed_out"]))
    if result["z_others_abs"] is not None:
        print("other samples' |z|:", " ".join(f"{v:.1f}" for v in result["z_others_abs"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), **result}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
