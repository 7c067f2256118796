"""Measures of generated spectrograms against real ones (the evaluation protocol: docs/guide/evaluation.md).

Owns identity accuracy, background level and its defect rate, domain FID and KID in recogniser-feature space,
the classification accuracy score (CAS: a recogniser trained on generated images only), within-user diversity,
per-user precision and recall (coverage of the real images), memorisation (nearest-training-neighbour distances) and kinematic fidelity (via
`kinematics.read_kinematics`, with `to_scalar_images` to get scalar images back from model
space). Every measure takes a trained `recogniser.Recogniser` or plain tensors and returns
numbers; writing them down is `report.py`'s.

Images everywhere are model-space tensors (N, C, H, W) in [-1, 1] with user class indices (N,).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from dalle2_md.evaluation.recogniser import (
    Recogniser,
    RecogniserConfig,
    RecogniserTrainConfig,
    _check_labelled,
    accuracy,
    train_recogniser,
)
from dalle2_md.utils import UserError

KINEMATIC_FIELDS = {
    # our name -> Kinematics attribute (pixel units: comparable between sets with the same axes)
    "torso": "torso_px",
    "max_envelope": "max_envelope_px",
    "cadence": "cadence_steps_per_col",
}


class _FeatureExtractor(nn.Module):
    """Adapter for torchmetrics' FID: float images in, (N, d) features out.

    `num_features` spares torchmetrics its probe forward pass (which would feed a random
    299x299 RGB image that our recogniser cannot take)."""

    def __init__(self, recogniser: Recogniser):
        super().__init__()
        self.recogniser = recogniser
        self.num_features = recogniser.num_features

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.recogniser.eval()
        return self.recogniser.features(x.float())


def background_levels(images: torch.Tensor) -> torch.Tensor:
    """(N,) mean of the darker half of each image's pixels, in [0, 1]: its background level
    (the radar's noise floor, or a digit's blank paper), which a decoder can draw too light."""
    values = ((images + 1) / 2).flatten(1).sort(1).values
    return values[:, : values.shape[1] // 2].mean(1)


def background_range(images: torch.Tensor, quantiles: tuple[float, float] = (0.01, 0.99)) -> tuple[float, float]:
    """(low, high): the `quantiles` of the images' background levels (`background_levels`), the
    range real images' noise floors span; real train images give the reference."""
    lo, hi = quantiles
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    if len(images) == 0:
        raise UserError("the background range needs at least one reference image")
    levels = background_levels(images.float()).double()
    return float(torch.quantile(levels, lo)), float(torch.quantile(levels, hi))


def background_defects(images: torch.Tensor, bounds: tuple[float, float]) -> dict:
    """Share of images whose background level lies outside `bounds` (`background_range`): a
    washed-out (too light) or crushed (too dark) noise floor. Real images of the reference's own
    distribution score about 1 - (high - low quantile), 2 % for the 1-99 % range.

    Returns:
        {"rate", "too_light", "too_dark" (shares of the images), "num_images"}.
    """
    if len(images) == 0:
        raise UserError("the background-defect rate needs at least one image")
    levels = background_levels(images.float()).double()
    too_dark, too_light = float((levels < bounds[0]).double().mean()), float((levels > bounds[1]).double().mean())
    return {"rate": too_dark + too_light, "too_light": too_light, "too_dark": too_dark, "num_images": len(images)}


def min_fid_samples(recogniser: Recogniser) -> int:
    """Fewest images per set for which the feature covariance can be full rank: feature_dim + 1."""
    return recogniser.num_features + 1


def domain_fid(recogniser: Recogniser, real_images: torch.Tensor, fake_images: torch.Tensor, *, batch_size: int = 256) -> float:
    """Fréchet distance between recogniser features of two image sets (torchmetrics' FID with
    the recogniser as feature extractor; nothing is downloaded).

    The covariance of d-dimensional features from N images has rank at most N - 1, so each set
    needs at least d + 1 images (`min_fid_samples`); with fewer the estimate is dominated by
    the missing directions, so it is refused. Like every FID it is biased upwards at small N:
    compare values computed from similar set sizes.

    Args:
        recogniser: trained recogniser (its `feature_dim` is d).
        real_images: (N, C, H, W) in [-1, 1].
        fake_images: (M, C, H, W) in [-1, 1].
    Returns:
        FID (>= 0 up to rounding; 0 for identical sets).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    need = min_fid_samples(recogniser)
    for what, imgs in (("real", real_images), ("generated", fake_images)):
        recogniser.check_images(imgs, f"{what} images")
        if len(imgs) < need:
            raise UserError(
                f"FID needs at least {need} {what} images (recogniser feature_dim {recogniser.num_features} + 1) "
                f"for a full-rank feature covariance, got {len(imgs)}; use more images or a recogniser "
                f"with feature_dim < {len(imgs)}"
            )
    # normalize=True: with a custom extractor it only means "inputs are float"; they go in as is
    metric = FrechetInceptionDistance(feature=_FeatureExtractor(recogniser), normalize=True)
    # no set_dtype(float64): it would cast the recogniser too; the metric's sums are float64 already
    with torch.no_grad():
        for real, imgs in ((True, real_images), (False, fake_images)):
            for i in range(0, len(imgs), batch_size):
                metric.update(imgs[i : i + batch_size].float(), real=real)
        return max(0.0, float(metric.compute()))


KID_MAX_SUBSET = 1000  # Binkowski et al.'s subset size


def kid_subset_size(num_smaller: int) -> int:
    """Default KID subset size for sets whose smaller one has `num_smaller` samples: half of it
    (so subsets differ and their spread means something), at most 1000 and at least 2."""
    return max(2, min(KID_MAX_SUBSET, num_smaller // 2))


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of two (m, d) samples under the cubic kernel k(a, b) = (a.b / d + 1)^3."""
    m, n, d = len(x), len(y), x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))  # i != j only: this removes the bias
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kernel_distance(x: torch.Tensor, y: torch.Tensor, *, num_subsets: int = 100, subset_size: int | None = None,
                    seed: int = 0) -> dict:
    """Kernel Inception Distance in any feature space (Binkowski et al. 2018, "Demystifying MMD
    GANs"): the unbiased MMD^2 estimate with the cubic polynomial kernel (x.y / d + 1)^3, averaged
    over `num_subsets` seeded subsets of `subset_size` from each set (without replacement within a
    subset). Unbiased, so it does not fall as sets grow as FID does, and it can be slightly
    negative for two samples of one distribution.

    Args:
        x, y: (N, d) and (M, d) features (e.g. `extract_features` of real and generated images).
        num_subsets: subsets averaged.
        subset_size: samples per subset from each set (default `kid_subset_size(min(N, M))`;
            at most min(N, M)).
        seed: seeds the subset draws.
    Returns:
        {"mean", "std" (over subsets), "subset_size", "num_subsets"}.
    """
    x, y = torch.as_tensor(x).double().flatten(1), torch.as_tensor(y).double().flatten(1)
    n = min(len(x), len(y))
    if n < 2 or x.shape[1] != y.shape[1]:
        raise UserError(f"KID needs at least 2 samples per set of the same dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    if num_subsets < 1:
        raise UserError(f"KID needs at least one subset, got num_subsets={num_subsets}")
    m = min(n, subset_size or kid_subset_size(n))
    if m < 2:
        raise UserError(f"KID subsets need at least 2 samples, got subset_size={subset_size}")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([_mmd2_unbiased(x[torch.randperm(len(x), generator=g)[:m]], y[torch.randperm(len(y), generator=g)[:m]])
                           for _ in range(num_subsets)], dtype=torch.float64)
    std = float(values.std()) if num_subsets > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "subset_size": m, "num_subsets": num_subsets}


def diversity(features: torch.Tensor, user_indices: torch.Tensor) -> dict:
    """Within-user mean pairwise Euclidean feature distance.

    Args:
        features: (N, d) features (recogniser features or flattened pixels).
        user_indices: (N,) user indices.
    Returns:
        {"per_user": {user: mean distance}, "mean": mean over users} (users with < 2 samples
        are left out; "mean" is NaN if none has 2).
    """
    features, user_indices = torch.as_tensor(features).double(), torch.as_tensor(user_indices).long().reshape(-1)
    per_user = {}
    for u in torch.unique(user_indices):
        f = features[user_indices == u]
        if len(f) >= 2:
            per_user[int(u)] = float(torch.pdist(f).mean())
    mean = float(np.mean(list(per_user.values()))) if per_user else float("nan")
    return {"per_user": per_user, "mean": mean}


def precision_recall(real_features: torch.Tensor, real_indices: torch.Tensor, fake_features: torch.Tensor,
                     fake_indices: torch.Tensor, *, k: int = 3) -> dict:
    """Per-user precision and recall of a generated set (Kynkaanniemi et al. 2019, "Improved
    Precision and Recall Metric for Assessing Generative Models"): precision is the share of a
    user's generated features inside the real manifold (the union of balls reaching each real
    feature's k-th nearest real neighbour), recall the share of real features inside the
    generated manifold. A set of near-copies of a few real images has high precision and low
    recall; a set that has collapsed to one image per user has recall near 0.

    Returns:
        {"precision", "recall"} (means over the users that have more than k real and k generated
        features) and {"per_user": {user: (precision, recall)}}.
    """
    real_features, fake_features = real_features.double().flatten(1), fake_features.double().flatten(1)
    real_indices, fake_indices = real_indices.long().reshape(-1), fake_indices.long().reshape(-1)
    per_user = {}
    for u in torch.unique(real_indices).tolist():
        real, fake = real_features[real_indices == u], fake_features[fake_indices == u]
        if len(real) <= k or len(fake) <= k:
            continue
        real_radius = torch.cdist(real, real).kthvalue(k + 1, dim=1).values  # k + 1: the point itself is 0
        fake_radius = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values
        cross = torch.cdist(fake, real)  # (fake, real)
        precision = (cross <= real_radius[None]).any(1).double().mean().item()
        recall = (cross.T <= fake_radius[None]).any(1).double().mean().item()
        per_user[int(u)] = (precision, recall)
    if not per_user:
        raise UserError(f"precision / recall need more than k = {k} real and generated features for some user")
    return {"precision": float(np.mean([p for p, _ in per_user.values()])),
            "recall": float(np.mean([r for _, r in per_user.values()])), "per_user": per_user}


def _first_per_user(user_indices: torch.Tensor, counts) -> torch.Tensor:
    """Row indices, in their order, of the first counts[u] rows of each user u (all if fewer)."""
    keep = torch.zeros(len(user_indices), dtype=torch.bool)
    for u, c in enumerate(counts):
        keep[torch.nonzero(user_indices == u).flatten()[: int(c)]] = True
    return torch.nonzero(keep).flatten()


def classification_accuracy_score(
    generated: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    num_users: int,
    config: RecogniserConfig | None = None,
    train_config: RecogniserTrainConfig = RecogniserTrainConfig(),
    seed: int | None = None,
    per_user_counts=None,
) -> dict:
    """Classification Accuracy Score (Ravuri & Vinyals 2019, "Classification Accuracy Score for
    Conditional Generative Models"): the accuracy on real test images of a recogniser trained on
    generated images only, labelled with the user each was drawn for. Samples that look right but
    miss a user's variety score low here while A_gen stays high.

    Args:
        generated: (images (N, C, H, W) in [-1, 1], user indices).
        test: real (images, user indices) it is tested on.
        num_users: recogniser classes.
        config: recogniser shape (default: one matching the images); give the real-only
            reference's so that CAS compares with its accuracy.
        train_config: training settings, the reference's likewise.
        seed: training seed (default `train_config.seed`).
        per_user_counts: train on at most the first counts[u] generated images of user u (the
            real train split's counts); default all.
    Returns:
        {"CAS", "per_user" (test accuracy per user), "num_train_images", "per_user_train" (images
        trained on per user), "short_users" (users with fewer than asked), "seed", "steps"}.
    """
    images, ids = _check_labelled(*generated, "CAS generated images")
    wanted = None
    if per_user_counts is not None:
        wanted = [int(c) for c in per_user_counts]
        rows = _first_per_user(ids, wanted)
        images, ids = images[rows], ids[rows]
        if len(rows) == 0:
            raise UserError("CAS: no generated image of a user the real train split has")
    if config is None:
        config = RecogniserConfig(num_users=num_users, channels=images.shape[1], image_size=images.shape[-1])
    if config.num_users != num_users:
        raise UserError(f"CAS: the recogniser config has {config.num_users} classes, not num_users={num_users}")
    train = replace(train_config, seed=train_config.seed if seed is None else int(seed))
    recogniser = train_recogniser(images, ids, config=config, train=train)
    cas, per_user = accuracy(recogniser, *test)
    counts = torch.bincount(ids, minlength=num_users).tolist()
    short = [] if wanted is None else [u for u, c in enumerate(wanted) if counts[u] < c]
    return {"CAS": cas, "per_user": per_user, "num_train_images": len(ids),
            "per_user_train": {u: c for u, c in enumerate(counts) if c}, "short_users": short,
            "seed": train.seed, "steps": train.steps}


def _nearest_distances(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    q, r = queries.double().flatten(1), reference.double().flatten(1)
    return torch.cat([torch.cdist(q[i : i + chunk], r).min(1).values for i in range(0, len(q), chunk)])


def memorisation(gen_features: torch.Tensor, train_features: torch.Tensor, test_features: torch.Tensor, *, quantile: float = 0.05) -> dict:
    """How close generated samples sit to the training set, calibrated by real held-out images.

    A real test image is a fresh sample of the same users, so its distance to the nearest
    training image says how close "new but similar" gets. Threshold = the `quantile` of the
    real-test-to-train nearest distances. A generated sample whose nearest training distance is
    <= that threshold is closer to a training image than 95 % (for quantile 0.05) of real fresh
    images are: counted as a likely copy. A healthy generator has `copy_fraction` near
    `quantile` (real test images themselves would score about that); near 1 means it copies.

    Args:
        gen_features: (M, ...) generated samples (features or pixels; flattened).
        train_features: (N, ...) training images, same space.
        test_features: (K, ...) real held-out images, same space.
        quantile: calibration quantile in (0, 1).
    Returns:
        dict: copy_fraction, threshold, quantile, gen_nn (mean/median/min), test_nn
        (mean/median), nn_ratio = median gen_nn / median test_nn (< 1: closer to the training
        set than real fresh data), gen_nn_distances (list).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if len(gen_features) == 0 or len(train_features) == 0 or len(test_features) == 0:
        raise UserError("memorisation needs generated, training and test samples (one of them is empty)")
    gen_nn = _nearest_distances(torch.as_tensor(gen_features), torch.as_tensor(train_features))
    test_nn = _nearest_distances(torch.as_tensor(test_features), torch.as_tensor(train_features))
    threshold = float(torch.quantile(test_nn, quantile))
    med_test = float(test_nn.median())
    return {
        "copy_fraction": float((gen_nn <= threshold).double().mean()),
        "threshold": threshold,
        "quantile": quantile,
        "gen_nn_mean": float(gen_nn.mean()),
        "gen_nn_median": float(gen_nn.median()),
        "gen_nn_min": float(gen_nn.min()),
        "test_nn_mean": float(test_nn.mean()),
        "test_nn_median": med_test,
        "nn_ratio": float(gen_nn.median()) / med_test if med_test > 0 else float("inf"),
        "gen_nn_distances": gen_nn.tolist(),
    }


# --------------------------------------------------------------------------------------------
# kinematics


def to_scalar_images(images, colormap: str | None = "jet") -> np.ndarray:
    """Model-space images -> (N, H, W) float scalars in [0, 1] for `read_kinematics`.

    Args:
        images: (N, 1, H, W) or (N, 3, H, W) in [-1, 1] (tensor or array), or uint8 RGB
            (N, H, W, 3) as read from PNGs.
        colormap: colormap to invert 3-channel images through. With None, RGB images are
            turned to grey by their channel mean (only meaningful for greyscale data).
    """
    from dalle2_md.data.colormap import rgb_to_scalar
    from dalle2_md.data.display import colourise

    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 3 and x.dtype == np.uint8:
        rgb = x
    elif x.ndim == 4 and x.shape[1] == 1:
        return np.clip((x[:, 0].astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
    elif x.ndim == 4 and x.shape[1] == 3:
        rgb = colourise((x + 1) / 2, None)
    else:
        raise ValueError(f"expected (N, 1|3, H, W) in [-1, 1] or uint8 (N, H, W, 3), got {x.shape} {x.dtype}")
    if colormap is None:
        return rgb.astype(np.float64).mean(-1) / 255.0
    return np.stack([rgb_to_scalar(im, colormap)[0] for im in rgb]).astype(np.float64)


def read_kinematics_batch(scalar_images, *, axes: dict | None = None) -> dict[str, np.ndarray]:
    """{"torso", "max_envelope", "cadence"} -> (N,) pixel-unit values, one per image."""
    from dalle2_md.evaluation.kinematics import read_kinematics

    imgs = np.asarray(scalar_images, dtype=np.float64)
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        imgs = imgs[:, 0]
    if imgs.ndim != 3:
        raise ValueError(f"expected scalar images (N, H, W) in [0, 1], got shape {imgs.shape}")
    out = {k: np.empty(len(imgs)) for k in KINEMATIC_FIELDS}
    for i, im in enumerate(imgs):
        kin = read_kinematics(im, axes=axes)
        for k, attr in KINEMATIC_FIELDS.items():
            out[k][i] = getattr(kin, attr)
    return out


def _relative_error(gen: float, real: float) -> float:
    # real torso lines sit well away from zero Doppler (clutter band), so |real| is not ~0
    return abs(gen - real) / max(abs(real), 1e-9)


def kinematic_fidelity(
    real_scalar_images, real_user_indices, gen_scalar_images, gen_user_indices, *, axes: dict | None = None
) -> dict:
    """Per-user relative error of generated vs real mean torso velocity, max envelope and cadence.

    Read in pixel units (rows from zero Doppler, steps per column), which is all a comparison
    between two sets drawn on the same axes needs.

    Args:
        real_scalar_images: (N, H, W) or (N, 1, H, W) in [0, 1] (see `to_scalar_images`).
        real_user_indices: (N,) user indices.
        gen_scalar_images: (M, H, W) or (M, 1, H, W) in [0, 1].
        gen_user_indices: (M,) user indices.
        axes: optional physical axes passed on to `read_kinematics`.
    Returns:
        {"per_user": {user: {quantity: {"real", "gen", "rel_error"}}},
         "mean_rel_error": {quantity: mean over users}, "missing_users": users in one set only,
         "values": {"real"|"gen": {quantity: per-image list}, "real_ids"|"gen_ids": lists}}
    """
    real_ids = np.asarray(torch.as_tensor(real_user_indices).reshape(-1))
    gen_ids = np.asarray(torch.as_tensor(gen_user_indices).reshape(-1))
    real = read_kinematics_batch(real_scalar_images, axes=axes)
    gen = read_kinematics_batch(gen_scalar_images, axes=axes)
    if len(real_ids) != len(real["torso"]) or len(gen_ids) != len(gen["torso"]):
        raise UserError("kinematic_fidelity: the number of user indices does not match the number of images")
    users = sorted(set(real_ids.tolist()) & set(gen_ids.tolist()))
    missing = sorted(set(real_ids.tolist()) ^ set(gen_ids.tolist()))
    per_user = {}
    for u in users:
        row = {}
        for k in KINEMATIC_FIELDS:
            r, g = float(np.nanmean(real[k][real_ids == u])), float(np.nanmean(gen[k][gen_ids == u]))
            row[k] = {"real": r, "gen": g, "rel_error": _relative_error(g, r)}
        per_user[int(u)] = row
    mean = {k: float(np.nanmean([per_user[u][k]["rel_error"] for u in per_user])) if per_user else float("nan") for k in KINEMATIC_FIELDS}
    return {
        "per_user": per_user,
        "mean_rel_error": mean,
        "missing_users": [int(u) for u in missing],
        "values": {
            "real": {k: v.tolist() for k, v in real.items()},
            "gen": {k: v.tolist() for k, v in gen.items()},
            "real_ids": real_ids.tolist(),
            "gen_ids": gen_ids.tolist(),
        },
    }
