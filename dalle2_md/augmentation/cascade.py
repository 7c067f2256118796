"""Augmentation at the data's own size from a generator that works at a smaller one: the K-shot
generator trains on the K real images shrunk (by area) to its base size, and its samples are
enlarged to the data's size, by a diffusion upsampler trained on the same K real images (random
crops) or by bicubic, before the recognisers, which train and test at the data's size, see them.
DALL-E 2's cascade inside the augmentation harness; nothing but the K real images trains either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dalle2_md.models.upsampler import MicroDopplerUpsampler, UpsamplerConfig, enlarge
from dalle2_md.sampling import keyed_generators
from dalle2_md.training.loop import TrainConfig
from dalle2_md.utils import UserError, exists

# keys the K-shot upsampler's sampling noise apart from the recipes' streams
CASCADE_STREAM = 11


def upsampler_schedule(steps: int = 900, batch_size: int = 16) -> TrainConfig:
    """The upsampler's training: lr 1e-3, warm-up over min(50, steps / 10). 900 steps of 16: what
    beat bicubic at 64 -> 256 px (experiments/cascade_vs_bicubic.py, docs/results.md)."""
    return TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-3, warmup_steps=min(50, steps // 10),
                       log_every=100)


@dataclass(frozen=True)
class Enlargement:
    """How a base-size generator's samples reach the data's size.

    Args:
        base_size: the side the generator trains and samples at (smaller than the data's).
        upsampler: the upsampler's config (its lowres_size is base_size, its output_size the
            data's); None: bicubic enlargement, the simple alternative.
        upsampler_train: its training schedule (seeded per repetition).
    """

    base_size: int
    upsampler: UpsamplerConfig | None = None
    upsampler_train: TrainConfig = field(default_factory=upsampler_schedule)

    def check(self, image_size: int, channels: int) -> None:
        if not 1 <= self.base_size < image_size:
            raise UserError(f"the generator's base size {self.base_size} must be below the data's {image_size} px.")
        u = self.upsampler
        if exists(u) and (u.lowres_size, u.output_size, u.channels) != (self.base_size, image_size, channels):
            raise UserError(f"the upsampler maps {u.channels}-channel {u.lowres_size} -> {u.output_size} px, but the "
                            f"harness needs {channels}-channel {self.base_size} -> {image_size} px.")

    def key_dict(self) -> dict:
        """What the results depend on (for the harness's seed-result keys)."""
        return {"base_size": self.base_size, "upsampler": None if self.upsampler is None else self.upsampler.to_dict(),
                "upsampler_train": asdict(self.upsampler_train) if exists(self.upsampler) else None}

    @property
    def name(self) -> str:
        return "diffusion upsampler" if exists(self.upsampler) else "bicubic"


def fit_kshot_upsampler(shot_images: torch.Tensor, enlargement: Enlargement, *, seed: int,
                        run_dir: Path) -> MicroDopplerUpsampler | None:
    """The upsampler of one repetition, trained on that repetition's K real images at the data's
    size only; None for bicubic."""
    from dalle2_md.training.fit import fit_upsampler

    if enlargement.upsampler is None:
        return None
    schedule = replace(enlargement.upsampler_train, seed=seed)
    upsampler, _ = fit_upsampler(shot_images, enlargement.upsampler, schedule, Path(run_dir))
    return upsampler


def enlarge_samples(images: torch.Tensor, size: int, upsampler: MicroDopplerUpsampler | None, *,
                    seed: int) -> torch.Tensor:
    """Base-size samples (N, C, b, b) in [-1, 1] -> (N, C, size, size) in [-1, 1]: through the
    upsampler (row i's noise keyed by (seed, i)) or by bicubic."""
    if upsampler is None:
        return enlarge(images.float(), size)
    generators = keyed_generators(seed, CASCADE_STREAM, range(len(images)))
    return upsampler.sample((images.float() + 1) / 2, generator=generators) * 2 - 1
