"""Filters that decide which generated spectrograms a curated set keeps: a recogniser trained on
the real training images (is this the intended user?) and the users' kinematic ranges (is this a
plausible walk of theirs?), combined by `build_filter`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dalle2_md.evaluation.metrics import KINEMATIC_FIELDS, read_kinematics_batch, to_scalar_images
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig, cached_recogniser, train_recogniser
from dalle2_md.utils import UserError, exists

FILTERS = ("none", "recogniser", "kinematic", "both")
# (images (B, C, H, W) in [-1, 1], user_index) -> ({score name: (B,) values}, (B,) bool passed)
FilterFn = Callable[[torch.Tensor, int], tuple[dict, np.ndarray]]


@torch.no_grad()
def user_probabilities(recogniser: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, num_users) softmax of the recogniser over users for each image, in batches: what both
    the curated sets' filter and the augmentation recipes' filter keep samples by."""
    recogniser.eval()
    return torch.cat([recogniser(images[i:i + batch_size].float()).softmax(-1) for i in range(0, len(images), batch_size)])


@dataclass(frozen=True)
class RecogniserFilter:
    """Keeps a sample when the recogniser gives its intended user probability >= min_confidence."""

    recogniser: torch.nn.Module
    min_confidence: float = 0.5

    def __call__(self, images: torch.Tensor, user_index: int) -> tuple[dict, np.ndarray]:
        probs = user_probabilities(self.recogniser, images)
        confidence = probs[:, user_index].numpy().astype(np.float64)
        predicted = probs.argmax(-1).numpy()
        scores = {"confidence": confidence.tolist(), "predicted_index": predicted.tolist()}
        return scores, confidence >= self.min_confidence


@dataclass(frozen=True)
class KinematicRanges:
    """Per-user [low, high] of each kinematic quantity on real images, in pixel units.

    Args:
        low, high: (num_users, len(KINEMATIC_FIELDS)) arrays, quantities in KINEMATIC_FIELDS order.
        spread: (len(KINEMATIC_FIELDS),) range of each quantity over all users' images: the unit
            of the margin.
    """

    low: np.ndarray
    high: np.ndarray
    spread: np.ndarray

    def bounds(self, user_index: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """The user's range widened at each end by `margin` times the quantity's spread over all
        users. Not the user's own width: from a few dozen images that can be a tenth of a pixel,
        which no fraction of it would widen (benchmarks/bench_curate.py)."""
        pad = margin * self.spread
        return self.low[user_index] - pad, self.high[user_index] + pad

    def to_dict(self) -> dict:
        return {k: {"low": self.low[:, i].tolist(), "high": self.high[:, i].tolist(), "spread": float(self.spread[i])}
                for i, k in enumerate(KINEMATIC_FIELDS)}


def scalar_spectrograms(images: torch.Tensor, colormap: str | None) -> np.ndarray:
    """Model-space images (N, C, H, W) in [-1, 1] -> (N, H, W) scalars in [0, 1] for kinematics."""
    return to_scalar_images(images, None if colormap in (None, "none") else colormap)


def kinematic_ranges(images: torch.Tensor, user_indices: torch.Tensor, *, num_users: int, colormap: str | None = "jet") -> KinematicRanges:
    """Each user's range (min..max over their images) of torso velocity, max envelope and cadence.

    Args:
        images: (N, C, H, W) in [-1, 1], the real images the generator was trained on.
        user_indices: (N,) user indices.
        num_users: number of users; a user without images gets an empty range (nothing passes).
        colormap: colormap of 3-channel images ("none" for grey RGB).
    """
    values = read_kinematics_batch(scalar_spectrograms(images, colormap))
    table = np.stack([values[k] for k in KINEMATIC_FIELDS], axis=1)  # (N, Q)
    ids = np.asarray(torch.as_tensor(user_indices).reshape(-1))
    low = np.full((num_users, table.shape[1]), np.inf)
    high = np.full((num_users, table.shape[1]), -np.inf)
    for u in range(num_users):
        mine = table[ids == u]
        if len(mine):
            with np.errstate(all="ignore"):
                low[u], high[u] = np.nanmin(mine, axis=0), np.nanmax(mine, axis=0)
    with np.errstate(all="ignore"):
        spread = np.nan_to_num(np.nanmax(table, axis=0) - np.nanmin(table, axis=0))
    return KinematicRanges(low=low, high=high, spread=spread)


@dataclass(frozen=True)
class KinematicFilter:
    """Keeps a sample whose torso velocity, max envelope and cadence all lie inside its user's
    real range widened at each end by `margin` times the quantity's spread over all users."""

    ranges: KinematicRanges
    margin: float = 0.1
    colormap: str | None = "jet"

    def __call__(self, images: torch.Tensor, user_index: int) -> tuple[dict, np.ndarray]:
        values = read_kinematics_batch(scalar_spectrograms(images, self.colormap))
        lo, hi = self.ranges.bounds(user_index, self.margin)
        table = np.stack([values[k] for k in KINEMATIC_FIELDS], axis=1)
        inside = (table >= lo) & (table <= hi)  # NaN (no cadence found) is never inside
        scores = {k: values[k].tolist() for k in KINEMATIC_FIELDS}
        scores["kinematic_inside"] = inside.all(axis=1).tolist()
        return scores, inside.all(axis=1)


def combine_filters(filters: Sequence[FilterFn]) -> FilterFn:
    """One filter that passes a sample when every filter does; scores are merged."""

    def combined(images: torch.Tensor, user_index: int) -> tuple[dict, np.ndarray]:
        scores, passed = {}, np.ones(len(images), dtype=bool)
        for f in filters:
            s, p = f(images, user_index)
            scores.update(s)
            passed &= np.asarray(p, dtype=bool)
        return scores, passed

    return combined


def build_filter(
    kind: str,
    train_images: torch.Tensor,
    train_user_indices: torch.Tensor,
    *,
    num_users: int,
    min_confidence: float = 0.5,
    kinematic_margin: float = 0.1,
    colormap: str | None = "jet",
    recogniser_train: RecogniserTrainConfig = RecogniserTrainConfig(),
    recogniser_cache: str | Path | None = None,
    label_map: dict | None = None,
) -> tuple[FilterFn, dict]:
    """The filter of `kind` fitted on the generator's own training images, and what it was fitted
    with (for the manifest).

    Args:
        kind: "none", "recogniser", "kinematic" or "both".
        train_images: (N, C, H, W) in [-1, 1]: the real images the generator was trained on, and
            only those (never validation or test images).
        train_user_indices: (N,) user indices.
        num_users: users the generator knows.
        min_confidence: recogniser probability of the intended user needed to keep a sample.
        kinematic_margin: widening of each user's kinematic range at each end, as a fraction of
            the quantity's spread over all users' training images.
        colormap: colormap of the images (kinematics read scalar spectrograms).
        recogniser_train: how the recogniser is trained.
        recogniser_cache: bundle path to reuse a recogniser trained on exactly these images.
        label_map: stored with the cached recogniser.
    """
    if kind not in FILTERS:
        raise UserError(f"unknown filter {kind!r}: use one of {', '.join(FILTERS)}")
    if not 0.0 <= min_confidence <= 1.0:
        raise UserError(f"--min_confidence must lie in [0, 1], got {min_confidence}")
    if kinematic_margin < 0:
        raise UserError(f"--kinematic_margin must be >= 0, got {kinematic_margin}")
    filters, info = [], {"kind": kind, "num_train_images": int(len(train_images))}
    if kind in ("recogniser", "both"):
        if exists(recogniser_cache):
            recogniser = cached_recogniser(recogniser_cache, train_images, train_user_indices, num_users=num_users,
                                           train=recogniser_train, label_map=label_map)
        else:
            recogniser = train_recogniser(train_images, train_user_indices, num_users=num_users, train=recogniser_train)
        filters.append(RecogniserFilter(recogniser, min_confidence))
        info.update(min_confidence=min_confidence, recogniser_train=asdict(recogniser_train))
    if kind in ("kinematic", "both"):
        ranges = kinematic_ranges(train_images, train_user_indices, num_users=num_users, colormap=colormap)
        filters.append(KinematicFilter(ranges, kinematic_margin, colormap))
        info.update(kinematic_margin=kinematic_margin, kinematic_ranges=ranges.to_dict())
    return combine_filters(filters), info
