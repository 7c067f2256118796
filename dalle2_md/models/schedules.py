"""The decoder's diffusion formulation beyond dalle2-pytorch's constructor arguments: what the
network predicts, the noise schedule's end point, the loss weighting over noise levels, and where
sampling from pure noise starts. Owns the checks of those `DecoderConfig` fields and their
application to the library's `NoiseScheduler` (through `compat`)."""

from __future__ import annotations

import torch

from dalle2_md.defaults import DECODER_FORMULATION, DECODER_PREDICTIONS, LOSS_WEIGHTINGS
from dalle2_md.models.compat import (min_snr_loss_weights, p2_loss_weights, rescale_to_zero_terminal_snr,
                                     set_loss_weight, x_start_from_noise, x_start_from_v)
from dalle2_md.sampling import ddim_timesteps
from dalle2_md.utils import UserError

# where sampling from pure noise starts (fraction of the schedule); see DecoderConfig.sample_start
SAMPLE_START = 0.96


def formulation_fields(prediction: str | None = None, zero_terminal_snr: bool | None = None,
                       loss_weighting: str | None = None) -> dict:
    """The formulation fields of a new decoder from what the user named: `DECODER_FORMULATION`
    when nothing; a named prediction brings its own schedule end and weighting unless those are
    named too (v: zero terminal SNR and min-SNR, like the default; eps and edm: neither, so
    `--prediction eps` alone is the earlier eps + P2 decoder)."""
    prediction = prediction or DECODER_FORMULATION["prediction"]
    with_v = prediction == "v"
    return dict(prediction=prediction,
                zero_terminal_snr=with_v if zero_terminal_snr is None else zero_terminal_snr,
                loss_weighting=loss_weighting or ("min_snr" if with_v else "p2"))


def check_formulation(config) -> None:
    """UserError naming the flag for a bad prediction / schedule / weighting / sample_start field."""
    if not 0.0 < config.sample_start <= 1.0:
        raise UserError(f"sample_start must be in (0, 1] (a fraction of the schedule), got {config.sample_start}.")
    if config.prediction not in DECODER_PREDICTIONS:
        raise UserError(f"--prediction must be one of {', '.join(DECODER_PREDICTIONS)}, got {config.prediction!r}.")
    if config.prediction == "edm" and (config.zero_terminal_snr or config.learned_variance
                                       or config.loss_weighting != "p2" or config.loss_type != "l2"):
        raise UserError("--prediction edm brings its own noise levels and loss weights (models/edm.py): it does not "
                        "take --zero_terminal_snr, learned variance, --loss_weighting min_snr or a --loss_type "
                        "other than l2.")
    if config.loss_weighting not in LOSS_WEIGHTINGS:
        raise UserError(f"--loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {config.loss_weighting!r}.")
    if config.min_snr_gamma <= 0:
        raise UserError(f"--min_snr_gamma must be > 0, got {config.min_snr_gamma}.")
    if config.zero_terminal_snr and config.prediction != "v":
        raise UserError("--zero_terminal_snr needs --prediction v: at zero SNR the last step's noise prediction "
                        "says nothing about the image (Lin et al. 2024).")
    if config.zero_terminal_snr and config.learned_variance:
        raise UserError("--zero_terminal_snr does not work with learned_variance (its loss term reads a noise "
                        "prediction, infinite at the last step).")


def apply_formulation(scheduler, config) -> None:
    """Rescale `scheduler` (the decoder's `NoiseScheduler`) to zero terminal SNR and set its loss
    weights as `config` asks; with the defaults (no rescale, P2) it is left as the library built it."""
    if config.zero_terminal_snr:
        rescale_to_zero_terminal_snr(scheduler)
        if config.loss_weighting == "p2" and config.p2_loss_weight_gamma > 0:
            set_loss_weight(scheduler, p2_loss_weights(scheduler, config.p2_loss_weight_gamma))
    if config.loss_weighting == "min_snr":
        set_loss_weight(scheduler, min_snr_loss_weights(scheduler, config.min_snr_gamma,
                                                        predict_v=config.prediction == "v"))


def x_start_estimate(scheduler, config, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The x_0 estimate from the network's prediction (noise or v) at x_t, t."""
    return (x_start_from_v if config.prediction == "v" else x_start_from_noise)(scheduler, x_t, t, pred)


def sampling_times(config, steps: int) -> list[int]:
    """The descending DDIM times of `steps` evaluations from pure noise: from
    round(sample_start * (T - 1)), or from T - 1 with zero terminal SNR, where x_T is pure noise."""
    start = 1.0 if config.zero_terminal_snr else config.sample_start
    return ddim_timesteps(config.timesteps, steps, start=round(start * (config.timesteps - 1)))
