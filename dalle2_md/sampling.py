"""Samplers as plain functions (k-diffusion style), shared by the prior and the decoder.

A sampler gets a `model_fn(x_t, t) -> x_0 estimate`, the starting noise and the training
schedule's cumulative alphas; it knows nothing about users, embeddings or images. Owns: DDIM,
DPM-Solver++(2M), EDM's Heun sampler (over noise levels, for EDM decoders), the sampler
registry, per-sample noise generators keyed by (seed, stream, key); the defaults themselves are
in `defaults` (no torch import, for the CLI).
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import torch

from dalle2_md.defaults import DEFAULT_SAMPLER, SAMPLERS
from dalle2_md.utils import UserError, exists

Generators = torch.Generator | Sequence[torch.Generator] | None


def resolve_sampler(sampler: str | None, eta: float = 0.0) -> str:
    """The sampler to run: the one asked for, else DDIM when eta > 0 (the only stochastic one),
    else `DEFAULT_SAMPLER`; checked by `check_sampler`."""
    if sampler is None:
        sampler = "ddim" if eta > 0 else DEFAULT_SAMPLER
    return check_sampler(sampler, eta)


def check_sampler(sampler: str, eta: float = 0.0) -> str:
    """The sampler's name, or a UserError naming the flag and the choices."""
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler {sampler!r} is not a sampler; use one of {', '.join(SAMPLERS)}.")
    if eta < 0:
        raise UserError(f"--eta must be >= 0, got {eta}.")
    if eta > 0 and sampler != "ddim":
        raise UserError(f"--eta {eta} needs --sampler ddim ({sampler} is deterministic); give --sampler ddim or --eta 0.")
    return sampler


def ddim_timesteps(num_train_timesteps: int, steps: int, start: int | None = None) -> list[int]:
    """`steps` evenly spaced integer times from `start` (default T-1) down to 0 (descending,
    unique: fewer than `steps` when `start` + 1 < steps)."""
    if not 1 <= steps <= num_train_timesteps:
        raise UserError(f"sampling steps must be between 1 and {num_train_timesteps}, got {steps}.")
    start = num_train_timesteps - 1 if start is None else start
    if not 0 <= start < num_train_timesteps:
        raise ValueError(f"start {start} outside the schedule 0..{num_train_timesteps - 1}")
    times = torch.linspace(start, 0, steps).round().long().tolist()
    return list(dict.fromkeys(times))


def _times(total: int, timesteps: int | Sequence[int]) -> list[int]:
    return ddim_timesteps(total, timesteps) if isinstance(timesteps, int) else [int(t) for t in timesteps]


def keyed_generators(seed: int, stream: int, keys: Sequence) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from (seed, stream, key) through a hash, so a
    sample's noise depends on nothing else (not on its batch, nor on the other samples).

    Args:
        seed: the user's sampling seed.
        stream: separates independent uses of one seed (prior noise, decoder noise).
        keys: one hashable per sample, e.g. (user label, sample index); str() must be stable.
    """
    gens = []
    for key in keys:
        digest = hashlib.sha256(f"{int(seed)}|{int(stream)}|{key}".encode()).digest()
        gens.append(torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1)))
    return gens


def randn(shape: Sequence[int], generator: Generators, device) -> torch.Tensor:
    """Gaussian noise of `shape`; with a list of generators, row i comes from generator i
    (drawn on the CPU, then moved, so it is the same on every device)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(tuple(shape[1:]), generator=g) for g in generator]
        return (torch.stack(rows) if rows else torch.empty(tuple(shape))).to(device)
    where = generator.device if exists(generator) else device
    return torch.randn(tuple(shape), generator=generator, device=where).to(device)


@torch.no_grad()
def sample_ddim(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: int | Sequence[int],
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

    Args:
        model_fn: (x_t (B, ...), t (B,) long) -> estimate of x_0, same shape as x_t.
        noise: x_T, the starting Gaussian noise; with eta = 0 the result depends on nothing else.
        alphas_cumprod: (T,) cumulative alpha products of the training schedule, indexed by t.
        timesteps: number of steps (spread evenly over 0..T-1) or the descending times; each
            is one network evaluation, the last one returns its x_0 estimate.
        eta: 0 = deterministic DDIM; 1 = DDPM-like ancestral noise at every step.
        generator: RNG for the per-step noise when eta > 0: one generator, or one per batch
            row (then each row's noise is independent of the batch); None uses the global RNG.
        callback: called with {"i", "steps", "t", "x", "x_start"} after each step.
    Returns:
        the x_0 estimate after the last step, shape of `noise`.
    """
    times = _times(alphas_cumprod.shape[0], timesteps)
    x = noise.float()
    alphas_cumprod = alphas_cumprod.to(x.device, torch.float64)
    one = torch.ones((), dtype=torch.float64, device=x.device)
    batch = x.shape[0]

    for i, t in enumerate(times):
        last = i + 1 == len(times)
        a_t = alphas_cumprod[t]
        a_next = one if last else alphas_cumprod[times[i + 1]]
        x_start = model_fn(x, torch.full((batch,), t, device=x.device, dtype=torch.long)).float()
        # the noise implied by (x_t, x_0): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
        eps = (x - a_t.sqrt().float() * x_start) / (1 - a_t).sqrt().float()
        sigma = eta * ((1 - a_next) / (1 - a_t) * (1 - a_t / a_next)).clamp(min=0).sqrt()
        x = a_next.sqrt().float() * x_start + (1 - a_next - sigma**2).clamp(min=0).sqrt().float() * eps
        if eta > 0 and not last:
            x = x + sigma.float() * randn(x.shape, generator, x.device)
        if exists(callback):
            callback({"i": i, "steps": len(times), "t": t, "x": x, "x_start": x_start})
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: int | Sequence[int],
    *,
    callback: Callable[[dict], None] | None = None,
    **_ignored,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for
    Guided Sampling of Diffusion Probabilistic Models", Algorithm 2): the multistep
    second-order solver of the diffusion ODE in its data-prediction form, integrated exactly in
    the linear part over the half log-SNR lambda_t = log(alpha_t / sigma_t), with
    alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t).

    With h_i = lambda_{t_i} - lambda_{t_{i-1}} and the model's x_0 estimate x0_i at t_i:

        first step (first order, the DDIM step):
            x_{t_1} = (sigma_{t_1} / sigma_{t_0}) x_{t_0} - alpha_{t_1} (e^{-h_1} - 1) x0_0
        later steps, r_i = h_{i-1} / h_i:
            D_i = (1 + 1 / (2 r_i)) x0_{i-1} - (1 / (2 r_i)) x0_{i-2}
            x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i
        the last two steps are first order: the step into the last time (t = 0 with the
            evenly spaced times, where h jumps several-fold, so r_i is small and the
            1 / (2 r_i) extrapolation amplifies the estimate's error; on a Gaussian-mixture
            test the second-order version of this step was 1.5-3.5x further from the
            1000-step result at 5-15 steps) and the step from there to sigma = 0
            (lambda = inf), which lands on the last x_0 estimate.

    Same calling convention and network-evaluation count as `sample_ddim` (one evaluation per
    time in `timesteps`); deterministic (no eta).

    Args:
        model_fn, noise, alphas_cumprod, timesteps, callback: as for `sample_ddim`.
    Returns:
        the sample, shape of `noise`.
    """
    times = _times(alphas_cumprod.shape[0], timesteps)
    x = noise.float()
    abar = alphas_cumprod.detach().to("cpu", torch.float64)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    lam = torch.log(alpha) - torch.log(sigma)
    batch = x.shape[0]
    prev_x0, prev_h = None, None

    for i, t in enumerate(times):
        x0 = model_fn(x, torch.full((batch,), t, device=x.device, dtype=torch.long)).float()
        if i + 1 == len(times):
            x = x0  # the step to sigma = 0: first order lands on the x_0 estimate
        else:
            s = times[i + 1]
            h = float(lam[s] - lam[t])
            if prev_x0 is None or i + 2 == len(times):
                d = x0
            else:
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x = float(sigma[s] / sigma[t]) * x - float(alpha[s]) * math.expm1(-h) * d
            prev_x0, prev_h = x0, h
        if exists(callback):
            callback({"i": i, "steps": len(times), "t": t, "x": x, "x_start": x0})
    return x


def sample_heun(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """EDM's deterministic second-order sampler (Karras et al. 2022): Euler steps of the
    probability-flow ODE dx / dsigma = (x - D(x; sigma)) / sigma, each corrected by the slope
    at its end (Heun), except the last step to sigma = 0.

    Args:
        denoise: D(x, sigma) -> x_0 estimate, x = x_0 + sigma n, sigma (B,).
        noise: (B, ...) standard Gaussian; sampling starts at sigmas[0] * noise.
        sigmas: decreasing levels ending in 0 (`models.edm.karras_sigmas`).
        callback: called with {"i", "steps", "sigma", "x", "x_start"} after each step.

    Returns:
        the sample at sigma = 0.
    """
    levels = [float(s) for s in sigmas]
    x = noise * levels[0]
    batch = noise.shape[0]
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        x_start = denoise(x, torch.full((batch,), s, device=x.device))
        slope = (x - x_start) / s
        x_next = x + (s_next - s) * slope
        if s_next > 0:
            slope_next = (x_next - denoise(x_next, torch.full((batch,), s_next, device=x.device))) / s_next
            x_next = x + (s_next - s) * (slope + slope_next) / 2
        x = x_next
        if exists(callback):
            callback({"i": i, "steps": len(levels) - 1, "sigma": s, "x": x, "x_start": x_start})
    return x


def run_sampler(
    sampler: str | None,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: int | Sequence[int],
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Dispatch to `sample_ddim` or `sample_dpmpp_2m` by name (None: see `resolve_sampler`);
    UserError on a bad name, or on eta > 0 with a deterministic sampler."""
    sampler = resolve_sampler(sampler, eta)
    fn = sample_ddim if sampler == "ddim" else sample_dpmpp_2m
    return fn(model_fn, noise, alphas_cumprod, timesteps, eta=eta, generator=generator, callback=callback)
