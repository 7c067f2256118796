"""Model sizes and step budgets: the CPU presets every command and benchmark starts from, and
`GeneratorBudget`, the one dataclass that says how big a two-stage generator is and how long
each stage trains (the demo's `DemoConfig` extends it with the simulated data set's size).

Owns: CPU_CLIP_SIZES, CPU_DECODER_SIZES, CPU_PRIOR_SIZES, CPU_VQGAN_SIZES (size fields of the
configs, without the fields that follow the data), the TINY_* sizes and QUICK_BUDGET of smoke
runs, and GeneratorBudget.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from dalle2_md.defaults import GENERATOR_DECODER_TRAIN_STEPS, SAMPLE_TIMESTEPS, SamplingConfig
from dalle2_md.models.vqgan import layers_for_factor
from dalle2_md.training.loop import TrainConfig

# Model sizes that train in minutes on 2 CPU cores (the demo and the evaluation protocol).
CPU_CLIP_SIZES = dict(dim_latent=32, dim_image=64, dim_text=32, encoder_widths=(16, 32, 64), token_grid=2,
                      text_heads=2, text_dim_head=16, ssl_dim=32, ssl_hidden=64)
# user_conditioning: chosen by `benchmarks/augment_ablation.py`, see docs/results.md
CPU_DECODER_SIZES = dict(dim=16, dim_mults=(1, 2, 4), num_resnet_blocks=1, attn_heads=2, attn_dim_head=16,
                         timesteps=1000, sample_timesteps=SAMPLE_TIMESTEPS, num_image_tokens=2,
                         user_conditioning=True)
CPU_PRIOR_SIZES = dict(depth=2, heads=2, dim_head=16, timesteps=1000, sample_timesteps=SAMPLE_TIMESTEPS)
# A VQGAN that trains at 128 px on 2 CPU cores in minutes: every stage 16 channels wide, and a
# codebook the decoder skips (quantize=False): trained this briefly, a codebook erases the limb
# arcs (benchmarks/bench_vqgan.py, see docs/results.md). `cpu_vqgan_sizes(factor)` adds the layers.
CPU_VQGAN_SIZES = dict(dim=16, num_resnet_blocks=1, resnet_groups=8, codebook_size=256, codebook_dim=16, quantize=False)

# Smoke-run sizes (the quick demo, the quality benchmark's smoke profile): prove that the
# pipeline runs in seconds, not that it learns.
TINY_CLIP_SIZES = dict(dim_latent=16, dim_image=32, dim_text=16, encoder_widths=(8, 16), token_grid=2,
                       text_heads=2, text_dim_head=8, ssl_dim=16, ssl_hidden=32)
TINY_DECODER_SIZES = dict(dim=16, dim_mults=(1, 2), num_resnet_blocks=1, attn_heads=2, attn_dim_head=8,
                          timesteps=100, sample_timesteps=8, num_image_tokens=2)
TINY_PRIOR_SIZES = dict(depth=1, heads=2, dim_head=8, timesteps=100, sample_timesteps=8)


@dataclass(frozen=True, kw_only=True)
class GeneratorBudget:
    """How big a generator is and how long each part trains (the same for both kinds, so the
    baseline's decoder gets exactly the two-stage decoder's shape and step budget).

    Args:
        clip_train_steps, decoder_train_steps, prior_train_steps: optimiser steps per stage (the
            single-stage baseline trains only its decoder, for `decoder_train_steps`). 2400
            decoder steps: chosen by `benchmarks/identity_stages.py` and
            `benchmarks/augment_ablation.py`, see docs/results.md.
        batch_size: batch of the embedding model and the prior.
        decoder_batch_size: batch of the decoders (their steps cost the most).
        lr: learning rate of every stage but the VQGAN (and the decoders when `decoder_lr` is set).
        decoder_lr: learning rate of the decoders (two-stage and single-stage); None: `lr`. A
            transformer backbone (`decoder["backbone"] = "dit"`) wants a smaller step than the U-Net.
        decoder_lr_schedule: None or "constant": the decoders keep their learning rate after
            warmup; "cosine": it decays to 0 at the last step (a diffusion model's samples are
            judged at its final weights, which a constant step keeps moving).
        vqgan_train_steps: > 0: train a VQGAN for this many steps (batch `decoder_batch_size`, lr
            `vqgan_lr`) and let the decoder diffuse over its latent; 0: a pixel decoder.
        vqgan: `VQGanConfig` size fields (default `cpu_vqgan_sizes()`, f = 4).
        decoder_seconds: a wall-clock budget for the two-stage image model, the VQGAN (when
            trained) and the decoder together: the decoder stops at `decoder_train_steps` or when the
            time is up, whichever comes first (equal-compute comparisons of pixel and latent
            decoders, whose steps cost differently).
        warmup_steps: linear warmup of every stage (capped at a tenth of its steps).
        clip, decoder, prior: size fields of ClipConfig / DecoderConfig / PriorConfig (without
            num_users, image size, channels and embedding width, which follow the data).
        sampling: how the generator is sampled (`SamplingConfig`; both stages at
            `SAMPLE_TIMESTEPS` network evaluations).
        decoder_compile: torch.compile the decoders' training steps (`TrainConfig.compile`): worth
            it where a decoder trains long enough to repay the first step's compilation.
    """

    clip_train_steps: int = 300
    decoder_train_steps: int = GENERATOR_DECODER_TRAIN_STEPS
    prior_train_steps: int = 1000
    batch_size: int = 32
    decoder_batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 50
    decoder_lr: float | None = None
    decoder_lr_schedule: str | None = None
    vqgan_train_steps: int = 0
    vqgan_lr: float = 1e-3
    vqgan: dict = field(default_factory=dict)
    decoder_seconds: float | None = None
    clip: dict = field(default_factory=lambda: dict(CPU_CLIP_SIZES))
    decoder: dict = field(default_factory=lambda: dict(CPU_DECODER_SIZES))
    prior: dict = field(default_factory=lambda: dict(CPU_PRIOR_SIZES))
    sampling: SamplingConfig = SamplingConfig(decoder_steps=SAMPLE_TIMESTEPS, prior_steps=SAMPLE_TIMESTEPS)
    decoder_compile: bool = False

    def schedule(self, steps: int, batch_size: int, seed: int) -> TrainConfig:
        """The `TrainConfig` of one stage."""
        return TrainConfig(max_steps=steps, batch_size=batch_size, lr=self.lr, seed=seed,
                           warmup_steps=min(self.warmup_steps, steps // 10), log_every=max(1, steps // 10))

    def decoder_schedule(self, seed: int) -> TrainConfig:
        """The decoders' `TrainConfig`: `decoder_train_steps` at `decoder_batch_size`, at `decoder_lr`
        and `decoder_lr_schedule` when they are set, compiled with `decoder_compile`."""
        config = self.schedule(self.decoder_train_steps, self.decoder_batch_size, seed)
        if self.decoder_lr is not None:
            config = replace(config, lr=self.decoder_lr)
        if self.decoder_compile:
            config = replace(config, compile=True)
        return config if self.decoder_lr_schedule is None else replace(config, lr_schedule=self.decoder_lr_schedule)

    def budget_fields(self) -> dict:
        """This budget's own fields (without a subclass's extra ones), e.g. to build a
        `DemoConfig` from a budget."""
        return {name: getattr(self, name) for name in GeneratorBudget.__dataclass_fields__}

    def to_dict(self) -> dict:
        """Plain JSON types (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


# the quick demo's budget; the quality benchmark's smoke profile varies it
QUICK_BUDGET = GeneratorBudget(
    clip_train_steps=20, decoder_train_steps=30, prior_train_steps=30, batch_size=16, decoder_batch_size=16,
    clip=dict(TINY_CLIP_SIZES), decoder=dict(TINY_DECODER_SIZES), prior=dict(TINY_PRIOR_SIZES), sampling=SamplingConfig(decoder_steps=8, prior_steps=8),
)


def cpu_vqgan_sizes(factor: int = 4, **overrides) -> dict:
    """`VQGanConfig` fields of the CPU-sized VQGAN at a downsampling factor (stages all as wide)."""
    layers = layers_for_factor(factor)
    return {**CPU_VQGAN_SIZES, "layers": layers, "layer_mults": (1,) * layers, **overrides}
