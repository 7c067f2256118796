"""The latent path's autoencoder judged on its own: the CPU-sized VQGAN (`dalle2_md.training.presets.cpu_vqgan_sizes`)
trained on simulated spectrograms at 128 px for each downsampling factor, then

- PSNR and SSIM (torchmetrics) of its reconstructions of the held-out test images;
- identity accuracy of a recogniser trained on the real train split, on the test originals
  (A_real) and on their reconstructions (A_recon): a VQGAN that erases who is walking is caught
  here even when its PSNR looks fine;
- training time, and a grid per factor (top row originals, bottom row reconstructions).

    python benchmarks/bench_vqgan.py [--factors 4 8] [--steps 400] [--out benchmarks/results/bench_vqgan.json]
    python benchmarks/bench_vqgan.py --factors 4 --vqgan_config '{"codebook_heads": 4, "codebook_dim": 8}'

Times are wall-clock on whatever else the machine is doing; one torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dalle2_md.data.dataset import MicroDopplerDataset
from dalle2_md.data.display import save_grid
from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, cached_recogniser
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.data.synthesize import synthesize_dataset
from dalle2_md.models.vqgan import VQGanConfig, reconstruct, reconstruction_quality
from dalle2_md.training.presets import cpu_vqgan_sizes
from dalle2_md.training.fit import train_vqgan


def load_splits(work: Path, *, num_users: int, images_per_user: int, image_size: int, seed: int) -> dict:
    data = work / "data"
    if not data.exists():
        synthesize_dataset(data, num_users=num_users, images_per_user=images_per_user, image_size=image_size,
                           seed=seed, progress=False)
    return {split: MicroDopplerDataset(data, image_size=image_size, split=split, split_file=work / "split.json",
                                       split_seed=seed)
            for split in ("train", "val", "test")}


def bench_factor(factor: int, sets: dict, recogniser, *, steps: int, batch_size: int, lr: float, seed: int, out_dir: Path,
                 overrides: dict | None = None, tag: str = "") -> dict:
    train_images = sets["train"].images
    test_images, test_ids = sets["test"].tensors()
    config = VQGanConfig(image_size=train_images.shape[-1], channels=1, **cpu_vqgan_sizes(factor, **(overrides or {})))
    start = time.perf_counter()
    vqgan, losses = train_vqgan(train_images, config, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    seconds = time.perf_counter() - start
    quality = reconstruction_quality(vqgan, test_images)
    recon = reconstruct(vqgan, test_images)
    a_recon, _ = accuracy(recogniser, recon, test_ids)
    pick = list(range(min(8, len(test_images))))
    grid = save_grid((torch.cat((test_images[pick], recon[pick])) + 1) / 2, out_dir / f"bench_vqgan_f{factor}{tag}.png",
                     nrow=len(pick), colormap="jet")
    return {"factor": factor, "latent": [config.latent_channels, config.latent_size, config.latent_size],
            "config": config.to_dict(), "steps": steps, "batch_size": batch_size, "lr": lr, "train_seconds": seconds,
            "train_img_per_s": steps * batch_size / seconds, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "psnr_db": quality["psnr"], "ssim": quality["ssim"], "a_recon": a_recon, "grid": str(grid)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--num_users", type=int, default=8)
    parser.add_argument("--images_per_user", type=int, default=50)
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--steps", type=int, default=400, help="VQGAN training steps per factor.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="VQGAN learning rate")
    parser.add_argument("--recogniser_steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dalle2md_bench_vqgan"))
    parser.add_argument("--vqgan_config", type=json.loads, default={},
                        help="JSON overrides of the CPU-sized VQGAN's fields, e.g. '{\"codebook_heads\": 4}'")
    parser.add_argument("--tag", default="", help="suffix of the grid files (one per configuration)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_vqgan.json"))
    a = parser.parse_args(argv)
    torch.set_num_threads(1)
    a.work.mkdir(parents=True, exist_ok=True)
    sets = load_splits(a.work, num_users=a.num_users, images_per_user=a.images_per_user, image_size=a.image_size,
                       seed=a.seed)
    print(f"data: {', '.join(f'{k} {len(v)}' for k, v in sets.items())} images, {a.num_users} users, {a.image_size} px",
          flush=True)
    start = time.perf_counter()
    # cached in the work folder (keyed by data and settings): a rerun with more VQGAN steps reuses it
    recogniser = cached_recogniser(
        a.work / "recogniser.pt", *sets["train"].tensors(),
        config=RecogniserConfig(num_users=a.num_users, image_size=a.image_size, widths=(16, 32, 64, 64), feature_dim=32),
        train=RecogniserTrainConfig(steps=a.recogniser_steps, seed=a.seed), val=sets["val"].tensors())
    a_real, _ = accuracy(recogniser, *sets["test"].tensors())
    print(f"recogniser: {time.perf_counter() - start:.0f}s, A_real on test originals {a_real:.3f}", flush=True)
    rows = []
    for factor in a.factors:
        row = bench_factor(factor, sets, recogniser, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                           out_dir=a.out.parent, overrides=a.vqgan_config, tag=a.tag)
        rows.append(row)
        print(f"f={factor}: {row['train_seconds']:.0f}s", flush=True)
    print(f"\n{'f':>3} {'latent':>12} {'train s':>8} {'img/s':>6} {'PSNR dB':>8} {'SSIM':>6} {'A_real':>7} {'A_recon':>8}")
    for r in rows:
        latent = "x".join(map(str, r["latent"]))
        print(f"{r['factor']:>3} {latent:>12} {r['train_seconds']:>8.0f} {r['train_img_per_s']:>6.1f} "
              f"{r['psnr_db']:>8.2f} {r['ssim']:>6.3f} {a_real:>7.3f} {r['a_recon']:>8.3f}")
    result = {"image_size": a.image_size, "num_users": a.num_users, "test_images": len(sets["test"]),
              "a_real": a_real, "recogniser_steps": a.recogniser_steps, "torch_threads": torch.get_num_threads(),
              "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
