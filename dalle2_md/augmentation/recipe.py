"""Augmentation recipes: how generated spectrograms are drawn, filtered and mixed with a few real
ones to train a recogniser.

Owns `AugmentRecipe` (one row of the ablation: source, guidance, eta, filter, synthetic-to-real
ratio, mixing), `draw_synthetic` (samples for every user, optionally drawn in excess and filtered
by a recogniser trained on the generator's own real images) and `train_augmented` (the
recogniser trained on real + synthetic by the recipe's mixing rule) and `score_recipe` (both,
scored: the augmented accuracy, A_gen, background defects, optionally CAS).
`harness.augmentation_gain` runs one trained generator per seed through several recipes.

Mixing rules (the real batches are the same in every rule, see `recogniser.train_recogniser`):
- "separate": each step one real batch and one synthetic batch, the synthetic loss weighted by
  `synthetic_weight`;
- "concat": real and synthetic pooled into one set (the old harness: a larger set means fewer
  passes over the real images);
- "pretrain": the recogniser first trains on synthetic images only, then on the real ones from
  those weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

from dalle2_md.defaults import SamplingConfig
from dalle2_md.utils import UserError

# torch is imported inside the functions: the command line reads AugmentRecipe's defaults for --help

SOURCES = ("prior", "variations", "sdedit", "respeckle")
GENERATOR_FREE_SOURCES = ("respeckle",)  # sources that draw from the K real images alone
CONDITIONS = ("own", "partner", "prior")
MIXING = ("separate", "concat", "pretrain")
RECIPE_FILTERS = ("none", "recogniser", "kinematic", "both")


@dataclass(frozen=True, kw_only=True)
class AugmentRecipe:
    """One way to turn a trained generator into recogniser training data.

    Args:
        name: row name in reports.
        source: "prior" (user -> prior -> decoder) or "variations" (the embeddings of the real
            K-shot images, decoded from fresh noise: DALL-E 2's image variations) or "sdedit"
            (each K-shot image noised `strength` of the way into the schedule and denoised with
            its own embedding: the real image's coarse layout, new detail). "sdedit" at strength
            0.5: chosen by `benchmarks/augment_ablation.py`, see docs/results.md. Or "respeckle"
            (no generator: copies of the K-shot images with their background speckle redrawn,
            `evaluation.augmentations.respeckle`; the control for SDEdit, which mostly changes
            speckle).
        strength: SDEdit noise level in (0, 1]; read only by source "sdedit".
        strengths: several SDEdit noise levels instead of `strength`, an equal share of the M
            images each (copy j of a real image at strengths[j % len]): the spread from near-copies
            to new walks that DisCL (Liang et al. 2025) trains on; () = `strength` alone.
        condition: what an SDEdit output is conditioned on (read only by source "sdedit"):
            "own" (the source image's own embedding), "partner" (the source image's embedding
            moved a uniform random fraction of the way towards another K-shot image of the same
            user: the layout of one walk, details from between two) or "prior" (a prior sample
            for the user).
        m_per_k: generated images per user = round(m_per_k * K).
        cond_scale, prior_cond_scale: decoder / prior classifier-free guidance.
        guidance_interval: (lo, hi) noise levels where decoder guidance applies (see
            `DecoderConfig.guidance_interval`); None = as stored in the generator.
        eta: DDIM eta (0 deterministic; 1 ancestral).
        filter: "none", or "recogniser": keep a sample when a recogniser trained on the K real
            images gives its intended user at least `min_confidence`; "kinematic": when its
            torso velocity, limb envelope and cadence lie in its user's range on the K real images
            (widened by `kinematic_margin` of each quantity's spread: `generation.filters`, the
            kinematic sifting of Erol, Gurbuz & Amin 2020); "both". "none": chosen by
            `benchmarks/augment_ablation.py`, see docs/results.md.
        min_confidence: softmax threshold of the recogniser filter.
        kinematic_margin: widening of each user's kinematic range (as `dalle2-md curate`'s).
        oversample: candidates drawn per kept image when filtering (the first passing ones by
            sample index are kept; fewer are kept when too few pass).
        mixing: "separate", "concat" or "pretrain" (see the module docstring); "separate":
            chosen by the same ablation.
        synthetic_weight: loss weight of the synthetic batch under "separate".
        respeckle_per_k: re-speckled copies of the K real images added per real image to the
            kept samples (user by user, after them): the generator-free control (source
            "respeckle") inside the recipe, so its gain over that control alone is what the
            generated images add.
    """

    name: str = "default"
    source: str = "sdedit"
    strength: float = 0.5
    strengths: tuple[float, ...] = ()
    condition: str = "own"
    m_per_k: float = 3.0
    cond_scale: float = 3.0
    prior_cond_scale: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    eta: float = 0.0
    filter: str = "none"
    min_confidence: float = 0.5
    kinematic_margin: float = 0.1
    oversample: float = 2.0
    mixing: str = "separate"
    synthetic_weight: float = 0.5
    respeckle_per_k: float = 0.0

    def __post_init__(self):
        for value, allowed, what in ((self.source, SOURCES, "source"), (self.mixing, MIXING, "mixing"),
                                     (self.filter, RECIPE_FILTERS, "filter"), (self.condition, CONDITIONS, "condition")):
            if value not in allowed:
                raise UserError(f"recipe {what} {value!r} is not one of {', '.join(allowed)}")
        for strength in (self.strength, *self.strengths):
            if not 0.0 < strength <= 1.0:
                raise UserError(f"recipe {self.name}: strength must lie in (0, 1], got {strength}")
        if self.strengths and (self.source != "sdedit" or self.condition != "own"):
            raise UserError(f"recipe {self.name}: strengths apply to source 'sdedit' with condition 'own' only")
        if self.m_per_k <= 0 or self.oversample < 1 or self.respeckle_per_k < 0:
            raise UserError(f"recipe {self.name}: m_per_k must be > 0, oversample >= 1 and respeckle_per_k >= 0")

    def num_per_user(self, k: int) -> int:
        return max(1, int(round(self.m_per_k * k)))

    def to_dict(self) -> dict:
        return asdict(self)


def default_source(generator: str) -> str:
    """The default recipe's source for a generator kind: the single-stage baseline has no
    embeddings to start variations or SDEdit from, so it draws from its prior path; without a
    generator ("none") the K-shot images are re-speckled."""
    return {"two_stage": AugmentRecipe.source, "none": "respeckle"}.get(generator, "prior")


def recipe_sampling(recipe: AugmentRecipe, budget) -> SamplingConfig:
    """The budget's sampling with the recipe's guidance, eta and guidance interval (the budget's
    interval where the recipe sets none)."""
    interval = recipe.guidance_interval if recipe.guidance_interval is not None else budget.sampling.guidance_interval
    return replace(budget.sampling, cond_scale=recipe.cond_scale, prior_cond_scale=recipe.prior_cond_scale,
                   eta=recipe.eta, guidance_interval=interval)


def _candidates(model, recipe: AugmentRecipe, budget, user_indices, shot, count: int, seed: int):
    """`count` samples per user: (images in [-1, 1], user indices), user-major."""
    from dalle2_md.generation.samples import sample_tensors

    if recipe.source == "respeckle":
        return _respeckled_copies(user_indices, shot, count, seed)
    sampling = recipe_sampling(recipe, budget)
    if recipe.source == "prior":
        return sample_tensors(model, user_indices, count, seed=seed, sampling=sampling)
    with model.decoder.sampling_config_for(**sampling.decoder_overrides()):  # for this draw only
        return _real_image_candidates(model, recipe, sampling, user_indices, shot, count, seed)


def _real_image_candidates(model, recipe: AugmentRecipe, sampling, user_indices, shot, count: int, seed: int):
    """`_candidates` of the sources that start from each user's K-shot images."""
    import torch

    from dalle2_md.generation.variations import variations_of

    images, ids = [], []
    for u in user_indices:
        own = shot[0][shot[1] == u]
        per_image = math.ceil(count / len(own))
        users = torch.full((len(own),), u, dtype=torch.long)
        common = dict(n=per_image, seed=seed + 7919 * u, cond_scale=sampling.cond_scale, steps=sampling.decoder_steps,
                      eta=sampling.eta)
        if recipe.source == "sdedit":
            embeds = _sdedit_conditions(model, recipe, own, u, per_image, seed + 7919 * u)
            x = _sdedit_copies(model, recipe, own, embeds, users, common)[:count]
        else:
            x = variations_of(model, own, user_indices=users, **common)[:count]
        images.append(x.cpu())  # both return model space, [-1, 1]
        ids.append(torch.full((len(x),), u, dtype=torch.long))
    return torch.cat(images), torch.cat(ids)


def _sdedit_copies(model, recipe: AugmentRecipe, own, embeds, users, common: dict):
    """`common["n"]` SDEdit outputs of each of `own`'s images, image-major; with `strengths`,
    copy j of an image at strengths[j % len(strengths)] (each strength its own noise stream)."""
    import torch

    from dalle2_md.generation.variations import sdedit

    strengths = recipe.strengths or (recipe.strength,)
    if len(strengths) == 1:
        return sdedit(model, own, strength=strengths[0], image_embeds=embeds, user_indices=users, **common)
    n = common["n"]
    each = math.ceil(n / len(strengths))
    parts = []
    for i, strength in enumerate(strengths):  # (len(own), each, C, H, W) per strength
        part = sdedit(model, own, strength=strength, image_embeds=None, user_indices=users,
                      **{**common, "n": each, "seed": common["seed"] + 104729 * i})
        parts.append(part.view(len(own), each, *part.shape[1:]))
    # copy j of image r is parts[j % S][r, j // S]
    copies = torch.stack([parts[j % len(strengths)][:, j // len(strengths)] for j in range(n)], dim=1)
    return copies.reshape(len(own) * n, *copies.shape[2:])


def _respeckled_copies(user_indices, shot, count: int, seed: int):
    """`_candidates` of source "respeckle": each user's K-shot images re-speckled, copy-major
    (sample j is a copy of image j mod K), from the user's own seed, so sample j of user u
    depends only on the seed, u and j."""
    import torch

    from dalle2_md.evaluation.augmentations import respeckle

    images, ids = [], []
    for u in user_indices:
        own = shot[0][shot[1] == u]
        g = torch.Generator().manual_seed(seed + 7919 * u)
        x = torch.cat([respeckle(own, g) for _ in range(math.ceil(count / len(own)))])[:count]
        images.append(x)
        ids.append(torch.full((len(x),), u, dtype=torch.long))
    return torch.cat(images), torch.cat(ids)


def _sdedit_conditions(model, recipe: AugmentRecipe, own, user_index: int, per_image: int, seed: int):
    """(len(own) * per_image, D) embeddings the SDEdit outputs of one user are conditioned on,
    image-major; None for "own". Drawn from the user's own seed only, so one user's outputs do
    not depend on the other users."""
    import torch
    import torch.nn.functional as F

    from dalle2_md.generation.variations import embed

    if recipe.condition == "own":
        return None
    n = len(own) * per_image
    if recipe.condition == "prior":
        return model.sample_image_embeds([user_index] * n, sample_indices=list(range(n)),
                                         prior_cond_scale=recipe.prior_cond_scale, seed=seed, eta=recipe.eta)
    e = embed(model, own).cpu()
    g = torch.Generator().manual_seed(seed)
    source = torch.arange(len(own)).repeat_interleave(per_image)
    # another image of the same user (itself when the user has only one)
    partner = (source + torch.randint(1, max(2, len(own)), (n,), generator=g)) % len(own)
    fraction = torch.rand(n, 1, generator=g)
    return F.normalize((1 - fraction) * e[source] + fraction * e[partner], dim=-1)


def sampling_key(recipe: AugmentRecipe) -> tuple:
    """Recipes with the same key draw the same candidates (sample j of user u depends only on
    the seed, u and j), so one draw of the largest count serves them all."""
    if recipe.source in GENERATOR_FREE_SOURCES:  # guidance and eta do not apply
        return (recipe.source,)
    strength = (tuple(recipe.strengths) or recipe.strength) if recipe.source == "sdedit" else None
    condition = recipe.condition if recipe.source == "sdedit" else None
    interval = tuple(recipe.guidance_interval) if recipe.guidance_interval is not None else None
    return (recipe.source, strength, condition, recipe.cond_scale, recipe.prior_cond_scale, interval, recipe.eta)


def candidates_needed(recipe: AugmentRecipe, k: int) -> int:
    """Candidates per user the recipe looks at."""
    wanted = recipe.num_per_user(k)
    return wanted if recipe.filter == "none" else int(math.ceil(wanted * recipe.oversample))


def draw_candidates(model, recipe: AugmentRecipe, budget, shot, count: int, *, seed: int):
    """`count` candidates per user of the K-shot set: (images in [-1, 1], user indices), user-major."""
    import torch

    user_indices = sorted(torch.unique(shot[1]).tolist())
    return _candidates(model, recipe, budget, user_indices, shot, count, seed)


def draw_synthetic(model, recipe: AugmentRecipe, budget, shot, *, seed: int, filter_recogniser=None,
                   candidates=None) -> dict:
    """Synthetic training images for every user of the K-shot set.

    Args:
        model: the trained generator (a `MicroDopplerDALLE2`, or the baseline for source "prior";
            None for a source of `GENERATOR_FREE_SOURCES`).
        recipe: how to draw and filter.
        budget: the generator's `GeneratorBudget` (sampling steps, sampler).
        shot: the K-shot (images (N, C, H, W) in [-1, 1], user indices) the generator was trained on.
        seed: sampling seed.
        filter_recogniser: a recogniser trained on `shot` only (needed by filter "recogniser").
        candidates: (images, user indices) from `draw_candidates` with at least
            `candidates_needed(recipe, K)` per user, drawn with the same sampling key and seed
            (default: drawn here).
    Returns:
        {"images", "user_indices" (the recipe's `respeckle_per_k` copies after each user's kept
        samples), "is_copy" ((N,) bool: those copies), "acceptance" (kept / looked at, per user
        index), "num_drawn"}.
    """
    import torch

    from dalle2_md.generation.filters import user_probabilities

    users = sorted(torch.unique(shot[1]).tolist())
    k = min(int((shot[1] == u).sum()) for u in users)
    wanted, needed = recipe.num_per_user(k), candidates_needed(recipe, k)
    if recipe.filter in ("recogniser", "both") and filter_recogniser is None:
        raise UserError("the recogniser filter needs a recogniser trained on the generator's own real images")
    images, ids = candidates if candidates is not None else draw_candidates(model, recipe, budget, shot, needed, seed=seed)
    # the first `needed` candidates of each user (a larger shared draw holds them as its prefix)
    rank = torch.zeros(len(ids), dtype=torch.long)
    for u in users:
        mine = torch.nonzero(ids == u).flatten()
        rank[mine] = torch.arange(len(mine))
    looked = rank < needed
    images, ids = images[looked], ids[looked]
    keep = torch.ones(len(ids), dtype=torch.bool)
    if recipe.filter in ("recogniser", "both"):
        keep &= user_probabilities(filter_recogniser, images).gather(1, ids[:, None]).squeeze(1) >= recipe.min_confidence
    if recipe.filter in ("kinematic", "both"):
        keep &= _kinematically_plausible(recipe, shot, images, ids, users)
    extra = round(recipe.respeckle_per_k * k)
    # the copies' own seed stream, so they are the same whichever generated samples they join
    copies = _respeckled_copies(users, shot, extra, seed + 15485863) if extra else None
    kept_images, kept_ids, is_copy, acceptance = [], [], [], {}
    for u in users:
        mine = torch.nonzero((ids == u) & keep).flatten()[:wanted]
        acceptance[u] = float(((ids == u) & keep).sum()) / max(1, int((ids == u).sum()))
        kept_images.append(images[mine])
        kept_ids.append(ids[mine])
        is_copy.append(torch.zeros(len(mine), dtype=torch.bool))
        if copies is not None:
            kept_images.append(copies[0][copies[1] == u].to(images))
            kept_ids.append(copies[1][copies[1] == u])
            is_copy.append(torch.ones(len(kept_ids[-1]), dtype=torch.bool))
    return {"images": torch.cat(kept_images), "user_indices": torch.cat(kept_ids), "is_copy": torch.cat(is_copy),
            "acceptance": acceptance, "num_drawn": len(images)}


def _kinematically_plausible(recipe: AugmentRecipe, shot, images, ids, users):
    """(N,) bool: each sample's kinematics inside its user's range on the K-shot images."""
    import torch

    from dalle2_md.generation.filters import KinematicFilter, kinematic_ranges

    colormap = "jet" if images.shape[1] == 3 else None  # scalar images are read as they are
    ranges = kinematic_ranges(*shot, num_users=max(users) + 1, colormap=colormap)
    sift = KinematicFilter(ranges, margin=recipe.kinematic_margin, colormap=colormap)
    keep = torch.zeros(len(ids), dtype=torch.bool)
    for u in users:
        mine = torch.nonzero(ids == u).flatten()
        if len(mine):
            keep[mine] = torch.as_tensor(sift(images[mine], u)[1], dtype=torch.bool)
    return keep


def train_augmented(recipe: AugmentRecipe, real, synthetic, *, num_users: int, train_config, config=None):
    """A recogniser trained on real + synthetic images by the recipe's mixing rule.

    Args:
        config: the recogniser's `RecogniserConfig` (default: the standard one for the images).
    """
    import torch

    from dalle2_md.evaluation.recogniser import train_recogniser

    common = dict(num_users=num_users, config=config)
    if len(synthetic[0]) == 0:
        return train_recogniser(*real, train=train_config, **common)
    if recipe.mixing == "concat":
        return train_recogniser(torch.cat([real[0], synthetic[0]]), torch.cat([real[1], synthetic[1]]),
                                train=train_config, **common)
    if recipe.mixing == "separate":
        return train_recogniser(*real, synthetic=synthetic, train=replace(train_config, synthetic_weight=recipe.synthetic_weight),
                                **common)
    pretrained = train_recogniser(*synthetic, train=train_config, **common)
    return train_recogniser(*real, train=train_config, init=pretrained, **common)


def score_recipe(recipe: AugmentRecipe, model, budget, shot, test, candidates, *, seed: int, rec_real, rec_cfg, shape,
                 num_users: int, bounds, cas: bool = False) -> tuple[dict, tuple]:
    """One recipe of one augmentation repetition (`harness.augmentation_gain`): its synthetic set
    from `candidates` (`draw_candidates`), the recogniser trained on the K-shot `shot` plus that set
    (shape `shape`, training `rec_cfg`), and what the set's own images are worth: A_gen by the
    real-only recogniser `rec_real`, the share outside the background range `bounds`, and with
    `cas` (generator sources only) the CAS of a recogniser trained on K of them per user alone, as
    many as the real-only arm's real images. Returns (the row, the synthetic (images, user indices))."""
    import numpy as np
    import torch

    from dalle2_md.evaluation.metrics import background_defects, classification_accuracy_score
    from dalle2_md.evaluation.recogniser import accuracy

    t1 = time.perf_counter()
    drawn = draw_synthetic(model, recipe, budget, shot, seed=seed, filter_recogniser=rec_real, candidates=candidates)
    fake = (drawn["images"], drawn["user_indices"])
    t2 = time.perf_counter()
    rec_aug = train_augmented(recipe, shot, fake, num_users=num_users, train_config=rec_cfg, config=shape)
    acc_aug, per_aug = accuracy(rec_aug, *test)
    # how recognisable the kept samples are to the recogniser that saw only the K real images
    a_gen = accuracy(rec_real, *fake)[0] if len(fake[0]) else float("nan")
    own = (fake[0][~drawn["is_copy"]], fake[1][~drawn["is_copy"]])  # what the source drew, without added copies
    acceptance = list(drawn["acceptance"].values())
    out = {"acc_aug": acc_aug, "per_user_aug": per_aug, "a_gen_kshot_recogniser": a_gen, "num_generated": len(fake[0]),
           "num_drawn": drawn["num_drawn"], "mean_acceptance": float(np.mean(acceptance)),
           "min_acceptance": float(np.min(acceptance)),
           "background_defects": background_defects(own[0], bounds)["rate"] if len(own[0]) else None,
           "seconds": {"sample": t2 - t1, "recogniser": time.perf_counter() - t2}}
    if cas and recipe.source not in GENERATOR_FREE_SOURCES and len(own[0]):
        t3 = time.perf_counter()
        rows = _evenly_spread(own[1], torch.bincount(shot[1], minlength=num_users).tolist())
        out["cas"] = classification_accuracy_score((own[0][rows], own[1][rows]), test, num_users=num_users, config=shape,
                                                   train_config=rec_cfg)["CAS"]
        out["seconds"]["cas"] = time.perf_counter() - t3
    return out, fake


def _evenly_spread(user_indices, counts):
    """Row indices of counts[u] rows of each user u spread evenly over its rows (all if fewer):
    SDEdit draws are image-major, so the first K rows of a user would be copies of a few images."""
    import torch

    picked = []
    for u, count in enumerate(counts):
        mine = torch.nonzero(user_indices == u).flatten()
        if len(mine) and count:
            picked.append(mine[torch.linspace(0, len(mine) - 1, min(int(count), len(mine))).round().long()])
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
