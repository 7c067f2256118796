"""The identity recogniser: the small CNN every identity measure is judged by.

Owns its shape (`RecogniserConfig`, `Recogniser`, saved as a "recogniser" bundle), how it is
trained (`RecogniserTrainConfig`, `LEGACY_RECOGNISER_TRAIN`, the label-preserving augmentations,
the physics ones from `augmentations.py`, and mixup, `train_recogniser` through the shared loop of
`training.py`), how it is applied (`predict`, `extract_features`), and the cache that reuses a
trained one when its training set and settings are unchanged (`cached_recogniser`).
The measures built on it live in `metrics.py`; the written evaluation in `report.py`.

Images everywhere are model-space tensors (N, C, H, W) in [-1, 1] with user class indices (N,),
as `MicroDopplerDataset.tensors()` returns them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle2_md.evaluation.augmentations import physics_augment
from dalle2_md.models.bundle import load_bundle, save_bundle
from dalle2_md.utils import BundleError, UserError, checked_fields, exists, say


CACHE_KEY_VERSION = 1
# `RecogniserTrainConfig` fields of the physics augmentations (augmentations.py), 0 = off
PHYSICS_AUGMENTATIONS = ("doppler_scale", "time_stretch", "doppler_flip", "snr_jitter_db", "respeckle")
SYNTHETIC_STREAM_OFFSET = 0x5F17  # seed offset of the synthetic-batch RNG stream


@dataclass(frozen=True, kw_only=True)
class RecogniserConfig:
    """Shape of the identity recogniser.

    Args:
        num_users: number of classes.
        channels: image channels (1 under a colormap, 3 for RGB).
        image_size: side of the square input images.
        widths: channels of each conv block; each block but the last halves the resolution.
        feature_dim: size of the penultimate feature vector (FID, diversity, memorisation).
            FID needs more images per set than this (see `domain_fid`).
        pool_rows: Doppler rows kept by the final pooling (time is averaged away entirely).
        time_pool: average the input over this many time columns before the first conv (1: off).
            Identity lives mostly along Doppler; 4 keeps 16 columns of a 64 px, 3 s image
            (cadence, ~2 steps/s, is still resolved) and makes training ~4x cheaper on CPU.
    """

    num_users: int
    channels: int = 1
    image_size: int = 64
    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 64
    pool_rows: int = 4
    time_pool: int = 1

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.num_users < 1 or self.feature_dim < 1 or self.pool_rows < 1 or self.time_pool < 1 or not self.widths:
            raise UserError(f"invalid recogniser config {self}")

    @classmethod
    def from_dict(cls, d: dict, *, what: str = "recogniser config") -> "RecogniserConfig":
        """Rebuild from `asdict()` output; unknown keys are refused (`utils.checked_fields`)."""
        return cls(**checked_fields(cls, d, what=what))


def _conv_block(dim_in: int, dim_out: int, downsample: bool) -> nn.Sequential:
    # GroupNorm, not BatchNorm: features then do not depend on the batch they were computed in,
    # and train/eval behave the same
    layers = [
        nn.Conv2d(dim_in, dim_out, 3, padding=1),
        nn.GroupNorm(min(8, dim_out), dim_out),
        nn.SiLU(),
        nn.Conv2d(dim_out, dim_out, 3, padding=1),
        nn.GroupNorm(min(8, dim_out), dim_out),
        nn.SiLU(),
    ]
    if downsample:
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers)


class Recogniser(nn.Module):
    """Tells users apart from one spectrogram.

    The last pooling averages over time but keeps `pool_rows` bands of Doppler: walking speed
    (where the torso line sits) is part of a user's identity, and where in the recording a step
    happens is not.
    """

    def __init__(self, *, config: RecogniserConfig):
        super().__init__()
        self.config = config
        # no parameters either way, so bundles without `time_pool` load unchanged
        self.time_pool = nn.AvgPool2d((1, config.time_pool)) if config.time_pool > 1 else nn.Identity()
        blocks, dim_in, size = [], config.channels, config.image_size
        for i, width in enumerate(config.widths):
            down = i < len(config.widths) - 1 and size >= 2 * config.pool_rows
            blocks.append(_conv_block(dim_in, width, down))
            dim_in, size = width, size // 2 if down else size
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d((config.pool_rows, 1))
        self.to_features = nn.Linear(dim_in * config.pool_rows, config.feature_dim)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(config.feature_dim, config.num_users))
        self.meta: dict = {}

    @property
    def num_features(self) -> int:
        return self.config.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, feature_dim) penultimate features."""
        h = self.pool(self.blocks(self.time_pool(x)))  # (N, C', pool_rows, 1)
        return self.to_features(rearrange(h, "n c r 1 -> n (c r)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, num_users) logits."""
        return self.head(self.features(x))

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise a UserError when images do not have the shape this recogniser was trained on."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.channels or images.shape[-2:] != (c.image_size, c.image_size):
            raise UserError(
                f"{what} have shape {tuple(images.shape)} but the recogniser was trained on "
                f"(N, {c.channels}, {c.image_size}, {c.image_size}) images; load them with the same "
                "image size and colormap, or retrain the recogniser"
            )

    def save(self, path: str | Path, *, label_map: dict | None = None) -> Path:
        """Write a "recogniser" bundle (config, weights, label map, training meta)."""
        return save_bundle(path, kind="recogniser", config=asdict(self.config), state_dict=self.state_dict(), label_map=label_map, meta=self.meta)

    @classmethod
    def load(cls, path: str | Path) -> "Recogniser":
        """Rebuild a recogniser from its bundle alone; `.label_map` holds the stored label map."""
        payload = load_bundle(path, kind="recogniser")
        config = RecogniserConfig.from_dict(payload["config"], what=f"{path}: recogniser config")
        try:
            model = cls(config=config)
            model.load_state_dict(payload["state_dict"])
        except (TypeError, RuntimeError, UserError) as e:
            raise BundleError(f"{path}: recogniser config or weights do not fit this dalle2-md ({e}); retrain it") from None
        model.meta = dict(payload.get("meta") or {})
        model.label_map = payload.get("label_map")
        return model.eval()


@dataclass(frozen=True, kw_only=True)
class RecogniserTrainConfig:
    """How the recogniser is trained (all of it goes into the cache key).

    Args:
        steps: optimiser steps.
        batch_size: images per step, drawn uniformly with replacement (users weighted by how
            many training images they have).
        lr: AdamW learning rate (cosine decay to 10 % over `steps`).
        weight_decay: AdamW weight decay.
        seed: seeds weights, batches and augmentation.
        augment: apply the augmentations below (all leave a walker's identity, i.e. speed, limb
            swing and cadence, unchanged, or change them only within the walker's own
            recording-to-recording range): random circular time shifts of up to `max_shift` of
            the width, Gaussian pixel noise of std `noise_std` (in [-1, 1] units), SpecAugment
            time and frequency masks (Park et al. 2019, "SpecAugment"), mixup (Zhang et al.
            2018, "mixup: Beyond Empirical Risk Minimization"), and the physics augmentations
            of `augmentations.py` (each off by default).
        max_shift: largest time shift, as a fraction of the image width.
        noise_std: pixel noise std.
        time_masks: number of time masks per image: each fills a band of columns, up to
            `time_mask_width` of the width, with the image's mean (a dropped-out moment of the walk).
        time_mask_width: largest time mask, as a fraction of the width.
        freq_masks: number of Doppler masks per image: each fills a band of rows, up to
            `freq_mask_width` of the height, with the image's mean (a hidden velocity band, so no
            single limb's flash can carry the decision).
        freq_mask_width: largest Doppler mask, as a fraction of the height.
        doppler_scale: > 0: every radial velocity scaled about zero Doppler by a factor uniform
            in [1 - s, 1 + s] (walking direction, cos 0-25 deg = 0.91-1, and speed, +-6 %, scale
            them all); 0.05-0.1 spans gait31's walk-to-walk range. 0: off.
        time_stretch: > 0: the time axis stretched about its centre by a factor uniform in
            [1 - s, 1 + s] (cadence, +-2 % between a walker's recordings); 0.02-0.05. 0: off.
        doppler_flip: probability of flipping the Doppler axis about zero Doppler (walking away
            instead of towards the radar: gait31 draws either half the time); 0: off.
        snr_jitter_db: > 0: the noise floor moved by a shift uniform in [-d, d] dB, the walker
            kept (range changes the SNR; gait31 spans about +-12 dB); 3-6 dB. 0: off.
        respeckle: probability of redrawing an image's background speckle from its own
            background pixels, the walker kept (speckle is a fresh draw every recording); 0: off.
        mixup_alpha: > 0: each batch is blended with a shuffled copy of itself, weight
            lam ~ Beta(alpha, alpha), and the loss mixes both labels by lam; 0: off.
        synthetic_weight: loss weight of the synthetic batch (only with `synthetic` data).
        synthetic_batch_size: synthetic images per step (0: `batch_size`).
        eval_every: with validation data, evaluate every this many steps (0: steps // 10) and
            keep the weights with the best validation accuracy.

    The defaults are the strong real-only baseline, picked on the validation split of gait31
    (`benchmarks/kshot.py`, see docs/results.md). `LEGACY_RECOGNISER_TRAIN`: shift and noise
    only, 300 steps.
    """

    steps: int = 2500
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True
    max_shift: float = 0.25
    noise_std: float = 0.03
    time_masks: int = 1
    time_mask_width: float = 0.1
    freq_masks: int = 1
    freq_mask_width: float = 0.06
    doppler_scale: float = 0.0
    time_stretch: float = 0.0
    doppler_flip: float = 0.0
    snr_jitter_db: float = 0.0
    respeckle: float = 0.0
    mixup_alpha: float = 0.2
    synthetic_weight: float = 1.0
    synthetic_batch_size: int = 0
    eval_every: int = 0

    def __post_init__(self):
        if not (0 <= self.doppler_scale < 1 and 0 <= self.time_stretch < 1 and self.snr_jitter_db >= 0
                and 0 <= self.doppler_flip <= 1 and 0 <= self.respeckle <= 1):
            raise UserError("doppler_scale and time_stretch must lie in [0, 1), doppler_flip and respeckle in "
                            f"[0, 1], snr_jitter_db >= 0; got {self}")

    def key_dict(self) -> dict:
        """`asdict` without the physics augmentations that are off: what names a trained
        recogniser (cache keys, kept results), so settings from before they existed keep their names."""
        return {k: v for k, v in asdict(self).items() if not (k in PHYSICS_AUGMENTATIONS and v == 0)}


# the recogniser settings before SpecAugment masks and mixup (for comparisons and old results)
LEGACY_RECOGNISER_TRAIN = RecogniserTrainConfig(steps=300, lr=2e-3, time_masks=0, time_mask_width=0.0, freq_masks=0,
                                               freq_mask_width=0.0, mixup_alpha=0.0)


def _band_masks(n: int, size: int, count: int, max_frac: float, g: torch.Generator) -> torch.Tensor:
    """(n, size) bool: `count` random bands per row, each 0..max_frac * size long."""
    mask = torch.zeros(n, size, dtype=torch.bool)
    limit = int(round(max_frac * size))
    if count <= 0 or limit <= 0:
        return mask
    pos = torch.arange(size)[None, :]
    for _ in range(count):
        width = torch.randint(0, limit + 1, (n, 1), generator=g)
        start = (torch.rand(n, 1, generator=g) * (size - width + 1)).long()
        mask |= (pos >= start) & (pos < start + width)
    return mask


def _augment(x: torch.Tensor, cfg: RecogniserTrainConfig, g: torch.Generator) -> torch.Tensor:
    """Label-preserving augmentations of a (N, C, H, W) batch: the physics ones
    (`augmentations.physics_augment`), then time shift, noise and masks. The RNG is drawn only for
    the augmentations that are switched on, so settings without them reproduce older runs."""
    x = physics_augment(x, cfg, g)
    n, _, h, w = x.shape
    limit = int(round(cfg.max_shift * w))
    if limit > 0:
        shift = torch.randint(-limit, limit + 1, (n,), generator=g)
        cols = (torch.arange(w)[None, :] - shift[:, None]) % w  # (N, W) source column per column
        x = torch.gather(x, 3, cols[:, None, None, :].expand_as(x))
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=g)
    if cfg.time_masks > 0 or cfg.freq_masks > 0:
        # SpecAugment fills with the mean of the (normalised) spectrogram; here each image's own
        # mean per channel, so the fill is neutral for scalar and RGB images alike
        fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        cols = _band_masks(n, w, cfg.time_masks, cfg.time_mask_width, g)  # (N, W)
        rows = _band_masks(n, h, cfg.freq_masks, cfg.freq_mask_width, g)  # (N, H)
        masked = rows[:, None, :, None] | cols[:, None, None, :]  # (N, 1, H, W)
        x = torch.where(masked, fill, x)
    return x


class _MixedBatch(NamedTuple):
    """One augmented batch as the loss sees it: `inputs` are already mixed, the loss weights the
    two label sets by `lam` (`targets_b` is None without mixup)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    targets_b: torch.Tensor | None
    lam: float


def _mix(x: torch.Tensor, y: torch.Tensor, cfg: RecogniserTrainConfig, g: torch.Generator) -> _MixedBatch:
    """Mixup (one lam per batch) when `mixup_alpha` > 0, else the batch unchanged."""
    if cfg.mixup_alpha <= 0:
        return _MixedBatch(x, y, None, 1.0)
    # Beta draw from numpy, seeded from the torch stream so the run stays one seeded sequence
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g))).beta(cfg.mixup_alpha, cfg.mixup_alpha))
    perm = torch.randperm(len(x), generator=g)
    return _MixedBatch(lam * x + (1 - lam) * x[perm], y, y[perm], lam)


def _draw_batch(images: torch.Tensor, user_indices: torch.Tensor, batch_size: int, cfg: RecogniserTrainConfig,
                g: torch.Generator) -> tuple[_MixedBatch, torch.Tensor]:
    """One training batch drawn with replacement, augmented and mixed: (batch, the drawn indices)."""
    idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=g)
    x, y = images[idx], user_indices[idx]
    if cfg.augment:
        x = _augment(x, cfg, g)
    return _mix(x, y, cfg, g), idx


class _BatchStream:
    """The recogniser's batches for `training.train`: per step a real batch from one seeded
    generator (its indices hashed into `real_batches`) and, with synthetic data, a synthetic batch
    from a generator of its own, so the real stream is the same with or without synthetic data."""

    def __init__(self, real, synthetic, cfg: RecogniserTrainConfig):
        self.real, self.synthetic, self.cfg = real, synthetic, cfg
        self.g = torch.Generator().manual_seed(cfg.seed)
        self.g_syn = torch.Generator().manual_seed(cfg.seed + SYNTHETIC_STREAM_OFFSET)
        self.real_batches = hashlib.sha256()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        real, idx = _draw_batch(*self.real, self.cfg.batch_size, self.cfg, self.g)
        self.real_batches.update(idx.numpy().tobytes())
        if self.synthetic is None:
            return {"real": real}
        size = self.cfg.synthetic_batch_size or self.cfg.batch_size
        return {"real": real, "synthetic": _draw_batch(*self.synthetic, size, self.cfg, self.g_syn)[0]}


class _Objective(nn.Module):
    """The training loss around a recogniser: cross-entropy of the real batch plus the weighted
    synthetic one; keeps the real batch's loss of the last step for the history."""

    def __init__(self, recogniser: Recogniser, synthetic_weight: float):
        super().__init__()
        self.recogniser, self.synthetic_weight = recogniser, synthetic_weight
        self.real_loss = None

    def batch_loss(self, batch: _MixedBatch) -> torch.Tensor:
        logits = self.recogniser(batch.inputs)
        if batch.targets_b is None:
            return F.cross_entropy(logits, batch.targets)
        return batch.lam * F.cross_entropy(logits, batch.targets) + (1 - batch.lam) * F.cross_entropy(logits, batch.targets_b)

    def forward(self, real: _MixedBatch, synthetic: _MixedBatch | None = None) -> torch.Tensor:
        loss = self.batch_loss(real)
        self.real_loss = loss.detach()
        if synthetic is None:
            return loss
        return loss + self.synthetic_weight * self.batch_loss(synthetic)


class _KeepBestOnValidation:
    """`on_step` hook: every `every` steps (and at the last) measure validation accuracy and keep
    a copy of the weights when it is strictly better (ties keep the earlier weights)."""

    def __init__(self, val, every: int, steps: int):
        self.val, self.every, self.steps = val, every, steps
        self.best_acc, self.best_state, self.history = -1.0, None, []

    def __call__(self, objective: _Objective, step: int) -> None:

        if step % self.every and step != self.steps:
            return
        acc, _ = accuracy(objective.recogniser, *self.val)
        objective.recogniser.train()
        self.history.append({"step": step, "loss": objective.real_loss.item(), "val_accuracy": acc})
        if acc > self.best_acc:
            self.best_acc, self.best_state = acc, {k: v.clone() for k, v in objective.recogniser.state_dict().items()}


def _loop_config(train: RecogniserTrainConfig):
    """The shared loop's settings for a recogniser: AdamW, cosine decay of the learning rate to 10 %
    over the steps, no gradient clipping, no EMA copy (the raw or best-validation weights are kept)."""
    from dalle2_md.training.loop import TrainConfig

    return TrainConfig(max_steps=train.steps, batch_size=train.batch_size, lr=train.lr, weight_decay=train.weight_decay,
                       lr_schedule="cosine", lr_floor=0.1, max_grad_norm=None, ema_decay=None, seed=train.seed,
                       log_every=max(1, train.steps // 10))


@torch.no_grad()
def predict(recogniser: Recogniser, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Predicted user index per image, (N,) long."""
    recogniser.eval()
    return torch.cat([recogniser(images[i : i + batch_size].float()).argmax(-1) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def extract_features(recogniser: Recogniser, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Penultimate recogniser features, (N, feature_dim) float32."""
    recogniser.eval()
    if len(images) == 0:
        return torch.empty(0, recogniser.num_features)
    return torch.cat([recogniser.features(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)])


def _check_labelled(images: torch.Tensor, user_indices: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, user_indices = torch.as_tensor(images), torch.as_tensor(user_indices).long().reshape(-1)
    if images.ndim != 4 or len(images) != len(user_indices):
        raise UserError(f"{what}: expected images (N, C, H, W) and N user indices, got {tuple(images.shape)} and {tuple(user_indices.shape)}")
    if len(images) == 0:
        raise UserError(f"{what}: no images")
    return images.float(), user_indices


def train_recogniser(
    images: torch.Tensor,
    user_indices: torch.Tensor,
    *,
    num_users: int | None = None,
    config: RecogniserConfig | None = None,
    train: RecogniserTrainConfig = RecogniserTrainConfig(),
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    synthetic: tuple[torch.Tensor, torch.Tensor] | None = None,
    init: Recogniser | None = None,
    progress: bool = False,
) -> Recogniser:
    """Train an identity recogniser on real images, optionally beside synthetic ones.

    Trains through `training.train`, the loop every stage runs (AdamW, cosine decay of the
    learning rate to 10 %, no clipping), fed by `_BatchStream`. Deterministic on CPU for a given
    seed; the global torch RNG is left as it was.

    Each step draws the real batch (indices, augmentation, mixup) from one seeded stream, the
    same with or without synthetic data, so both arms of a comparison see the same real images
    equally often. Synthetic data adds a second batch per step, drawn from its own stream, whose
    loss is weighted by `train.synthetic_weight`.

    Args:
        images: (N, C, H, W) in [-1, 1], real train images.
        user_indices: (N,) user class indices.
        num_users: number of classes (default: max id + 1); ignored when `config` is given.
        config: network shape; default a `RecogniserConfig` matching the images.
        train: optimisation and augmentation settings.
        val: optional (images, user_indices); the weights with the best validation accuracy are kept.
        synthetic: optional (images, user_indices) of generated images, trained on as a separate
            batch of `train.synthetic_batch_size` per step.
        init: a recogniser of the same shape to start from (fine-tuning, e.g. after
            pre-training on synthetic images); default fresh weights from `train.seed`.
        progress: show a tqdm bar.
    Returns:
        The trained recogniser in eval mode; `.meta` holds the training config and history, and
        `real_batches_sha` (a hash of every real batch's indices, equal across arms).
    """
    from dalle2_md.training.checkpoints import kept_global_rng
    from dalle2_md.training.loop import train as train_loop

    images, user_indices, config, val, synthetic = _checked_training_data(images, user_indices, num_users, config, val, synthetic)
    model = _initial_recogniser(config, train.seed, init)
    model.check_images(images, "recogniser training images")
    stream = _BatchStream((images, user_indices), synthetic, train)
    objective = _Objective(model, train.synthetic_weight)
    keep_best = None if val is None else _KeepBestOnValidation(val, train.eval_every or max(1, train.steps // 10), train.steps)
    if train.steps > 0:
        with kept_global_rng():  # the loop seeds the global RNG; the recogniser draws only from its own streams
            train_loop(objective, stream, _loop_config(train), run_dir=None, stage="recogniser", on_step=keep_best,
                       progress=progress)
    if keep_best is not None and keep_best.best_state is not None:
        model.load_state_dict(keep_best.best_state)
    model.meta = {
        "train": asdict(train),
        "num_train_images": len(images),
        "num_synthetic_images": 0 if synthetic is None else len(synthetic[0]),
        "real_batches_sha": stream.real_batches.hexdigest()[:16],
        "final_loss": objective.real_loss.item() if train.steps else None,
        "best_val_accuracy": keep_best.best_acc if keep_best is not None and keep_best.best_state is not None else None,
        "history": [] if keep_best is None else keep_best.history,
    }
    return model.eval()


def _checked_training_data(images, user_indices, num_users, config, val, synthetic):
    """Validated (images, user_indices, config, val, synthetic) of `train_recogniser`; the config
    defaults to one matching the images."""
    images, user_indices = _check_labelled(images, user_indices, "recogniser training data")
    if config is None:
        n_users = int(default_num_users(user_indices, num_users))
        config = RecogniserConfig(num_users=n_users, channels=images.shape[1], image_size=images.shape[-1])
    if int(user_indices.max()) >= config.num_users or int(user_indices.min()) < 0:
        raise UserError(f"user indices span {int(user_indices.min())}..{int(user_indices.max())} but the recogniser has {config.num_users} classes")
    if val is not None:
        val = _check_labelled(*val, "recogniser validation data")
    if synthetic is not None:
        synthetic = _check_labelled(*synthetic, "synthetic recogniser training data")
        if synthetic[0].shape[1:] != images.shape[1:]:
            raise UserError(f"synthetic images have shape {tuple(synthetic[0].shape[1:])} per image but the real ones "
                            f"{tuple(images.shape[1:])}; load both with the same image size and colormap")
        if int(synthetic[1].max()) >= config.num_users or int(synthetic[1].min()) < 0:
            raise UserError(f"synthetic user indices span {int(synthetic[1].min())}..{int(synthetic[1].max())} "
                            f"but the recogniser has {config.num_users} classes")
    return images, user_indices, config, val, synthetic


def _initial_recogniser(config: RecogniserConfig, seed: int, init: Recogniser | None) -> Recogniser:
    """Fresh weights from `seed` (global RNG untouched), then `init`'s weights if given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Recogniser(config=config)
    if init is not None:
        if init.config != config:
            raise UserError(f"the recogniser to start from has shape {init.config}, not {config}")
        model.load_state_dict(init.state_dict())
    return model


def default_num_users(user_indices: torch.Tensor, num_users: int | None) -> int:
    return int(num_users) if exists(num_users) else int(user_indices.max()) + 1


def recogniser_cache_key(
    images: torch.Tensor, user_indices: torch.Tensor, *, config: RecogniserConfig, train: RecogniserTrainConfig, extra: dict | None = None
) -> str:
    """Hash naming a trained recogniser: its training images and labels (their bytes, so any
    change of files, image size or colormap changes it), its config and training settings."""
    h = hashlib.sha256()
    meta = {"v": CACHE_KEY_VERSION, "config": asdict(config), "train": train.key_dict(), "extra": extra,
            "shape": list(images.shape)}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update(images.float().contiguous().numpy().tobytes())
    h.update(user_indices.long().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cached_recogniser(
    cache_path: str | Path,
    images: torch.Tensor,
    user_indices: torch.Tensor,
    *,
    num_users: int | None = None,
    config: RecogniserConfig | None = None,
    train: RecogniserTrainConfig = RecogniserTrainConfig(),
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    synthetic: tuple[torch.Tensor, torch.Tensor] | None = None,
    label_map: dict | None = None,
    extra_key: dict | None = None,
    progress: bool = False,
) -> Recogniser:
    """The recogniser saved at `cache_path` if it was trained on exactly these images with these
    settings, else a newly trained one (saved there, replacing any stale file).

    Args:
        cache_path: bundle path (e.g. <run>/recogniser.pt).
        images, user_indices, num_users, config, train, val, synthetic, progress: as in `train_recogniser`.
        label_map: stored in the bundle (`LabelMap.to_dict()`).
        extra_key: anything else that should invalidate the cache (JSON-able), e.g. the split file.
    Returns:
        The recogniser; `.meta["from_cache"]` says whether it was loaded.
    """
    images, user_indices = _check_labelled(images, user_indices, "recogniser training data")
    if config is None:
        config = RecogniserConfig(num_users=default_num_users(user_indices, num_users), channels=images.shape[1], image_size=images.shape[-1])
    if val is not None:
        extra_key = {"extra": extra_key, "val": recogniser_cache_key(*_check_labelled(*val, "validation data"), config=config, train=train)}
    if synthetic is not None:
        syn_key = recogniser_cache_key(*_check_labelled(*synthetic, "synthetic data"), config=config, train=train)
        extra_key = {"extra": extra_key, "synthetic": syn_key}
    key = recogniser_cache_key(images, user_indices, config=config, train=train, extra=extra_key)
    path = Path(cache_path)
    if path.is_file():
        try:
            model = Recogniser.load(path)
            if model.meta.get("train_key") == key:
                say(f"reusing recogniser {path} (training set key {key})")
                model.meta["from_cache"] = True
                return model
            say(f"recogniser {path} was trained on other data or settings; retraining")
        except BundleError as e:
            say(f"ignoring unreadable recogniser cache {path} ({e}); retraining")
    model = train_recogniser(images, user_indices, config=config, train=train, val=val, synthetic=synthetic, progress=progress)
    model.meta["train_key"] = key
    model.save(path, label_map=label_map)
    model.meta["from_cache"] = False
    return model


def accuracy(recogniser: Recogniser, images: torch.Tensor, user_indices: torch.Tensor, *, batch_size: int = 256) -> tuple[float, dict[int, float]]:
    """Identity accuracy.

    Args:
        recogniser: trained recogniser.
        images: (N, C, H, W) in [-1, 1].
        user_indices: (N,) the user each image shows (for generated images: the user it was
            conditioned on).
    Returns:
        (overall accuracy, {user index: accuracy} for users that have images).
    """
    images, user_indices = _check_labelled(images, user_indices, "accuracy")
    recogniser.check_images(images)
    correct = predict(recogniser, images, batch_size=batch_size) == user_indices
    per_user = {int(u): float(correct[user_indices == u].float().mean()) for u in torch.unique(user_indices)}
    return float(correct.float().mean()), per_user
