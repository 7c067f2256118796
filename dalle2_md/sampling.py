"""Samplers as plain functions (k-diffusion style), shared by the prior and the decoder.

A sampler gets a `model_fn(x_t, t) -> x_0 estimate`, the starting noise and the training
schedule's cumulative alphas; it knows nothing about users, embeddings or images.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .utils import UserError, exists


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """`steps` evenly spaced integer times from T-1 down to 0 (descending, unique)."""
    if not 1 <= steps <= num_train_timesteps:
        raise UserError(f"sampling steps must be between 1 and {num_train_timesteps}, got {steps}.")
    times = torch.linspace(num_train_timesteps - 1, 0, steps).round().long().tolist()
    return list(dict.fromkeys(times))


@torch.no_grad()
def sample_ddim(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: int | Sequence[int],
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

    Args:
        model_fn: (x_t (B, ...), t (B,) long) -> estimate of x_0, same shape as x_t.
        noise: x_T, the starting Gaussian noise; with eta = 0 the result depends on nothing else.
        alphas_cumprod: (T,) cumulative alpha products of the training schedule, indexed by t.
        timesteps: number of steps (spread evenly over 0..T-1) or the descending times.
        eta: 0 = deterministic DDIM; 1 = DDPM-like ancestral noise at every step.
        generator: RNG for the per-step noise when eta > 0; None uses the global RNG.
        callback: called with {"i", "steps", "t", "x", "x_start"} after each step.
    Returns:
        the x_0 estimate after the last step, shape of `noise`.
    """
    total = alphas_cumprod.shape[0]
    times = ddim_timesteps(total, timesteps) if isinstance(timesteps, int) else [int(t) for t in timesteps]
    x = noise.float()
    alphas_cumprod = alphas_cumprod.to(x.device, torch.float64)
    one = torch.ones((), dtype=torch.float64, device=x.device)
    batch = x.shape[0]

    for i, t in enumerate(times):
        last = i + 1 == len(times)
        a_t = alphas_cumprod[t]
        a_next = one if last else alphas_cumprod[times[i + 1]]
        x_start = model_fn(x, torch.full((batch,), t, device=x.device, dtype=torch.long))
        # the noise implied by (x_t, x_0): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
        eps = (x - a_t.sqrt().float() * x_start) / (1 - a_t).sqrt().float()
        sigma = eta * ((1 - a_next) / (1 - a_t) * (1 - a_t / a_next)).clamp(min=0).sqrt()
        x = a_next.sqrt().float() * x_start + (1 - a_next - sigma**2).clamp(min=0).sqrt().float() * eps
        if eta > 0 and not last:
            x = x + sigma.float() * torch.randn(x.shape, generator=generator, device=x.device)
        if exists(callback):
            callback({"i": i, "steps": len(times), "t": t, "x": x, "x_start": x_start})
    return x
