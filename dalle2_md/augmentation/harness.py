"""Augmentation gain (the evaluation protocol: docs/guide/evaluation.md): does adding generated spectrograms
to a few real ones train a better recogniser?

Owns: `train_generator` (either the two-stage chain embedding -> decoder -> prior of
`training.fit.train_two_stage`, or the single-stage baseline, trained on exactly the tensors it is
given; its sizes and steps are a `presets.GeneratorBudget`), `sample_tensors`
(model-space samples per user, as tensors; the old name `generate` still works and warns), `kshot_indices` (the seeded K-per-user pick from the train split)
and `augmentation_gain`, the harness behind `dalle2-md augment-eval`; with a `generator_cache`
folder a trained generator is saved and reused by any later run with the same K-shot tensors,
kind, seed and training budget (`cached_generator`).

Leakage: for each seed the harness picks K real images per user from the TRAIN split and hands
only those tensors to `train_generator`; the generator never receives a path, a data set or an
index into one, so it cannot see anything else. The relative paths of the picked files are
recorded per seed in the result.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dalle2_md.training.fit import fit_budget_vqgan, latent_decoder_config, train_two_stage
from dalle2_md.training.presets import GeneratorBudget
from dalle2_md.utils import UserError, atomic_write, claimed, content_digest, exists, say

GENERATORS = ("two_stage", "baseline")
GENERATOR_CHOICES = GENERATORS + ("none",)  # `augmentation_gain`'s: "none" runs generator-free recipes


@dataclass
class TrainedGenerator:
    """A generator trained by `train_generator` and what it cost."""

    kind: str  # "two_stage" | "baseline" | "none"
    model: torch.nn.Module | None  # MicroDopplerDALLE2 | SingleStageBaseline, eval mode, EMA weights; None for "none"
    seconds: dict[str, float]  # per stage
    num_train_images: int
    final_losses: dict[str, float]  # mean loss over the last tenth of each stage's steps
    steps: dict[str, int] = field(default_factory=dict)  # optimiser steps per stage (a time budget may stop one early)


# the budget fields that change what training produces (sampling fields do not)
_TRAINING_FIELDS = ("clip_train_steps", "decoder_train_steps", "prior_train_steps", "batch_size", "decoder_batch_size", "lr",
                    "warmup_steps", "clip", "decoder", "prior")
# the prior trains last, from the embedding model alone: these do not change the image model
_PRIOR_FIELDS = ("prior_train_steps", "prior")
# the single-stage baseline has no embedding model and no prior
_TWO_STAGE_ONLY_FIELDS = ("clip_train_steps", "prior_train_steps", "clip", "prior")


def generator_cache_path(cache_dir: str | Path, images: torch.Tensor, user_indices: torch.Tensor, *, kind: str,
                         budget: GeneratorBudget, seed: int, image_model_only: bool = False) -> Path:
    """Where `cached_generator` keeps the generator trained on exactly these tensors: the name
    hashes the tensors' bytes, the kind, the seed and the budget's training fields. With
    `image_model_only`, the name of the same generator by its embedding model and decoder alone
    (the budget's prior fields left out), under which a prior of another budget finds them."""
    fields = {name: getattr(budget, name) for name in _TRAINING_FIELDS
              if not (image_model_only and name in _PRIOR_FIELDS)}
    if kind == "baseline":  # fields it ignores must not change its name
        from dalle2_md.models.single_stage import single_stage_decoder_fields

        fields["decoder"] = single_stage_decoder_fields(budget.decoder)
        # nor the stages it does not have: named with the defaults, so the names cached before this stay
        defaults = GeneratorBudget()
        fields.update({name: getattr(defaults, name) for name in _TWO_STAGE_ONLY_FIELDS})
    if budget.vqgan_train_steps:  # only then: pixel generators keep the names they were cached under
        fields.update(vqgan_train_steps=budget.vqgan_train_steps, vqgan_lr=budget.vqgan_lr, vqgan=budget.vqgan)
    if budget.decoder_seconds:
        fields.update(decoder_seconds=budget.decoder_seconds)
    if budget.decoder_lr is not None:
        fields.update(decoder_lr=budget.decoder_lr)
    if budget.decoder_lr_schedule not in (None, "constant"):  # "constant" is what the cached ones trained with
        fields.update(decoder_lr_schedule=budget.decoder_lr_schedule)
    digest = content_digest([images, user_indices.long()], [kind, int(seed), fields], default=list)
    return Path(cache_dir) / f"{kind}_seed{seed}_{'image_model_' if image_model_only else ''}{digest}.pt"


def cached_generator(images: torch.Tensor, user_indices: torch.Tensor, *, cache_dir: str | Path | None, kind: str,
                     budget: GeneratorBudget, seed: int, **train_kwargs) -> TrainedGenerator:
    """`train_generator`, or the generator an earlier call saved for the same tensors, kind,
    seed and training budget (then `seconds` is empty: nothing was trained). A two-stage
    generator whose budget differs only in the prior's fields reuses the cached embedding model
    and decoder and trains only the prior, which gives the weights a full training would."""
    from dalle2_md.models.single_stage import SingleStageBaseline
    from dalle2_md.models.chain import MicroDopplerDALLE2

    if not exists(cache_dir):
        return train_generator(images, user_indices, kind=kind, budget=budget, seed=seed, **train_kwargs)
    key = dict(kind=kind, budget=budget, seed=seed)
    path = generator_cache_path(cache_dir, images, user_indices, **key)
    loader = SingleStageBaseline if kind == "baseline" else MicroDopplerDALLE2
    # another process sharing the cache (quality.py --workers) may be training this very generator
    with claimed(path, on_wait=say):
        if path.exists():
            return TrainedGenerator(kind=kind, model=loader.load(path).eval(), seconds={},
                                    num_train_images=len(images), final_losses={})
        image_model = generator_cache_path(cache_dir, images, user_indices, image_model_only=True, **key)
        if kind == "two_stage" and image_model.exists():
            gen = _with_new_prior(loader.load(image_model).eval(), images, user_indices, budget=budget, seed=seed,
                                  **train_kwargs)
        else:
            gen = train_generator(images, user_indices, kind=kind, budget=budget, seed=seed,
                                  vqgan_cache=Path(cache_dir) / "vqgan", **train_kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        gen.model.save(path)
        if kind == "two_stage" and not image_model.exists():
            _link_or_copy(path, image_model)
        return gen


def _with_new_prior(model, images, user_indices, *, budget: GeneratorBudget, seed: int, num_users: int, run_dir,
                    progress: bool = False, **_) -> TrainedGenerator:
    from dalle2_md.training.fit import fit_prior_for_clip

    start = time.perf_counter()
    prior, result = fit_prior_for_clip(model.clip, images, user_indices, num_users=num_users, budget=budget, seed=seed,
                                       work_dir=run_dir, progress=progress)
    model.prior = prior.eval()
    return TrainedGenerator(kind="two_stage", model=model, seconds={"prior": time.perf_counter() - start},
                            num_train_images=len(images), final_losses={"prior": _final_loss(result.losses)},
                            steps={"prior": result.step})


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)


def _final_loss(losses: list[float]) -> float:
    tail = losses[-max(1, len(losses) // 10):]
    return float(np.mean(tail)) if tail else float("nan")


def _check_tensors(images, user_indices, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, user_indices = torch.as_tensor(images).float(), torch.as_tensor(user_indices).long().reshape(-1)
    if images.ndim != 4 or len(images) != len(user_indices) or len(images) < 2:
        raise UserError(f"generator training needs (N, C, H, W) images and N user indices with N >= 2, "
                        f"got {tuple(images.shape)} and {tuple(user_indices.shape)}")
    if int(user_indices.min()) < 0 or int(user_indices.max()) >= num_users:
        raise UserError(f"user indices span {int(user_indices.min())}..{int(user_indices.max())} but num_users is {num_users}")
    return images, user_indices


def train_generator(
    images: torch.Tensor,
    user_indices: torch.Tensor,
    *,
    num_users: int,
    kind: str = "two_stage",
    budget: GeneratorBudget = GeneratorBudget(),
    seed: int = 0,
    run_dir: str | Path,
    label_map: dict | None = None,
    colormap: str | None = "jet",
    progress: bool = False,
    vqgan_cache: str | Path | None = None,
) -> TrainedGenerator:
    """Train a generator on exactly these images (and nothing else).

    Two-stage: the embedding model (x-clip) on the images and user indices, then the decoder on
    (image, embedding) pairs and the prior on (embedding, user index) pairs. Baseline: one decoder
    on (image, user index) pairs with a learned user table, same decoder shape and steps.

    Args:
        images: (N, C, H, W) in [-1, 1].
        user_indices: (N,) user indices in 0..num_users-1.
        num_users: number of users the generator knows.
        kind: "two_stage" or "baseline".
        budget: sizes and step counts.
        seed: seeds every stage.
        run_dir: folder for the training loop's checkpoints and logs (one subfolder per stage).
        label_map, colormap: stored with the model.
        progress: progress bars.
    """
    from dalle2_md.models.single_stage import single_stage_decoder_fields
    from dalle2_md.training.fit import train_baseline
    from dalle2_md.models.decoder import DecoderConfig
    from dalle2_md.models.chain import MicroDopplerDALLE2

    if kind not in GENERATORS:
        raise UserError(f"unknown generator {kind!r}; use one of {', '.join(GENERATORS)}")
    images, user_indices = _check_tensors(images, user_indices, num_users)
    run_dir = Path(run_dir)
    _, channels, size, _ = images.shape
    seconds, losses = {}, {}

    if kind == "baseline":
        # the two-stage decoder's shape and, under a latent budget, a VQGAN trained the same way
        dec_config = latent_decoder_config(DecoderConfig(image_size=size, channels=channels,
                                                         image_embed_dim=budget.clip["dim_latent"],
                                                         **single_stage_decoder_fields(budget.decoder)), budget)
        vqgan = None
        if budget.vqgan_train_steps:
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                vqgan, result = fit_budget_vqgan(images, dec_config, budget, seed, run_dir / "baseline",
                                                 progress=progress, cache_dir=vqgan_cache)
            seconds["vqgan"], losses["vqgan"] = time.perf_counter() - start, _final_loss(result.losses)
        start = time.perf_counter()
        model, result = train_baseline(images, user_indices, num_users=num_users, decoder_config=dec_config,
                                       train_config=budget.decoder_schedule(seed),
                                       run_dir=run_dir / "baseline", label_map=label_map, colormap=colormap,
                                       progress=progress, vqgan=vqgan)
        seconds["decoder"], losses["decoder"] = time.perf_counter() - start, _final_loss(result.losses)
        return TrainedGenerator(kind=kind, model=model, seconds=seconds, num_train_images=len(images), final_losses=losses)

    parts = train_two_stage(images, user_indices, num_users=num_users, budget=budget, seed=seed, work_dir=run_dir,
                            progress=progress, vqgan_cache=vqgan_cache)
    losses = {name: _final_loss(result.losses) for name, result in parts.results.items()}
    model = MicroDopplerDALLE2(prior=parts.prior, decoder=parts.decoder, clip=parts.clip, label_map=label_map,
                               colormap=colormap).eval()
    return TrainedGenerator(kind=kind, model=model, seconds=parts.seconds, num_train_images=len(images),
                            final_losses=losses, steps={name: result.step for name, result in parts.results.items()})


def kshot_indices(user_indices: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """K indices per user into a labelled set, drawn without replacement, seeded per (seed, user)
    so one user's pick does not depend on the others. Sorted.

    Args:
        user_indices: (N,) user indices of the (train) set to pick from.
        k: images per user.
        seed: pick seed.
    """
    user_indices = torch.as_tensor(user_indices).long().reshape(-1)
    if k < 1:
        raise UserError(f"K must be at least 1, got {k}")
    picked = []
    for u in torch.unique(user_indices).tolist():
        pool = torch.nonzero(user_indices == u).reshape(-1)
        if len(pool) < k:
            raise UserError(f"user {u} has {len(pool)} training images, fewer than K={k}; lower --k")
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(u))
        picked.append(pool[torch.randperm(len(pool), generator=g)[:k]])
    return torch.cat(picked).sort().values


def mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
    return {"mean": float(arr.mean()), "std": std, "values": arr.tolist()}


def _check_split_files(train_files, test_files, num_train: int) -> None:
    """The recorded file names fit the train tensors, and no file is both train and test."""
    if exists(train_files) and len(train_files) != num_train:
        raise UserError(f"{len(train_files)} train file names for {num_train} train images")
    if exists(train_files) and exists(test_files):
        overlap = set(train_files) & set(test_files)
        if overlap:
            raise UserError(f"the train and test splits share {len(overlap)} file(s) (e.g. {sorted(overlap)[0]}); "
                            "fix the split file")


def _resolved_recipes(recipes: Sequence, *, m: int | None, k: int, generator: str = "two_stage") -> list:
    """The recipes to run (default: the default recipe, from the prior for the baseline), each
    drawing `m` per user when given; generator "none" runs only generator-free recipes."""
    from dalle2_md.augmentation.recipe import GENERATOR_FREE_SOURCES, AugmentRecipe, default_source

    if generator not in GENERATOR_CHOICES:
        raise UserError(f"unknown generator {generator!r}; use one of {', '.join(GENERATOR_CHOICES)}")
    recipes = list(recipes) or [AugmentRecipe(source=default_source(generator))]
    if exists(m):
        recipes = [replace(r, m_per_k=m / k) for r in recipes]
    if len({r.name for r in recipes}) != len(recipes):
        raise UserError("recipe names must be unique")
    needy = [r.name for r in recipes if r.source not in GENERATOR_FREE_SOURCES]
    if generator == "none" and needy:
        raise UserError(f"recipe(s) {', '.join(needy)} need a generator; 'none' runs only {', '.join(GENERATOR_FREE_SOURCES)}")
    return recipes


def augmentation_gain(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    num_users: int,
    work_dir: str | Path,
    k: int = 10, m: int | None = None, seeds: Sequence[int] = (0, 1, 2),
    generator: str = "two_stage",
    budget: GeneratorBudget = GeneratorBudget(),
    recipes: Sequence = (),
    recogniser_train=None,
    recogniser_shape: dict | None = None,
    train_files: Sequence[str] | None = None,
    test_files: Sequence[str] | None = None,
    label_map: dict | None = None,
    colormap: str | None = "jet",
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    generator_cache: str | Path | None = None,
    seed_results: str | Path | None = None,
    skip_busy_seeds: bool = False,
    enlargement=None,
    cas: bool = False,
) -> dict | None:
    """Recogniser accuracy on real test when trained on K real images per user vs on those K plus
    M generated per user, the generator trained on the same K only; mean ± std over seeds.

    Args:
        train: (images (N, C, H, W) in [-1, 1], user indices) of the real TRAIN split.
        test: (images, user indices) of the real TEST split (only ever used to score recognisers).
        num_users: number of users.
        work_dir: scratch folder for the generators' training runs.
        k: real images per user.
        m: generated images per user for every recipe (default: each recipe's m_per_k x K).
        seeds: one repetition per seed (K-shot pick, generator, sampling and recognisers).
        generator: "two_stage", "baseline", or "none" (none trained: generator-free recipes only).
        budget: the generator's sizes and steps.
        recipes: `recipe.AugmentRecipe`s run on each seed's one trained generator (default: the
            default recipe); the first one's figures also appear at the top level.
        recogniser_train: `recogniser.RecogniserTrainConfig` (its seed is replaced per repetition).
        recogniser_shape: `RecogniserConfig` fields other than num_users / channels / image_size.
        train_files, test_files: relative paths of the images (order of the tensors): the
            picked files are recorded and checked disjoint from test.
        label_map, colormap, log, progress: for the generator; a line per repetition; bars.
        generator_cache: folder of trained generators to reuse across runs (`cached_generator`).
        seed_results: folder where each finished repetition is kept (named by a hash of the
            tensors and settings, not the code) and found again, by a later call or a process
            running the same seeds at once; `skip_busy_seeds` leaves out the seeds another
            process is running instead of waiting (returns None when it ran none).
        enlargement: a `cascade.Enlargement` (the generator at a smaller size, its samples
            enlarged to the data's), or None (the generator at the data's size).
        cas: also the CAS of each generator recipe (`recipe.score_recipe`).
    Returns:
        {"per_seed", "acc_real", "acc_aug", "gain_points" (each {"mean", "std", "values"}; the first
         recipe's), "recipes" ({name: the same}), "k", "m", "generator", "budget", "seconds"}.
    """
    recogniser_train = recogniser_train or _default_recogniser_train()
    images, user_indices = torch.as_tensor(train[0]).float(), torch.as_tensor(train[1]).long()
    test_images, test_ids = torch.as_tensor(test[0]).float(), torch.as_tensor(test[1]).long()
    _check_split_files(train_files, test_files, len(images))
    if len(seeds) < 1:
        raise UserError("give at least one seed")
    recipes = _resolved_recipes(recipes, m=m, k=k, generator=generator)
    started = time.perf_counter()
    settings = [k, generator, budget.to_dict(), [r.to_dict() for r in recipes], recogniser_train.key_dict(),
                recogniser_shape, num_users] + _enlargement_settings(enlargement, images) + (["cas"] if cas else [])
    one_seed = partial(_one_seed, images, user_indices, (test_images, test_ids), k=k, recipes=recipes,
                       num_users=num_users, generator=generator, budget=budget, recogniser_train=recogniser_train,
                       recogniser_shape=recogniser_shape, work_dir=Path(work_dir), label_map=label_map, colormap=colormap,
                       progress=progress, log=log, generator_cache=generator_cache, enlargement=enlargement, cas=cas)
    kept = None if not exists(seed_results) else \
        lambda seed: seed_result_path(seed_results, (images, user_indices, test_images, test_ids), settings, seed)
    per_seed = _seed_rows(seeds, lambda seed: one_seed(seed=seed), kept, wait=not skip_busy_seeds,
                          train_files=train_files)
    if not per_seed:
        return None
    result = summarise_seeds(per_seed, recipes, num_users=num_users)
    return {**result, "k": k, "m": recipes[0].num_per_user(k), "generator": generator, "num_test": len(test_images),
            "budget": budget.to_dict(), "recogniser_train": asdict(recogniser_train), "seconds": time.perf_counter() - started,
            "enlargement": (_enlargement_settings(enlargement, images) or [None])[0]}


def _default_recogniser_train():
    from dalle2_md.evaluation.recogniser import RecogniserTrainConfig

    return RecogniserTrainConfig()


def _enlargement_settings(enlargement, images: torch.Tensor) -> list:
    """The enlargement's part of a repetition's key, checked against the data; [] without one,
    so that settings without one keep their keys."""
    if enlargement is None:
        return []
    enlargement.check(images.shape[-1], images.shape[1])
    return [enlargement.key_dict()]


def _seed_rows(seeds, run_seed, kept_path, *, wait: bool, train_files) -> list[dict]:
    """One row per seed: run here, or found kept at `kept_path(seed)` (None: keep nothing);
    a seed another process is running is waited for, or left out when not `wait`."""
    rows = []
    for seed in map(int, seeds):
        if exists(kept_path):
            row = _kept_seed(kept_path(seed), lambda seed=seed: run_seed(seed), wait=wait)
            if row is None:
                continue
        else:
            row = run_seed(seed)
        if exists(train_files):
            row["kshot_files"] = [train_files[i] for i in row.pop("kshot_indices")]
        rows.append(row)
    return rows


def seed_result_path(folder: str | Path, tensors: Sequence[torch.Tensor], settings: list, seed: int) -> Path:
    """Where `augmentation_gain` keeps one seed's finished repetition (see its `seed_results`)."""
    return Path(folder) / f"seed{seed}_{content_digest(tensors, [settings, seed])}.json"


def _kept_seed(path: Path, run_seed: Callable[[], dict], *, wait: bool) -> dict | None:
    """The repetition kept at `path`, or run now and kept there; None when another process is
    running it and `wait` is off."""
    import json

    with claimed(path, wait=wait, on_wait=say) as mine:
        if not mine:
            return None
        if path.exists():
            row = json.loads(path.read_text())
            # JSON keys are strings; the per-user accuracies are keyed by user index
            row["per_user_real"] = {int(u): v for u, v in row["per_user_real"].items()}
            for r in row["recipes"].values():
                r["per_user_aug"] = {int(u): v for u, v in r["per_user_aug"].items()}
            return row
        row = run_seed()
        with atomic_write(path, "w") as f:
            json.dump(row, f)
        return row


def summarise_seeds(per_seed: list[dict], recipes: Sequence, *, num_users: int) -> dict:
    """Mean ± std over seeds of every recipe (used by `augmentation_gain`, and to merge runs of
    single seeds made in separate processes)."""
    by_recipe = {}
    for r in recipes:
        rows = [s_["recipes"][r.name] for s_ in per_seed]
        by_recipe[r.name] = {
            "recipe": r.to_dict(),
            "acc_aug": mean_std([x["acc_aug"] for x in rows]),
            "gain_points": mean_std([x["gain_points"] for x in rows]),
            "a_gen_kshot_recogniser": mean_std([x["a_gen_kshot_recogniser"] for x in rows]),
            "num_generated_per_user": mean_std([x["num_generated"] / num_users for x in rows]),
            "acceptance": mean_std([x["mean_acceptance"] for x in rows]),
        }
        for measure in ("background_defects", "cas"):  # absent from rows written before the measure, or without --cas
            values = [x.get(measure) for x in rows]
            if all(v is not None for v in values):
                by_recipe[r.name][measure] = mean_std(values)
    first = by_recipe[recipes[0].name]
    return {
        "seeds": [int(s_["seed"]) for s_ in per_seed],
        "per_seed": per_seed,
        "acc_real": mean_std([r["acc_real"] for r in per_seed]),
        **({"real_test_background_defects": mean_std([r["real_test_background_defects"] for r in per_seed])}
           if all("real_test_background_defects" in r for r in per_seed) else {}),
        "acc_aug": first["acc_aug"],
        "gain_points": first["gain_points"],
        "a_gen_kshot_recogniser": first["a_gen_kshot_recogniser"],
        "recipes": by_recipe,
    }


GRID_USERS, GRID_REAL, GRID_FAKE = 6, 4, 8


def _save_recipe_grid(shot, fake, path: Path, *, colormap: str | None) -> Path | None:
    """One row per user (the first GRID_USERS): GRID_REAL of its K real images, then GRID_FAKE of
    the recipe's synthetic ones, so a person can see whether the samples keep the user."""
    from dalle2_md.data.display import save_grid

    rows = []
    for u in sorted(torch.unique(shot[1]).tolist())[:GRID_USERS]:
        real, gen = shot[0][shot[1] == u][:GRID_REAL], fake[0][fake[1] == u][:GRID_FAKE]
        pad = torch.full((GRID_REAL + GRID_FAKE - len(real) - len(gen), *shot[0].shape[1:]), -1.0)
        rows.append(torch.cat([real, gen.to(real.dtype), pad]))
    if not rows:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_grid((torch.cat(rows) + 1) / 2, path, nrow=GRID_REAL + GRID_FAKE, colormap=colormap, min_tile=64)


def kshot_generator(images, user_indices, *, k: int, seed: int, kind: str, budget: GeneratorBudget, num_users: int,
                    work_dir: Path, generator_cache=None, label_map=None, colormap: str | None = "jet",
                    progress: bool = False):
    """One augmentation repetition's K-shot pick and its generator (from `generator_cache` when
    an earlier call, in this process or another, trained it); returns (indices, shot, generator).
    The generator gets copies of the K-shot tensors and nothing else (kind "none": no model)."""
    idx = kshot_indices(user_indices, k, seed)
    shot = (images[idx].clone(), user_indices[idx].clone())
    if kind == "none":
        return idx, shot, TrainedGenerator(kind="none", model=None, seconds={}, num_train_images=len(idx), final_losses={})
    gen = cached_generator(*shot, cache_dir=generator_cache, num_users=num_users, kind=kind, budget=budget, seed=seed,
                           run_dir=Path(work_dir) / f"seed_{seed}", label_map=label_map, colormap=colormap,
                           progress=progress)
    return idx, shot, gen


def _one_seed(images, user_indices, test, *, seed, k, recipes, num_users, generator, budget, recogniser_train,
              recogniser_shape, work_dir, label_map, colormap, progress, log, generator_cache=None,
              enlargement=None, cas: bool = False) -> dict:
    """One repetition: K-shot pick, one generator (at the base size of `enlargement`, with the
    K-shot upsampler), the real-only recogniser, then every recipe."""
    from dalle2_md.augmentation.cascade import enlarge_samples, fit_kshot_upsampler
    from dalle2_md.models.upsampler import shrink
    from dalle2_md.augmentation.recipe import (GENERATOR_FREE_SOURCES, candidates_needed, draw_candidates, sampling_key,
                                               score_recipe)
    from dalle2_md.evaluation.metrics import background_defects, background_range
    from dalle2_md.evaluation.recogniser import RecogniserConfig, accuracy, train_recogniser

    t0 = time.perf_counter()
    base = images if enlargement is None else shrink(images, enlargement.base_size)
    idx, shot_base, gen = kshot_generator(base, user_indices, k=k, seed=seed, kind=generator, budget=budget,
                                          num_users=num_users, work_dir=work_dir, generator_cache=generator_cache,
                                          label_map=label_map, colormap=colormap, progress=progress)
    shot = (images[idx].clone(), user_indices[idx].clone())
    upsampler = None if enlargement is None else \
        fit_kshot_upsampler(shot[0], enlargement, seed=seed, run_dir=work_dir / f"seed_{seed}" / "upsampler")
    t_gen = time.perf_counter()
    rec_cfg = replace(recogniser_train, seed=seed)
    shape = RecogniserConfig(num_users=num_users, channels=images.shape[1], image_size=images.shape[-1],
                             **(recogniser_shape or {}))
    # trained on the K-shot images only: the real-only arm, and the filter of every recipe
    rec_real = train_recogniser(*shot, num_users=num_users, config=shape, train=rec_cfg)
    acc_real, per_real = accuracy(rec_real, *test)
    bounds = background_range(shot[0])  # the noise floors the user's K real images span
    row = {"seed": seed, "acc_real": acc_real, "per_user_real": per_real, "num_kshot": len(idx),
           "real_test_background_defects": background_defects(test[0], bounds)["rate"],
           "kshot_indices": idx.tolist(), "generator_seconds": gen.seconds, "generator_final_losses": gen.final_losses,
           "seconds": {"generator": t_gen - t0}, "recipes": {}}
    # one draw per sampling setting, as large as the hungriest recipe that shares it
    counts = {}
    for recipe in recipes:
        counts[sampling_key(recipe)] = max(counts.get(sampling_key(recipe), 0), candidates_needed(recipe, k))
    pools = {}
    for recipe in recipes:
        t1 = time.perf_counter()
        key = sampling_key(recipe)
        if key not in pools and (enlargement is None or recipe.source in GENERATOR_FREE_SOURCES):
            pools[key] = draw_candidates(gen.model, recipe, budget, shot, counts[key], seed=seed)
        elif key not in pools:  # drawn at the base size, then enlarged to the data's
            drawn_base, drawn_ids = draw_candidates(gen.model, recipe, budget, shot_base, counts[key], seed=seed)
            pools[key] = (enlarge_samples(drawn_base, images.shape[-1], upsampler, seed=seed), drawn_ids)
        scored, fake = score_recipe(recipe, gen.model, budget, shot, test, pools[key], seed=seed, rec_real=rec_real,
                                    rec_cfg=rec_cfg, shape=shape, num_users=num_users, bounds=bounds, cas=cas)
        _save_recipe_grid(shot, fake, work_dir / f"seed_{seed}" / f"grid_{recipe.name}.png", colormap=colormap)
        row["recipes"][recipe.name] = {**scored, "gain_points": 100.0 * (scored["acc_aug"] - acc_real)}
        if log:
            log(f"[augment] seed {seed} {recipe.name}: K real {acc_real:.3f}, + generated {scored['acc_aug']:.3f} "
                f"(gain {100 * (scored['acc_aug'] - acc_real):+.1f} points, kept {scored['num_generated']}/"
                f"{scored['num_drawn']}), {time.perf_counter() - t1:.0f}s")
    # the first recipe's figures at the top level, as before recipes existed
    first = row["recipes"][recipes[0].name]
    row.update(acc_aug=first["acc_aug"], gain_points=first["gain_points"],
               a_gen_kshot_recogniser=first["a_gen_kshot_recogniser"], num_generated=first["num_generated"])
    row["seconds"]["total"] = time.perf_counter() - t0
    return row


def write_augment_report(result: dict, path: str | Path) -> Path:
    """A short markdown table of an `augmentation_gain` result."""

    def ms(d, scale=1.0, digits=3):
        std = d["std"]
        return f"{scale * d['mean']:.{digits}f} ± {scale * std:.{digits}f}" if std is not None and math.isfinite(std) \
            else f"{scale * d['mean']:.{digits}f}"

    first = next(iter(result["recipes"].values()))
    lines = [
        f"# Augmentation gain (K={result['k']} real + M={result['m']} generated per user, {result['generator']})",
        "",
        f"Seeds {result['seeds']}; recognisers tested on {result['num_test']} real test images; mean ± sample std.",
        "",
        "| recogniser trained on | real-test accuracy |",
        "|---|---|",
        f"| K real | {ms(result['acc_real'])} |",
        f"| K real + M generated | {ms(result['acc_aug'])} |",
        f"| gain (points) | {ms(result['gain_points'], digits=1)} |",
        *([f"| K generated alone per user (CAS) | {ms(first['cas'])} |"] if "cas" in first else []),
        "",
        "| seed | K real | K real + M generated | gain (points) | generator s |",
        "|---|---|---|---|---|",
    ]
    for r in result["per_seed"]:
        lines.append(f"| {r['seed']} | {r['acc_real']:.3f} | {r['acc_aug']:.3f} | {r['gain_points']:+.1f} | "
                     f"{r['seconds']['generator']:.0f} |")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Path(path)
