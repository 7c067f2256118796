"""The two-stage model's speed on CPU: decoder training (pixel vs VQGAN latent, 1 vs 3 channels),
the prior's training step (stock dalle2-pytorch vs ours, and against a decoder step), end-to-end
`MicroDopplerDALLE2.sample` time against the number of steps, and the peak memory of each; every
goal (latent training >= 4x pixel img/s, a prior step >= 10x cheaper than a decoder step, 50-step
sampling >= 15x faster than 1000 steps) is reported met or not. `--decoder` runs the decoder
alone instead: training img/s (also re-encoding the latents every step) and DDIM sampling time
against the number of steps.

Every measurement runs in a fresh process (`isolated`), so its peak resident memory is its own.
Absolute numbers depend on how busy the CPU is; compare the ratios, which come from one run.

    python benchmarks/bench_models.py [--out benchmarks/results/bench_models.json] [--threads 1]
    python benchmarks/bench_models.py --quick      # smoke run: fewer steps, about a minute
    python benchmarks/bench_models.py --decoder [--out benchmarks/results/bench_decoder.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork

from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior
from dalle2_md.models.vqgan import VQGanConfig

# --------------------------------------------------------------------------------------------
# decoder timing and process isolation

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


# --------------------------------------------------------------------------------------------
# prior timing

NUM_USERS = 16


def build_stock_prior(*, dim, depth, heads, dim_head, max_text_len=256):
    """dalle2-pytorch's prior as its README builds it, on precomputed embeddings only."""
    net = DiffusionPriorNetwork(dim=dim, depth=depth, dim_head=dim_head, heads=heads, max_text_len=max_text_len)
    return DiffusionPrior(
        net, image_embed_dim=dim, timesteps=1000, cond_drop_prob=0.2, condition_on_text_encodings=False
    )


def build_user_prior(*, dim, depth, heads, dim_head):
    config = PriorConfig(num_users=NUM_USERS, dim=dim, depth=depth, heads=heads, dim_head=dim_head)
    return UserConditionedDiffusionPrior(config)


def stock_batch(batch, dim):
    return {"text_embed": torch.randn(batch, dim), "image_embed": torch.randn(batch, dim)}


def user_batch(batch, dim):
    return {"image_embeds": torch.randn(batch, dim), "user_indices": torch.randint(0, NUM_USERS, (batch,))}


def time_prior_step(prior, batch: dict, steps: int, warmup: int = 2, lr: float = 1e-4) -> dict:
    """Median seconds of one training step (forward, backward, Adam).

    Args:
        prior: a module whose `prior(**batch)` returns a scalar loss.
        batch: keyword tensors for the call; cloned each step (the stock prior scales its
            `image_embed` in place).
        steps: timed steps.
        warmup: untimed steps first (allocator and thread-pool warm-up).
        lr: Adam learning rate.
    Returns:
        {"median_s", "min_s", "times_s"}.
    """
    prior.train()
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    times = []
    for i in range(warmup + steps):
        kwargs = {k: v.clone() for k, v in batch.items()}
        start = time.perf_counter()
        loss = prior(**kwargs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


# --------------------------------------------------------------------------------------------
# the decoder-only benchmark (--decoder)


def run_decoder(*, image_size: int = 64, batch_size: int = 8, steps: int = 3, sample_batch: int = 2,
        sample_steps: tuple[int, ...] = (1000, 100, 50, 25), max_sample_s: float = 120.0) -> dict:
    """The decoder-only benchmark (`--decoder`); returns the JSON-ready results.

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


def print_decoder_table(results: dict) -> None:
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


# --------------------------------------------------------------------------------------------
# the two-stage benchmark


# a small prior (the size once reported at ~1 s/step); the default laptop prior works in the
# default decoder's embedding space (EMBED_DIM) with PriorConfig's transformer shape
SMALL_PRIOR = dict(dim=64, depth=4, heads=4, dim_head=16)
DEFAULT_PRIOR = dict(dim=EMBED_DIM, depth=6, heads=8, dim_head=64)
GOALS = dict(latent_vs_pixel_train=4.0, decoder_vs_prior_step=10.0, few_step_speedup=15.0)


def prior_step(*, kind: str, shape: dict, batch: int, steps: int, warmup: int) -> dict:
    """Median training-step time of a freshly built prior (run through `isolated`).

    Args:
        kind: "stock" (dalle2-pytorch DiffusionPrior, 256 padded text tokens) or "user"
            (UserConditionedDiffusionPrior).
        shape: dim, depth, heads, dim_head.
        batch: embeddings per step.
        steps, warmup: timed and untimed steps.
    """
    torch.manual_seed(0)
    if kind == "stock":
        prior, data = build_stock_prior(**shape), stock_batch(batch, shape["dim"])
    else:
        prior, data = build_user_prior(**shape), user_batch(batch, shape["dim"])
    reset_peak_rss()
    result = time_prior_step(prior, data, steps=steps, warmup=warmup)
    result["peak_rss_mib"] = peak_rss_mib()
    result["params_m"] = sum(p.numel() for p in prior.parameters()) / 1e6
    return result


def chain_sampling(*, use_vqgan: bool, batch: int, step_counts: tuple[int, ...]) -> list[dict]:
    """Time `MicroDopplerDALLE2.sample` (prior then decoder, untrained default-size weights) with
    prior_steps = decoder_steps = n for each n, and the prior's share alone.

    Args:
        use_vqgan: latent decoder instead of pixel.
        batch: images per call (`batch` users, one sample each).
        step_counts: DDIM step counts; every one is run, none extrapolated.
    Returns:
        one dict per count: steps, seconds, prior_seconds, seconds_per_image, peak_rss_mib.
    """
    from dalle2_md.models.chain import MicroDopplerDALLE2

    torch.manual_seed(0)
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=NUM_USERS, **DEFAULT_PRIOR))
    decoder = MicroDopplerDecoder(config=default_config(channels=1, use_vqgan=use_vqgan))
    model = MicroDopplerDALLE2(prior=prior, decoder=decoder).eval()
    users = [u % model.num_users for u in range(batch)]
    model.sample(users, prior_steps=2, decoder_steps=2, seed=0)  # warm-up (allocations, lazy inits)
    rows = []
    for n in step_counts:
        reset_peak_rss()
        start = time.perf_counter()
        model.sample(users, prior_steps=n, decoder_steps=n, seed=0)
        seconds = time.perf_counter() - start
        peak = peak_rss_mib()
        start = time.perf_counter()
        model.sample_image_embeds(users, prior_steps=n, seed=0)
        prior_seconds = time.perf_counter() - start
        rows.append(dict(steps=n, seconds=seconds, prior_seconds=prior_seconds,
                         seconds_per_image=seconds / batch, peak_rss_mib=peak))
        print(f"    chain {n:5d} steps  {seconds:8.2f} s (prior {prior_seconds:.2f} s)", flush=True)
    return rows


def run(*, quick: bool = False, batch_size: int = 8, e2e_batch: int = 2, e2e_space: str = "latent") -> dict:
    """The whole benchmark; returns the JSON-ready results.

    Args:
        quick: smoke-run sizes (fewer timed steps, step counts 50/10/5 instead of 1000/100/50/25).
        batch_size: batch of the decoder training steps and of the default-size prior step
            compared with them.
        e2e_batch: images per end-to-end sampling call.
        e2e_space: "latent" or "pixel" decoder in the end-to-end chain.
    """
    train_steps, stock_steps, user_steps = (1, 1, 3) if quick else (3, 3, 10)
    step_counts = (50, 10, 5) if quick else (1000, 100, 50, 25)
    out = dict(
        quick=quick, threads=torch.get_num_threads(), torch=torch.__version__, image_size=64,
        decoder_size=DEFAULT_SIZE, vqgan_size=DEFAULT_VQGAN,
        small_prior=SMALL_PRIOR, default_prior=DEFAULT_PRIOR, embed_dim=EMBED_DIM,
        decoder_training=[], prior_steps=[], sampling=[],
    )
    wall = time.perf_counter()
    _, out["baseline_rss_mib"] = isolated("_baseline")

    print("decoder training", flush=True)
    for space, use_vqgan in (("pixel", False), ("latent", True)):
        for channels in (1, 3):
            cfg = default_config(image_size=64, channels=channels, use_vqgan=use_vqgan)
            r, peak = isolated("time_training", config=cfg, batch_size=batch_size, steps=train_steps,
                               cached_latents=True)
            row = dict(space=space, channels=channels, batch_size=batch_size, **r, process_peak_rss_mib=peak)
            out["decoder_training"].append(row)
            print(f"    {space:6s} {channels}ch  {r['step_s']:7.3f} s/step  {r['images_per_s']:7.2f} img/s", flush=True)

    print("prior training step", flush=True)
    prior_runs = [
        ("stock DiffusionPrior (256 null text tokens)", "stock", SMALL_PRIOR, 64, stock_steps, 1),
        ("UserConditionedDiffusionPrior", "user", SMALL_PRIOR, 64, user_steps, 2),
        ("UserConditionedDiffusionPrior", "user", SMALL_PRIOR, batch_size, user_steps, 2),
        ("UserConditionedDiffusionPrior, default size", "user", DEFAULT_PRIOR, batch_size, user_steps, 2),
    ]
    for name, kind, shape, batch, steps, warmup in prior_runs:
        r, peak = isolated(prior_step, kind=kind, shape=shape, batch=batch, steps=steps, warmup=warmup)
        out["prior_steps"].append(dict(model=name, **shape, batch=batch, **r, process_peak_rss_mib=peak))
        print(f"    {name:45s} batch {batch:3d}  {r['median_s']:8.4f} s/step", flush=True)

    print(f"end-to-end sampling ({e2e_space} decoder, batch {e2e_batch})", flush=True)
    rows, peak = isolated(chain_sampling, use_vqgan=e2e_space == "latent", batch=e2e_batch, step_counts=step_counts)
    out["sampling"] = [dict(space=e2e_space, batch_size=e2e_batch, **r) for r in rows]
    out["sampling_process_peak_rss_mib"] = peak
    out["wall_s"] = time.perf_counter() - wall
    out["ratios"] = ratios(out)
    return out


def ratios(out: dict) -> dict:
    train = {(t["space"], t["channels"]): t for t in out["decoder_training"]}
    prior = {(p["model"], p["batch"]): p["median_s"] for p in out["prior_steps"]}
    batch = out["decoder_training"][0]["batch_size"]
    stock_s = prior[("stock DiffusionPrior (256 null text tokens)", 64)]
    user_s = prior[("UserConditionedDiffusionPrior", 64)]
    small_s = prior[("UserConditionedDiffusionPrior", batch)]
    default_s = prior[("UserConditionedDiffusionPrior, default size", batch)]
    r = dict(
        latent_vs_pixel_train_1ch=train[("latent", 1)]["images_per_s"] / train[("pixel", 1)]["images_per_s"],
        latent_vs_pixel_train_3ch=train[("latent", 3)]["images_per_s"] / train[("pixel", 3)]["images_per_s"],
        pixel_1ch_vs_3ch_train=train[("pixel", 1)]["images_per_s"] / train[("pixel", 3)]["images_per_s"],
        latent_1ch_vs_3ch_train=train[("latent", 1)]["images_per_s"] / train[("latent", 3)]["images_per_s"],
        prior_stock_vs_ours_step=stock_s / user_s,
        pixel_decoder_vs_small_prior_step=train[("pixel", 1)]["step_s"] / small_s,
        latent_decoder_vs_small_prior_step=train[("latent", 1)]["step_s"] / small_s,
        pixel_decoder_vs_default_prior_step=train[("pixel", 1)]["step_s"] / default_s,
        latent_decoder_vs_default_prior_step=train[("latent", 1)]["step_s"] / default_s,
    )
    by_steps = {s["steps"]: s["seconds"] for s in out["sampling"]}
    most = max(by_steps)
    for n in sorted(by_steps, reverse=True)[1:]:
        r[f"sampling_{most}_vs_{n}_steps"] = by_steps[most] / by_steps[n]
    return r


def goals(out: dict) -> list[tuple[str, float, float, bool]]:
    """(description, measured ratio, goal, met) for the speed goals."""
    r = out["ratios"]
    batch = out["decoder_training"][0]["batch_size"]
    latent = min(r["latent_vs_pixel_train_1ch"], r["latent_vs_pixel_train_3ch"])
    counts = sorted(s["steps"] for s in out["sampling"])
    few, most = (50 if 50 in counts and 50 != counts[-1] else counts[0]), counts[-1]
    speedup = r[f"sampling_{most}_vs_{few}_steps"]
    rows = [
        ("latent decoder training >= 4x pixel img/s (worse of 1ch/3ch)", latent, GOALS["latent_vs_pixel_train"]),
        (f"prior step (small size 64/4/4/16) >= 10x cheaper than a default pixel decoder step, both batch {batch}",
         r["pixel_decoder_vs_small_prior_step"], GOALS["decoder_vs_prior_step"]),
        (f"  stricter: small prior vs the default latent decoder step, both batch {batch}",
         r["latent_decoder_vs_small_prior_step"], GOALS["decoder_vs_prior_step"]),
        (f"  stricter: default prior ({'/'.join(map(str, DEFAULT_PRIOR.values()))}) vs the default latent "
         f"decoder step, both batch {batch}", r["latent_decoder_vs_default_prior_step"], GOALS["decoder_vs_prior_step"]),
        (f"{few}-step sampling >= 15x faster than {most} steps", speedup, GOALS["few_step_speedup"]),
    ]
    return [(name, value, goal, value >= goal) for name, value, goal in rows]


def print_table(out: dict) -> None:
    print(f"\n## Two-stage model benchmark ({out['threads']} thread(s), torch {out['torch']}"
          f"{', QUICK smoke run' if out['quick'] else ''}; total {out['wall_s']:.0f} s)\n")
    print(f"Decoder {out['decoder_size']}, VQGAN {out['vqgan_size']}, embedding dim {out['embed_dim']}. "
          f"Peak MiB: peak RSS during the measurement in a fresh process "
          f"(a process that only imports torch + dalle2_md: {out['baseline_rss_mib']:.0f} MiB).\n")
    print("| decoder training, 64 px | channels | batch | s/step | img/s | peak MiB | U-Net M params |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for t in out["decoder_training"]:
        space = "VQGAN latent (cached latents)" if t["space"] == "latent" else "pixel"
        print(f"| {space} | {t['channels']} | {t['batch_size']} | {t['step_s']:.3f} | {t['images_per_s']:.2f} "
              f"| {t['peak_rss_mib']:.0f} | {t['params_m']:.2f} |")
    print("\n| prior training step | dim/depth/heads/dim_head | batch | median s/step | peak MiB | M params |")
    print("|---|---|---:|---:|---:|---:|")
    for p in out["prior_steps"]:
        print(f"| {p['model']} | {p['dim']}/{p['depth']}/{p['heads']}/{p['dim_head']} | {p['batch']} "
              f"| {p['median_s']:.4f} | {p['peak_rss_mib']:.0f} | {p['params_m']:.2f} |")
    s0 = out["sampling"][0]
    print(f"\n| end-to-end `MicroDopplerDALLE2.sample` ({s0['space']} decoder, batch {s0['batch_size']}, "
          f"prior_steps = decoder_steps) | seconds | of which prior | s/image | peak MiB |")
    print("|---:|---:|---:|---:|---:|")
    for s in out["sampling"]:
        print(f"| {s['steps']} | {s['seconds']:.2f} | {s['prior_seconds']:.2f} | {s['seconds_per_image']:.2f} "
              f"| {s['peak_rss_mib']:.0f} |")
    print("\n| ratio | value |")
    print("|---|---:|")
    for k, v in out["ratios"].items():
        print(f"| {k} | {v:.2f}x |")
    print("\n### Goals\n")
    if out["quick"]:
        print("(quick smoke run: step counts and repeats are smaller than the goals assume)\n")
    for name, value, goal, met in goals(out):
        print(f"- {'met' if met else 'NOT met'}: {name}: {value:.1f}x (goal {goal:g}x)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None,
                   help="JSON results (default benchmarks/results/bench_models.json, with --decoder bench_decoder.json)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on a shared box)")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer timed steps and step counts 50/10/5")
    p.add_argument("--batch-size", type=int, default=8, help="decoder training batch, also the default prior's")
    p.add_argument("--e2e-batch", type=int, default=2, help="images per end-to-end sampling call")
    p.add_argument("--e2e-space", choices=("latent", "pixel"), default="latent",
                   help="decoder in the end-to-end chain (pixel at 1000 steps takes minutes)")
    d = p.add_argument_group("--decoder: the decoder alone (training img/s incl. re-encoding every step, DDIM "
                             "sampling time against the number of steps)")
    d.add_argument("--decoder", action="store_true", help="run the decoder-only benchmark instead")
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--steps", type=int, default=3, help="timed training steps per variant")
    d.add_argument("--sample-batch", type=int, default=2)
    d.add_argument("--sample-steps", type=int, nargs="+", default=[1000, 100, 50, 25])
    d.add_argument("--max-sample-s", type=float, default=120.0,
                   help="sampling runs predicted to take longer are extrapolated, not run")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.decoder:
        out = run_decoder(image_size=a.image_size, batch_size=a.batch_size, steps=a.steps, sample_batch=a.sample_batch,
                          sample_steps=tuple(a.sample_steps), max_sample_s=a.max_sample_s)
        print_decoder_table(out)
    else:
        out = run(quick=a.quick, batch_size=a.batch_size, e2e_batch=a.e2e_batch, e2e_space=a.e2e_space)
        out["goals"] = [dict(goal=name, ratio=value, target=goal, met=met) for name, value, goal, met in goals(out)]
        print_table(out)
    path = Path(a.out or f"benchmarks/results/{'bench_decoder' if a.decoder else 'bench_models'}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
