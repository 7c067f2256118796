"""Benchmark: training-step time of dalle2-pytorch's stock DiffusionPrior vs dalle2-md's
user-conditioned prior (and the stock network with max_text_len=0, to isolate the padding).

    python experiments/bench_prior.py [--sizes small,seed] [--threads 1] [--out FILE]

A step is forward + backward + Adam update on random embeddings; the figure is the median over
`steps` after `warmup`. The machine is shared, so compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork

from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior

SIZES = {
    # name: (dim, depth, heads, dim_head, batch, steps, warmup)
    "small": (64, 4, 4, 16, 64, 10, 2),
    "seed": (512, 6, 8, 64, 64, 3, 1),  # the seed README's prior size
}
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


def time_user_prior_sample(prior, num_samples: int, timesteps: int, repeats: int = 3) -> float:
    """Median seconds to draw `num_samples` embeddings with `timesteps` DDIM steps."""
    users = torch.arange(num_samples) % prior.config.num_users
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        prior.sample(users, 1, timesteps=timesteps, seed=r)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(sizes: list[str]) -> list[dict]:
    rows = []
    for size in sizes:
        dim, depth, heads, dim_head, batch, steps, warmup = SIZES[size]
        shape = dict(dim=dim, depth=depth, heads=heads, dim_head=dim_head)
        variants = [
            ("stock DiffusionPrior (max_text_len=256)", build_stock_prior(**shape), stock_batch(batch, dim)),
            ("stock DiffusionPrior, max_text_len=0", build_stock_prior(**shape, max_text_len=0), stock_batch(batch, dim)),
            ("UserConditionedDiffusionPrior", build_user_prior(**shape), user_batch(batch, dim)),
        ]
        stock_s = None
        for name, prior, data in variants:
            torch.manual_seed(0)
            result = time_prior_step(prior, data, steps=steps, warmup=warmup)
            stock_s = stock_s or result["median_s"]
            row = {
                "size": size, "model": name, **shape, "batch": batch, "steps": steps,
                "params": sum(p.numel() for p in prior.parameters()),
                **result, "speedup_vs_stock": stock_s / result["median_s"],
            }
            if isinstance(prior, UserConditionedDiffusionPrior):
                row["sample_64x64ddim_s"] = time_user_prior_sample(prior, 64, 64)
            rows.append(row)
            print(f"{size:6s} {name:42s} {row['params']:>10,d}  {row['median_s']:9.4f} s  x{row['speedup_vs_stock']:6.1f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,seed", help=f"comma list of {sorted(SIZES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on a shared box)")
    parser.add_argument("--out", default="benchmarks/results/bench_prior.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [s for s in args.sizes.split(",") if s]
    print(f"{'size':6s} {'model':42s} {'params':>10s}  {'median step':>11s}  speed-up")
    rows = run(sizes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
