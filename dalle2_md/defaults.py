"""Sampling defaults of every command and API that samples (set from
`benchmarks/bench_sampling.py`), and the generator budget's decoder steps, in one place: no torch
import, so the command line can show them in --help cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLERS = ("ddim", "dpmpp_2m")


@dataclass(frozen=True)
class SamplingDefaults:
    """Defaults of every command and API that samples (the one place to change them).

    Args:
        sampler: "ddim" or "dpmpp_2m" (chosen by `benchmarks/bench_sampling.py`).
        sample_timesteps: network evaluations per stage that newly trained models store as
            their `sample_timesteps` (the train commands' and CPU sizes' default; chosen by
            `benchmarks/bench_sampling.py`: the fewest with quality no worse than 1000 steps).
        decoder_steps, prior_steps: network evaluations per stage when a command is given no
            count; None = each model's own `sample_timesteps` (set when it was trained).
        eta: DDIM stochasticity (0 = deterministic; > 0 needs the ddim sampler).
        cond_scale: decoder guidance on the image embedding (1 = none). 3, measured with
            `benchmarks/identity_stages.py`: at guidance 1 the decoder under-uses its embedding
            (true test embeddings decoded to the right user 0.57 of the time on the simulator,
            0.38 on the held-out digits set); at 3: 0.77 and 0.74, and A_gen 0.75 -> 0.95 and
            0.39 -> 0.81. Past 3 the simulator gains nothing (0.78 at 4).
        prior_cond_scale: prior guidance on the user (1 = none).
    """

    sampler: str = "dpmpp_2m"
    sample_timesteps: int = 25
    decoder_steps: int | None = None
    prior_steps: int | None = None
    eta: float = 0.0
    cond_scale: float = 3.0
    prior_cond_scale: float = 1.0


DEFAULTS = SamplingDefaults()

# optimiser steps of the decoder in a `presets.GeneratorBudget` (augment-eval, the demo); here so
# the command line shows it without importing torch. Why 2400: see GeneratorBudget.
GENERATOR_DECODER_STEPS = 2400
