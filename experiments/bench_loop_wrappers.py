"""`train_clip`, `train_vqgan` and `train_recogniser` train through the shared loop
(`dalle2_md.training.loop.train`, the loop the CLI stages run). This compares them with plain
loops (kept below as reference), on the setups of tests/models/test_clip.py (toy users, 120 steps; its
toy data is copied below), tests/test_vqgan_path.py (smooth 16 px images, 60 steps) and the
augmentation benchmark's recogniser (32 px, default widths, time pool 2, batch 32, 300 steps): the
numbers those tests assert, the wall-clock time, and for the recogniser whether the weights are
bit-identical.

    python experiments/bench_loop_wrappers.py [--repeats 2] [--out benchmarks/results/bench_loop_wrappers.json]

Times are wall-clock on whatever else the machine is doing; one torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from dalle2_md.evaluation.recogniser import _BatchStream, _initial_recogniser, _Objective
from dalle2_md.evaluation.stages import within_user_spread
from dalle2_md.models.embedding import ClipConfig, MicroDopplerClip, compute_image_embeds
from dalle2_md.models.vqgan import VQGanConfig, build_vqgan, reconstruction_quality, vqgan_loss
from dalle2_md.training.fit import train_clip, train_vqgan
from dalle2_md.training.presets import cpu_vqgan_sizes

ROOT = Path(__file__).resolve().parents[1]

# the toy setup of tests/models/test_clip.py
USERS = 4
SIZE = 20  # not a power of 2 on purpose


def tiny_config(**kw):
    base = dict(
        num_users=USERS, image_size=SIZE, channels=1, dim_latent=16, dim_image=32, dim_text=16,
        encoder_widths=(8, 16, 32), token_grid=2, text_heads=2, text_dim_head=8,
        ssl_dim=16, ssl_hidden=32,
    )
    base.update(kw)
    return ClipConfig(**base)


def toy_spectrograms(n_per_user, seed, size=SIZE):
    """1-channel images: a wavy horizontal line whose height and wobble rate are the user's,
    with per-image phase, wobble amplitude, offset, gain and noise (within-user variation)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.arange(size)[:, None], np.arange(size)[None, :]
    images, users = [], []
    for u in range(USERS):
        freq, centre = 1 + u, size * (0.2 + 0.2 * u)
        for _ in range(n_per_user):
            line = centre + rng.uniform(0.5, 3) * np.sin(2 * np.pi * freq * cols / size + rng.uniform(0, 2 * np.pi))
            line = line + rng.normal(0, 0.8)
            img = np.exp(-0.5 * ((rows - line) / 1.2) ** 2) * rng.uniform(0.6, 1.0)
            images.append(img + rng.normal(0, 0.1, img.shape))
            users.append(u)
    images = torch.tensor(np.stack(images)[:, None], dtype=torch.float32) * 2 - 1
    return images, torch.tensor(users)


def plain_recogniser_loop(images, ids, config, cfg, synthetic=None):
    """The recogniser's updates without the shared loop: AdamW, cosine decay to 10 %, raw weights,
    over the same batch stream; returns (model, its objective, the stream) (as in tests/test_evaluate.py)."""
    model = _initial_recogniser(config, cfg.seed, None)
    objective, stream = _Objective(model, cfg.synthetic_weight), _BatchStream((images, ids), synthetic, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)  # as the loop's
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(1, cfg.steps))))
    for _ in range(cfg.steps):
        objective(**next(stream)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    return model.eval(), objective, stream


def plain_clip(images, user_indices, config, *, steps, batch_size, lr, seed):
    """A plain embedding-model loop: Adam, a fresh random batch each step, raw weights."""
    torch.manual_seed(seed)
    model = MicroDopplerClip(config).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(images), generator=gen)[:batch_size]
        loss = model(images[idx], user_indices[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def plain_vqgan(images, config, *, steps, batch_size, lr, seed):
    """A plain VQGAN loop: Adam over shuffled epochs, raw weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vqgan = build_vqgan(config).train()
        opt = torch.optim.Adam(vqgan.parameters(), lr=lr)
        order, pos = torch.randperm(len(images)), 0
        for _ in range(steps):
            if pos + batch_size > len(images):
                order, pos = torch.randperm(len(images)), 0
            loss, _ = vqgan_loss(vqgan, images[order[pos: pos + batch_size]])
            pos += batch_size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return vqgan.eval()


def plain_recogniser(images, user_indices, config, train):
    """A plain recogniser loop: AdamW, cosine decay to 10 %, raw weights (`plain_recogniser_loop`)."""
    return plain_recogniser_loop(images, user_indices, config, train)[0]


def recogniser_row(train_fn) -> dict:
    from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig

    g = torch.Generator().manual_seed(0)
    user_indices = torch.arange(31 * 10) % 31
    images = (torch.rand(len(user_indices), 1, 32, 32, generator=g) * 2 - 1) * 0.5
    images[:, :, :31] += 0.5 * torch.nn.functional.one_hot(user_indices, 32)[:, None, :31, None]
    config = RecogniserConfig(num_users=31, image_size=32, time_pool=2)
    start = time.time()
    model = train_fn(images, user_indices, config, RecogniserTrainConfig(steps=300, seed=0))
    seconds = time.time() - start
    state = plain_recogniser(images, user_indices, config, RecogniserTrainConfig(steps=300, seed=0)).state_dict()
    return {"recogniser_seconds_300_steps": seconds,
            "recogniser_weights_equal_plain": float(all(torch.equal(v, state[k]) for k, v in model.state_dict().items()))}


def clip_row(train_fn, toy) -> dict:
    (x, y), (xt, yt) = toy
    kw = dict(steps=120, batch_size=32, lr=3e-3, seed=0)
    start = time.time()
    model = train_fn(x, y, tiny_config(), **kw)
    seconds = time.time() - start
    plain = train_fn(x, y, tiny_config(use_visual_ssl=False), **kw)
    train_e, test_e = compute_image_embeds(model, x), compute_image_embeds(model, xt)
    centroids = torch.stack([train_e[y == u].mean(0) for u in range(USERS)])
    with torch.no_grad():
        tokens = model.embed_users(torch.arange(USERS))
    return {
        "seconds_120_steps": seconds,
        "acc_centroid": (torch.cdist(test_e, centroids).argmin(-1) == yt).float().mean().item(),
        "acc_token": ((test_e @ tokens.t()).argmax(-1) == yt).float().mean().item(),
        "spread_train": within_user_spread(train_e, y),
        "spread_test": within_user_spread(test_e, yt),
        "spread_train_without_ssl": within_user_spread(compute_image_embeds(plain, x), y),
    }


def vqgan_row(train_fn) -> dict:
    torch.manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(32, 1, 4, 4), size=16, mode="bilinear") * 2 - 1
    config = VQGanConfig(image_size=16, channels=1, **cpu_vqgan_sizes(4, dim=8, codebook_size=32, codebook_dim=8))
    before = reconstruction_quality(build_vqgan(config), images)
    start = time.time()
    vqgan = train_fn(images, config, steps=60, batch_size=8, lr=3e-3, seed=0)
    seconds = time.time() - start
    after = reconstruction_quality(vqgan, images)
    return {"seconds_60_steps": seconds, "psnr_gain_db": after["psnr"] - before["psnr"],
            "ssim_gain": after["ssim"] - before["ssim"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (the fastest is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_loop_wrappers.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    toy = toy_spectrograms(40, seed=0), toy_spectrograms(24, seed=1)
    from dalle2_md.evaluation.recogniser import train_recogniser

    loops = {
        "plain loop (before)": (plain_clip, plain_vqgan, plain_recogniser),
        "training.train (now)": (lambda *a, **k: train_clip(*a, progress=False, **k),
                                 lambda *a, **k: train_vqgan(*a, **k)[0],
                                 lambda x, y, config, train: train_recogniser(x, y, config=config, train=train)),
    }
    rows = {}
    for _ in range(args.repeats):  # interleaved, so both loops see the same machine load
        for name, (clip_fn, vqgan_fn, recogniser_fn) in loops.items():
            row = {**clip_row(clip_fn, toy), **vqgan_row(vqgan_fn), **recogniser_row(recogniser_fn)}
            old = rows.get(name)
            rows[name] = row if old is None else {
                **row, **{k: min(row[k], old[k]) for k in row if "seconds" in k}}
    keys = list(next(iter(rows.values())))
    widths = [max(12, len(k) + 2) for k in keys]
    print(f"{'':22}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths)))
    for name, row in rows.items():
        print(f"{name:22}" + "".join(f"{row[k]:>{w}.3f}" for k, w in zip(keys, widths)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
