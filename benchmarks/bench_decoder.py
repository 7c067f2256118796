"""Decoder speed on CPU: training images/s (pixel vs VQGAN latent, 1 vs 3 channels) and DDIM
sampling time against the number of steps, with the peak resident memory of each measurement.

The timing code lives in importable functions (`time_training`, `time_sampling`,
`peak_rss_mib`, `isolated`, `run`) so benchmarks/bench_models.py can reuse them; run this file to print a
table and write JSON:

    python benchmarks/bench_decoder.py [--out benchmarks/results/bench_decoder.json]

Absolute numbers depend on how busy the CPU is; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.vqgan import VQGanConfig

# a decoder that trains at a usable pace on a laptop CPU (the seed's dim=128, 4 stages is
# ~16x the compute); the VQGAN maps 64 px to a 16 px, 64-channel latent
DEFAULT_SIZE = dict(dim=32, dim_mults=(1, 2, 4), num_resnet_blocks=1, attn_heads=4, attn_dim_head=32)
DEFAULT_VQGAN = dict(dim=32, layers=2)
EMBED_DIM = 128


def default_config(*, image_size: int = 64, channels: int = 1, use_vqgan: bool = False, **overrides) -> DecoderConfig:
    """The benchmark's "default size" decoder config.

    Args:
        image_size: output side in pixels.
        channels: 1 or 3.
        use_vqgan: latent (VQGAN) instead of pixel diffusion.
        overrides: any other DecoderConfig field.
    """
    vqgan = VQGanConfig(image_size=image_size, channels=channels, **DEFAULT_VQGAN) if use_vqgan else None
    args = dict(image_size=image_size, channels=channels, image_embed_dim=EMBED_DIM, use_vqgan=use_vqgan, vqgan=vqgan)
    args.update(DEFAULT_SIZE)
    args.update(overrides)
    return DecoderConfig(**args)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB since the last `reset_peak_rss` (Linux
    VmHWM), else since the process started (getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(fn, threads: int, kwargs: dict) -> dict:
    torch.set_num_threads(threads)
    result = (globals()[fn] if isinstance(fn, str) else fn)(**kwargs)
    return dict(result=result, process_peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _baseline() -> dict:
    # what a fresh process holds after importing torch and building nothing
    return dict(result=None, process_peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def isolated(fn, /, **kwargs):
    """Run a timing function in a fresh process, so the peak memory it reports belongs to that
    measurement alone (freed memory is not handed back to the OS, so measurements in one
    process would inherit each other's peaks).

    Args:
        fn: the name of one of this module's functions, or any module-level function (it is
            pickled by reference, so the child must be able to import its module).
        kwargs: the function's keyword arguments (picklable).

    Returns:
        (the function's result, that process's peak RSS in MiB).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        if fn == "_baseline":
            out = pool.submit(_baseline).result()
        else:
            out = pool.submit(_child, fn, torch.get_num_threads(), kwargs).result()
    return out["result"], out["process_peak_rss_mib"]


def time_training(
    config: DecoderConfig,
    *,
    batch_size: int = 8,
    steps: int = 3,
    warmup: int = 1,
    cached_latents: bool = True,
    lr: float = 1e-4,
) -> dict:
    """Time optimiser steps (forward, backward, Adam) of a fresh decoder on random data.

    Args:
        config: decoder to build.
        batch_size: images per step.
        steps: timed steps (after `warmup` untimed ones).
        warmup: untimed steps first (allocations, lazy inits).
        cached_latents: for a latent decoder, train on latents encoded once (as training
            should); False re-encodes the images through the VQGAN every step.
        lr: Adam learning rate.

    Returns:
        dict with step_s (mean seconds per step), images_per_s, peak_rss_mib, params_m.
    """
    torch.manual_seed(0)
    model = MicroDopplerDecoder(config=config)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    images = torch.rand(batch_size, config.channels, config.image_size, config.image_size) * 2 - 1
    embeds = torch.randn(batch_size, config.image_embed_dim)
    latents = None
    if config.use_vqgan:
        model.fit_latent_scale(images)
        if cached_latents:
            latents = model.encode_latents(images)
    reset_peak_rss()
    elapsed = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = model(images, embeds, latents=latents)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            elapsed.append(time.perf_counter() - start)
    step_s = sum(elapsed) / len(elapsed)
    return dict(
        step_s=step_s,
        images_per_s=batch_size / step_s,
        peak_rss_mib=peak_rss_mib(),
        params_m=sum(p.numel() for p in model.unet.parameters()) / 1e6,
    )


def time_sampling(
    config: DecoderConfig,
    *,
    batch_size: int = 2,
    step_counts: tuple[int, ...] = (1000, 100, 50, 25),
    max_seconds: float = 120.0,
) -> list[dict]:
    """Time DDIM sampling of a fresh decoder for several step counts.

    A step count whose predicted time (from the per-step time of the counts already measured,
    smallest first) exceeds `max_seconds` is not run: its time is extrapolated linearly and
    marked `extrapolated: True`.

    Args:
        config: decoder to build (its `timesteps` is the full count).
        batch_size: images per sampling call.
        step_counts: DDIM step counts to time.
        max_seconds: longest single sampling run to actually perform.

    Returns:
        one dict per step count: steps, seconds, seconds_per_image, extrapolated, peak_rss_mib.
    """
    torch.manual_seed(0)
    model = MicroDopplerDecoder(config=config).eval()
    embeds = torch.randn(batch_size, config.image_embed_dim)
    model.sample(embeds, timesteps=2, seed=0)  # warm-up
    results, per_step, fixed = {}, None, 0.0
    for steps in sorted(step_counts):
        predicted = fixed + per_step * steps if per_step is not None else 0.0
        if predicted > max_seconds:
            results[steps] = dict(steps=steps, seconds=predicted, extrapolated=True, peak_rss_mib=None)
            continue
        reset_peak_rss()
        start = time.perf_counter()
        model.sample(embeds, timesteps=steps, seed=0)
        seconds = time.perf_counter() - start
        results[steps] = dict(steps=steps, seconds=seconds, extrapolated=False, peak_rss_mib=peak_rss_mib())
        per_step = seconds / steps
    for r in results.values():
        r["seconds_per_image"] = r["seconds"] / batch_size
    return [results[s] for s in step_counts]


def run(*, image_size: int = 64, batch_size: int = 8, steps: int = 3, sample_batch: int = 2,
        sample_steps: tuple[int, ...] = (1000, 100, 50, 25), max_sample_s: float = 120.0) -> dict:
    """The whole benchmark; returns the JSON-ready results.

    Args:
        image_size: image side in pixels.
        batch_size: training batch.
        steps: timed training steps per variant.
        sample_batch: images per sampling call.
        sample_steps: DDIM step counts to time.
        max_sample_s: longest sampling run actually performed (longer ones are extrapolated).
    """
    out = dict(
        image_size=image_size,
        threads=torch.get_num_threads(),
        decoder=DEFAULT_SIZE,
        vqgan=DEFAULT_VQGAN,
        training=[],
        sampling=[],
    )
    variants = [
        ("pixel", 1, False, True),
        ("pixel", 3, False, True),
        ("latent", 1, True, True),
        ("latent", 3, True, True),
        ("latent, re-encoding every step", 1, True, False),
    ]
    _, out["baseline_rss_mib"] = isolated("_baseline")
    for space, channels, use_vqgan, cached in variants:
        cfg = default_config(image_size=image_size, channels=channels, use_vqgan=use_vqgan)
        r, peak = isolated("time_training", config=cfg, batch_size=batch_size, steps=steps, cached_latents=cached)
        r["peak_rss_mib"] = peak
        out["training"].append(dict(space=space, channels=channels, batch_size=batch_size, **r))
        print(f"  train {space:31s} {channels}ch  {r['images_per_s']:7.2f} img/s", flush=True)
    for space, use_vqgan in (("pixel", False), ("latent", True)):
        cfg = default_config(image_size=image_size, channels=1, use_vqgan=use_vqgan)
        rs, peak = isolated("time_sampling", config=cfg, batch_size=sample_batch, step_counts=sample_steps,
                            max_seconds=max_sample_s)
        for r in rs:
            r["peak_rss_mib"] = None if r["extrapolated"] else peak
            out["sampling"].append(dict(space=space, channels=1, batch_size=sample_batch, **r))
            print(f"  sample {space:6s} {r['steps']:5d} steps  {r['seconds']:8.2f} s"
                  f"{' (extrapolated)' if r['extrapolated'] else ''}", flush=True)

    train = {(t["space"], t["channels"]): t for t in out["training"]}
    out["ratios"] = dict(
        latent_vs_pixel_train_1ch=train[("latent", 1)]["images_per_s"] / train[("pixel", 1)]["images_per_s"],
        latent_vs_pixel_train_3ch=train[("latent", 3)]["images_per_s"] / train[("pixel", 3)]["images_per_s"],
        cached_vs_reencoding_latents=train[("latent", 1)]["images_per_s"]
        / train[("latent, re-encoding every step", 1)]["images_per_s"],
        pixel_1ch_vs_3ch_train=train[("pixel", 1)]["images_per_s"] / train[("pixel", 3)]["images_per_s"],
    )
    for space in ("pixel", "latent"):
        by_steps = {s["steps"]: s["seconds"] for s in out["sampling"] if s["space"] == space}
        if 1000 in by_steps:
            for k in sorted(by_steps):
                if k != 1000:
                    out["ratios"][f"{space}_sampling_1000_vs_{k}_steps"] = by_steps[1000] / by_steps[k]
    return out


def print_table(results: dict) -> None:
    print(f"\nDecoder training at {results['image_size']} px ({results['threads']} thread(s)), "
          f"decoder {results['decoder']}, VQGAN {results['vqgan']}")
    print(f"peak MiB = peak RSS of a fresh process doing only that measurement "
          f"(one that only imports torch + dalle2_md: {results['baseline_rss_mib']:.0f} MiB)")
    print(f"{'space':32s} {'ch':>3s} {'s/step':>8s} {'img/s':>8s} {'peak MiB':>9s} {'U-Net M':>8s}")
    for t in results["training"]:
        print(f"{t['space']:32s} {t['channels']:3d} {t['step_s']:8.3f} {t['images_per_s']:8.2f} "
              f"{t['peak_rss_mib']:9.0f} {t['params_m']:8.2f}")
    print(f"\nDDIM sampling, batch {results['sampling'][0]['batch_size']}, 1 channel")
    print(f"{'space':8s} {'steps':>6s} {'seconds':>9s} {'s/image':>9s} {'peak MiB':>9s}")
    for s in results["sampling"]:
        peak = f"{s['peak_rss_mib']:9.0f}" if s["peak_rss_mib"] is not None else f"{'-':>9s}"
        print(f"{s['space']:8s} {s['steps']:6d} {s['seconds']:9.2f} {s['seconds_per_image']:9.2f} {peak}"
              f"{'  (extrapolated)' if s['extrapolated'] else ''}")
    print("\nratios:")
    for k, v in results["ratios"].items():
        print(f"  {k:40s} {v:7.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/bench_decoder.json")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sample-batch", type=int, default=2)
    p.add_argument("--sample-steps", type=int, nargs="+", default=[1000, 100, 50, 25])
    p.add_argument("--max-sample-s", type=float, default=120.0,
                   help="sampling runs predicted to take longer are extrapolated, not run")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    results = run(image_size=a.image_size, batch_size=a.batch_size, steps=a.steps, sample_batch=a.sample_batch,
                  sample_steps=tuple(a.sample_steps), max_sample_s=a.max_sample_s)
    print_table(results)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
