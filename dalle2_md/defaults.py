"""How trained generators are sampled: `SamplingConfig`, the one set of sampling settings that
the chain, generation, curation, recipes and generator budgets share, and its defaults. No torch
import, so the command line can show them in --help cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLERS = ("ddim", "dpmpp_2m")
# what a diffusion network predicts (the upsampler: eps or v), and how its loss is weighted over
# noise levels (DecoderConfig); a decoder may also use the EDM formulation (models/edm.py)
PREDICTIONS = ("eps", "v")
DECODER_PREDICTIONS = PREDICTIONS + ("edm",)
LOSS_WEIGHTINGS = ("p2", "min_snr")
# what a newly trained decoder gets from `train-decoder` and `demo`: v-prediction on a zero-terminal-
# SNR schedule with min-SNR-5 weights (chosen by experiments/demo_formulation.py and
# benchmarks/cascade256.py, see docs/results.md). DecoderConfig's own defaults stay eps + P2, what
# bundles written before these fields were trained with and what the K-shot and protocol
# generators of docs/results.md were measured with.
DECODER_FORMULATION = dict(prediction="v", zero_terminal_snr=True, loss_weighting="min_snr")
# the deterministic sampler runs when none is named and eta == 0 (`sampling.resolve_sampler`)
DEFAULT_SAMPLER = "dpmpp_2m"
# network evaluations per stage that newly trained models store as their `sample_timesteps`:
# the fewest with quality no worse than 1000 steps (benchmarks/bench_sampling.py, docs/results.md)
SAMPLE_TIMESTEPS = 25
# optimiser steps of the decoder in a `training.presets.GeneratorBudget` (augment-eval, the
# demo); here so the command line shows it without importing torch
GENERATOR_DECODER_TRAIN_STEPS = 2400


@dataclass(frozen=True)
class SamplingConfig:
    """How a trained generator is sampled.

    Args:
        sampler: "ddim" or "dpmpp_2m"; None: DDIM when eta > 0 (the only stochastic one), else
            `DEFAULT_SAMPLER`.
        decoder_steps, prior_steps: network evaluations per stage; None: each model's own
            `sample_timesteps` (set when it was trained).
        cond_scale: decoder guidance on the image embedding (1 = none). 3: chosen by
            `benchmarks/identity_stages.py` (the decoder under-uses its embedding at 1), see
            docs/results.md.
        prior_cond_scale: prior guidance on the user (1 = none).
        eta: DDIM stochasticity (0 = deterministic; > 0 needs the ddim sampler).
        guidance_interval: (lo, hi) fractions of the schedule where decoder guidance applies;
            None: the decoder's own setting (`DecoderConfig.guidance_interval`).
        sample_start: where sampling from pure noise starts, a fraction of the schedule; None:
            the decoder's own setting (`DecoderConfig.sample_start`).
    """

    sampler: str | None = None
    decoder_steps: int | None = None
    prior_steps: int | None = None
    cond_scale: float = 3.0
    prior_cond_scale: float = 1.0
    eta: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    sample_start: float | None = None

    def decoder_overrides(self) -> dict:
        """The decoder config fields this sampling sets for the duration of a draw
        (`MicroDopplerDecoder.sampling_config_for`); None leaves a field as stored."""
        return {"guidance_interval": self.guidance_interval, "sample_start": self.sample_start}


DEFAULTS = SamplingConfig()
