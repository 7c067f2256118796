"""The two-stage model's speed on CPU in one run: decoder training (pixel vs VQGAN latent, 1 vs
3 channels), prior training step (stock dalle2-pytorch vs ours, and against a decoder step),
end-to-end `MicroDopplerDALLE2.sample` time against the number of steps, and peak memory.

Every measurement runs in a fresh process (`bench_decoder.isolated`), so its peak resident
memory is its own. The machine is shared and noisy: quote the ratios, which come from one run.

    python benchmarks/bench_models.py [--out benchmarks/results/bench_models.json] [--threads 1]
    python benchmarks/bench_models.py --quick      # smoke run: fewer steps, about a minute

The timing code is reused from bench_decoder.py (decoder training, process isolation, RSS) and
bench_prior.py (prior builders and the prior step timer); only the chained sampling is new here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark modules

import bench_decoder  # noqa: E402
import bench_prior  # noqa: E402
from bench_decoder import EMBED_DIM, default_config, isolated, peak_rss_mib, reset_peak_rss  # noqa: E402

# "before/after" prior size of the issue (the ~1 s/step report); the default laptop prior works
# in the default decoder's embedding space (EMBED_DIM) with PriorConfig's transformer shape
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
        prior, data = bench_prior.build_stock_prior(**shape), bench_prior.stock_batch(batch, shape["dim"])
    else:
        prior, data = bench_prior.build_user_prior(**shape), bench_prior.user_batch(batch, shape["dim"])
    reset_peak_rss()
    result = bench_prior.time_prior_step(prior, data, steps=steps, warmup=warmup)
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
    from dalle2_md.models.decoder import MicroDopplerDecoder
    from dalle2_md.models.chain import MicroDopplerDALLE2
    from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior

    torch.manual_seed(0)
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=bench_prior.NUM_USERS, **DEFAULT_PRIOR))
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
        decoder_size=bench_decoder.DEFAULT_SIZE, vqgan_size=bench_decoder.DEFAULT_VQGAN,
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
    """(description, measured ratio, goal, met) for the issue's goals."""
    r = out["ratios"]
    batch = out["decoder_training"][0]["batch_size"]
    latent = min(r["latent_vs_pixel_train_1ch"], r["latent_vs_pixel_train_3ch"])
    counts = sorted(s["steps"] for s in out["sampling"])
    few, most = (50 if 50 in counts and 50 != counts[-1] else counts[0]), counts[-1]
    speedup = r[f"sampling_{most}_vs_{few}_steps"]
    rows = [
        ("latent decoder training >= 4x pixel img/s (worse of 1ch/3ch)", latent, GOALS["latent_vs_pixel_train"]),
        (f"prior step (issue's size 64/4/4/16) >= 10x cheaper than a default pixel decoder step, both batch {batch}",
         r["pixel_decoder_vs_small_prior_step"], GOALS["decoder_vs_prior_step"]),
        (f"  stricter: issue's prior vs the default latent decoder step, both batch {batch}",
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
    p.add_argument("--out", default="benchmarks/results/bench_models.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on a shared box)")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer timed steps and step counts 50/10/5")
    p.add_argument("--batch-size", type=int, default=8, help="decoder training batch, also the default prior's")
    p.add_argument("--e2e-batch", type=int, default=2, help="images per end-to-end sampling call")
    p.add_argument("--e2e-space", choices=("latent", "pixel"), default="latent",
                   help="decoder in the end-to-end chain (pixel at 1000 steps takes minutes)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = run(quick=a.quick, batch_size=a.batch_size, e2e_batch=a.e2e_batch, e2e_space=a.e2e_space)
    out["goals"] = [dict(goal=name, ratio=value, target=goal, met=met) for name, value, goal, met in goals(out)]
    print_table(out)
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
