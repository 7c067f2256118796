"""The EDM formulation (Karras et al. 2022) around the decoder's discrete-time U-Net.

Owns: the noise level of each training time (`schedule_sigmas`) and the map back from a level
to a fractional time (`sigma_to_time`), the preconditioning (`preconditioning`), the training
loss (`edm_loss`: log-normal levels, the loss weight that makes every level count alike) and
the denoiser the samplers call (`edm_denoise`, in the variance-exploding x = x_0 + sigma n).

The network is dalle2-pytorch's U-Net as the other formulations use it: it reads a time, so a
level sigma is given to it as the fractional training time whose cumulative alpha has that
level (sigma^2 = (1 - alpha_bar) / alpha_bar), the way k-diffusion wraps discrete-time models.
Its input is c_in x and its output F is read as D = c_skip x + c_out F. With sigma_data = 1
this is v-prediction; the data's own spread (SIGMA_DATA) is what sets it apart.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# EDM's defaults for images in [-1, 1] (Karras et al. 2022, Table 1)
SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def schedule_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """(T,) the noise level sqrt((1 - a) / a) of each training time, increasing."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


def sigma_to_time(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional training times with these levels: linear in log sigma between the two
    neighbouring times, clamped to the schedule's range."""
    log_sigmas = sigmas.log()
    log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(sigmas) - 1)
    lo = hi - 1
    w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return (lo + w).float()


def preconditioning(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in) at each level, shaped to broadcast over (B, C, H, W)."""
    sigma = sigma.double().view(-1, 1, 1, 1)
    total = sigma ** 2 + sigma_data ** 2
    c_skip = sigma_data ** 2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    return c_skip.float(), c_out.float(), c_in.float()


def edm_denoise(network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                sigma: torch.Tensor, sigmas: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """D(x; sigma), the x_0 estimate at x = x_0 + sigma n.

    Args:
        network: (input, fractional times) -> F, the U-Net with its conditioning bound.
        x: (B, C, H, W) noised images; sigma: (B,) their levels.
        sigmas: `schedule_sigmas` of the decoder's schedule.
    """
    c_skip, c_out, c_in = preconditioning(sigma, sigma_data)
    out = network(c_in * x, sigma_to_time(sigma, sigmas).to(x.device))
    return c_skip * x + c_out * out[:, : x.shape[1]]


def edm_loss(network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_start: torch.Tensor,
             sigmas: torch.Tensor, noise: torch.Tensor | None = None, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """The EDM training loss of one batch: levels log-normal (P_MEAN, P_STD) inside the
    schedule's range, weight 1 / c_out^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the
    x_0 error of `edm_denoise`, i.e. the plain squared error of F against its target."""
    batch = x_start.shape[0]
    log_sigma = P_MEAN + P_STD * torch.randn(batch, device=x_start.device, dtype=torch.float64)
    sigma = log_sigma.exp().clamp(float(sigmas[0]), float(sigmas[-1]))
    noise = torch.randn_like(x_start) if noise is None else noise
    x = x_start + sigma.float().view(-1, 1, 1, 1) * noise
    _, c_out, _ = preconditioning(sigma, sigma_data)
    return torch.mean(((edm_denoise(network, x, sigma, sigmas, sigma_data) - x_start) / c_out) ** 2)


def vp_model_fn(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                alphas_cumprod: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The `model_fn(x_t, t) -> x_0` the DDIM / DPM-Solver samplers call, for an EDM denoiser:
    x_t = sqrt(a) (x_0 + sigma n) = (x_0 + sigma n) / sqrt(1 + sigma^2) at integer time t."""
    sigmas = schedule_sigmas(alphas_cumprod)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = sigmas.to(x_t.device)[t.long()]
        return denoise(x_t * (1 + sigma ** 2).sqrt().float().view(-1, 1, 1, 1), sigma.float())
    return model_fn


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = RHO) -> torch.Tensor:
    """(steps + 1,) EDM's sampling levels: sigma_max to sigma_min spaced evenly in sigma^(1/rho),
    then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    levels = (hi + ramp * (lo - hi)) ** rho
    return torch.cat((levels, levels.new_zeros(1)))


def heun_steps_for(evaluations: int) -> int:
    """Heun steps whose network evaluations (2 per step, 1 for the last) come to about `evaluations`."""
    return max(1, math.ceil((evaluations + 1) / 2))


def sampling_levels(sigmas: torch.Tensor, evaluations: int) -> torch.Tensor:
    """The Heun sampler's levels for about `evaluations` network calls: `karras_sigmas` between
    EDM's sigma_min / sigma_max, kept inside the schedule's own range, then 0."""
    return karras_sigmas(heun_steps_for(evaluations), max(SIGMA_MIN, float(sigmas[0])),
                         min(SIGMA_MAX, float(sigmas[-1])))
