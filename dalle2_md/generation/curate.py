"""Curated synthetic data sets: draw generated spectrograms per user, keep those that pass the
filters, and write them as a data set in the layout of the input, with a manifest.

Owns the two filters (a recogniser trained on the generator's own training images, keeping a
sample when its confidence for the intended user reaches a threshold; and kinematic plausibility,
keeping a sample whose torso velocity, limb envelope and cadence lie inside its user's range on
those same images, as in the kinematically-sifted GAN work), the noise keyed on (seed, user
label, sample index), and `curate_dataset`, the resumable "draw until N kept per user" loop
behind `dalle2-md generate --filter/--layout` and `dalle2-md generate-dataset`.

Leakage: every filter is fitted from image tensors handed in explicitly (the caller passes the
train split the generator saw); nothing here reads a data root, so test images cannot reach it.
The filters are fitted at the decoder's size; the samples of an upsampled chain are written at
its `image_size` and judged shrunk to the decoder's (`judged_at`).

Output folder: the kept PNGs (`ID_5/image_004.png`, named by sample index), `metadata.json` in
the flat layout, `manifest.jsonl` (a journal: one line of settings, then one line per finished
block of samples, appended and fsynced) and `manifest.json` (every drawn sample with its scores
and status, rewritten atomically from the journal after each user and at the end). A killed run
continues where the journal ends when re-run with the same settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dalle2_md.defaults import DEFAULTS, SamplingConfig
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig
from dalle2_md.data.synthesize import WRITE_LAYOUTS, layout_relpath
from dalle2_md.generation.filters import FilterFn, build_filter
from dalle2_md.utils import UserError, atomic_write, exists, plain_json, say, to_signed

JOURNAL, MANIFEST = "manifest.jsonl", "manifest.json"
CACHE_DIR = ".curate"  # the filter's recogniser, reused by a re-run (hidden: data loaders skip it)
# (user_index, sample_indices, seed) -> (len(sample_indices), C, H, W) in [-1, 1]
GenerateFn = Callable[[int, Sequence[int], int], torch.Tensor]


# --------------------------------------------------------------------------------------------
# the chain as a per-sample generator


def chain_sampler(model, sampling: SamplingConfig = DEFAULTS) -> GenerateFn:
    """A `GenerateFn` over a `MicroDopplerDALLE2`: sample i of a user is the chain's sample keyed
    by (seed, user label, i) (its prior and decoder noise, start and per-step), so it is the same
    image whichever block, batch or other users it is drawn with."""

    @torch.no_grad()
    def draw(user_index: int, sample_indices: Sequence[int], seed: int) -> torch.Tensor:
        indices = [int(i) for i in sample_indices]
        with model.decoder.sampling_config_for(**sampling.decoder_overrides()):
            images = model.sample([user_index] * len(indices), sample_indices=indices, seed=seed,
                                  cond_scale=sampling.cond_scale, prior_cond_scale=sampling.prior_cond_scale,
                                  prior_steps=sampling.prior_steps, decoder_steps=sampling.decoder_steps,
                                  eta=sampling.eta, sampler=sampling.sampler, colorize=False)
        return to_signed(images.cpu())

    return draw


# --------------------------------------------------------------------------------------------
# layouts


def default_layout(label_map) -> str:
    """The layout a data set with this label map was read from: flat, Kaggle (ID_<n> folders)
    or hierarchical."""
    if label_map.layout == "flat":
        return "flat"
    return "kaggle" if all(n.startswith("ID_") for n in label_map.names) else "hierarchical"


def sample_relpath(layout: str, label_map, user_index: int, sample_index: int) -> str:
    """Where sample `sample_index` of a user goes: the input's own folder names when the layout
    is the input's, else the layout's default folder for the user's original number."""
    number = label_map.ids[user_index]
    own = layout == default_layout(label_map) and layout != "flat"
    return layout_relpath(layout, number, sample_index, folder=label_map.names[user_index] if own else None)


# --------------------------------------------------------------------------------------------
# the journal


@dataclass
class UserProgress:
    kept: int = 0
    drawn: int = 0


def _fixed_settings(settings: dict) -> dict:
    # the target and the cap may grow between runs; everything else fixes which samples are made
    return {k: v for k, v in settings.items() if k not in ("num_samples_per_user", "max_draws_per_user")}


def _read_journal(path: Path) -> tuple[dict | None, list[dict], int]:
    """(settings, blocks, byte length of the complete lines): a line cut short by a kill is ignored."""
    if not path.is_file():
        return None, [], 0
    header, blocks, good = None, [], 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                break
            good += len(raw)
            if header is None:
                header = entry.get("settings")
            else:
                blocks.append(entry)
    return header, blocks, good


def _append_line(path: Path, entry: dict) -> None:
    with open(path, "ab") as f:
        f.write((json.dumps(entry) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _restore(out: Path, blocks: list[dict], labels: list[str]) -> tuple[dict[str, UserProgress], list[dict]]:
    """Progress per user label from the journal's blocks; a user's blocks from the first one
    whose kept file is gone are dropped (they will be drawn again, identically)."""
    progress = {label: UserProgress() for label in labels}
    valid, broken = [], set()
    for block in blocks:
        label = block["user"]
        if label in broken or label not in progress:
            continue
        if any(r["status"] == "kept" and not (out / r["file"]).is_file() for r in block["samples"]):
            broken.add(label)
            continue
        valid.append(block)
        p = progress[label]
        p.drawn += len(block["samples"])
        p.kept += sum(r["status"] == "kept" for r in block["samples"])
    return progress, valid


def _write_summary(out: Path, journal: Path, settings: dict, filter_info: dict, progress: dict, target: dict, layout: str) -> None:
    """manifest.json (and metadata.json in the flat layout), streamed from the journal."""
    users = {label: {"kept": p.kept, "drawn": p.drawn, "acceptance": p.kept / p.drawn if p.drawn else None,
                     "complete": p.kept >= target[label]} for label, p in progress.items()}
    flat_entries = []
    with atomic_write(out / MANIFEST, "w") as f:
        f.write('{"settings": ' + json.dumps(settings) + ', "filter": ' + json.dumps(filter_info))
        f.write(', "users": ' + json.dumps(users) + ', "samples": [')
        first = True
        with open(journal, "rb") as j:
            next(j)
            for raw in j:
                for r in json.loads(raw)["samples"]:
                    f.write(("\n" if first else ",\n") + json.dumps(r))
                    first = False
                    if layout == "flat" and r["status"] == "kept":
                        flat_entries.append({"filename": Path(r["file"]).name, "user_id": r["user_number"]})
        f.write("\n]}\n")
    if layout == "flat":
        from dalle2_md.data.scanning import METADATA_FILE

        with atomic_write(out / METADATA_FILE, "w") as f:
            json.dump(flat_entries, f, indent=1)


# --------------------------------------------------------------------------------------------
# the loop


@dataclass
class CurationResult:
    """What `curate_dataset` made."""

    output_dir: Path
    manifest: Path
    users: dict = field(default_factory=dict)  # label -> {"kept", "drawn", "acceptance", "complete"}
    short: list[str] = field(default_factory=list)  # one message per user that missed the target


def _prepare_output(out: Path, settings: dict, overwrite: bool) -> tuple[list[dict], bool]:
    journal = out / JOURNAL
    header, blocks, good = _read_journal(journal)
    if header is not None and overwrite:
        remove_curated_set(out)
        header, blocks = None, []
    if header is None:
        if out.is_dir() and any(child.name != CACHE_DIR for child in out.iterdir()):
            raise UserError(f"{out} is not empty and holds no {JOURNAL} of a curated set; give a new or empty --output_dir "
                            "(generated sets are never written among other files).")
        out.mkdir(parents=True, exist_ok=True)
        journal.write_bytes((json.dumps({"settings": settings}) + "\n").encode())
        return [], False
    if _fixed_settings(header) != _fixed_settings(settings):
        changed = sorted(k for k in set(header) | set(settings) if k not in ("num_samples_per_user", "max_draws_per_user")
                         and header.get(k) != settings.get(k))
        raise UserError(f"{out} holds a curated set made with other settings ({', '.join(changed)} differ); re-run with "
                        "the same settings to continue it, or pass --overwrite (or another --output_dir) to start again.")
    if good != journal.stat().st_size:  # drop a line a kill cut short
        with open(journal, "r+b") as f:
            f.truncate(good)
    return blocks, True


def curate_dataset(
    generate_fn: GenerateFn,
    output_dir: str | Path,
    *,
    label_map,
    user_indices: Sequence[int],
    num_samples_per_user: int,
    seed: int = 0,
    filter_fn: FilterFn | None = None,
    filter_info: dict | None = None,
    layout: str | None = None,
    colormap: str | None = "jet",
    batch_size: int = 32,
    max_draws_per_user: int | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = say,
) -> CurationResult:
    """Draw samples per user until `num_samples_per_user` pass the filter (or the cap is hit),
    writing the kept ones as a data set and every drawn one into the manifest.

    Memory holds one block of `batch_size` images at a time; the journal is appended after each
    block, so a killed run re-run with the same arguments continues and ends with the same files
    and manifest as an uninterrupted run.

    Args:
        generate_fn: (user_index, sample_indices, seed) -> images (n, C, H, W) in [-1, 1]; the
            same (user, index, seed) must give the same image (see `chain_sampler`).
        output_dir: new or empty folder, or one this function wrote (then it continues).
        label_map: the generator's `LabelMap` (original labels and the input's layout).
        user_indices: users to draw for, as indices 0..N-1.
        num_samples_per_user: kept samples wanted per user.
        seed: sampling seed.
        filter_fn: a `FilterFn` (see `build_filter`); None keeps everything.
        filter_info: how the filter was fitted (stored in the manifest).
        layout: "kaggle", "hierarchical" or "flat"; None = the input's own.
        colormap: colormap the PNGs are drawn with ("none" for RGB models).
        batch_size: samples drawn at once.
        max_draws_per_user: cap on draws per user (default 10 x num_samples_per_user).
        settings: what fixes the samples (guidance, eta, steps, model...); a re-run must match.
        overwrite: delete the files of an earlier curated set in output_dir and start again.
        progress: show a tqdm bar.
        log: where the messages about short users go.
    """
    from tqdm import tqdm

    layout, cap = _checked_targets(label_map, layout, num_samples_per_user, batch_size, max_draws_per_user)
    labels = [label_map.name_of(u) for u in user_indices]
    full_settings = {**(settings or {}), "seed": seed, "layout": layout, "batch_size": batch_size, "colormap": colormap,
                     "filter": (filter_info or {}).get("kind", "none"), "users": labels,
                     "num_samples_per_user": num_samples_per_user, "max_draws_per_user": cap}
    full_settings["filter_fitted_on"] = {k: v for k, v in (filter_info or {}).items() if k != "kinematic_ranges"}
    out = Path(output_dir)
    done = _open_journal(out, full_settings, labels, overwrite)
    journal = out / JOURNAL
    target = {label: num_samples_per_user for label in labels}
    bar = tqdm(total=num_samples_per_user * len(user_indices), initial=sum(min(p.kept, num_samples_per_user) for p in done.values()),
               desc="curate", unit="img", disable=not progress)
    for user, label in zip(user_indices, labels):
        p = done[label]
        while p.kept < num_samples_per_user and p.drawn < cap:
            indices = list(range(p.drawn, min(p.drawn + batch_size, cap)))
            records = _curate_block(generate_fn, filter_fn, out, user, indices, p, label_map=label_map, seed=seed,
                                    layout=layout, colormap=colormap, wanted=num_samples_per_user,
                                    settings=full_settings, on_kept=lambda: bar.update(1))
            p.drawn += len(records)
            _append_line(journal, {"user": label, "samples": records})
            bar.set_postfix(user=label, acceptance=f"{p.kept / max(1, p.drawn):.2f}")
        _write_summary(out, journal, full_settings, filter_info or {"kind": "none"}, done, target, layout)
    bar.close()
    result = _curation_result(out, done, labels, wanted=num_samples_per_user, cap=cap)
    for message in result.short:
        log(message)
    return result


def _checked_targets(label_map, layout: str | None, num_samples_per_user: int, batch_size: int,
                     max_draws_per_user: int | None) -> tuple[str, int]:
    """The layout to write (default: the input's own) and the draw cap per user; checked."""
    if num_samples_per_user < 1 or batch_size < 1:
        raise UserError(f"--num_samples_per_user and --batch_size must be at least 1 (got {num_samples_per_user}, {batch_size}).")
    layout = layout or default_layout(label_map)
    if layout not in WRITE_LAYOUTS:
        raise UserError(f"unknown layout {layout!r}: use one of {', '.join(WRITE_LAYOUTS)}")
    cap = max_draws_per_user if exists(max_draws_per_user) else 10 * num_samples_per_user
    if cap < num_samples_per_user:
        raise UserError(f"--max_draws_per_user ({cap}) is below --num_samples_per_user ({num_samples_per_user}).")
    return layout, cap


def _open_journal(out: Path, settings: dict, labels: list[str], overwrite: bool) -> dict[str, UserProgress]:
    """Start or continue the set in `out`: each user's progress so far from the journal."""
    blocks, resumed = _prepare_output(out, settings, overwrite)
    done, valid = _restore(out, blocks, labels)
    if resumed and len(valid) != len(blocks):  # kept files went missing: rewrite the journal without those blocks
        with atomic_write(out / JOURNAL, "wb") as f:
            f.write((json.dumps({"settings": settings}) + "\n").encode())
            for b in valid:
                f.write((json.dumps(b) + "\n").encode())
    return done


def _curate_block(generate_fn: GenerateFn, filter_fn: FilterFn | None, out: Path, user: int, indices: list[int],
                  p: UserProgress, *, label_map, seed: int, layout: str, colormap: str | None, wanted: int,
                  settings: dict, on_kept: Callable[[], None]) -> list[dict]:
    """Draw and judge one block of `user`'s samples, write the kept ones (counted in `p.kept`)
    until `wanted` are kept; returns the manifest records of the samples judged."""
    from dalle2_md.data.display import colourise, write_png

    images, scores, passed = _judge_block(generate_fn, filter_fn, user, indices, seed)
    rgb = colourise((images + 1) / 2, colormap)  # images in [-1, 1]
    records = []
    for j, index in enumerate(indices):
        if p.kept >= wanted:
            break  # the rest of the block is never judged: a later, larger target draws it again
        status = "kept" if passed[j] else "dropped"
        rel = sample_relpath(layout, label_map, user, index) if status == "kept" else None
        if rel is not None:
            write_png(rgb[j], out / rel)
            p.kept += 1
            on_kept()
        records.append({"file": rel, "user": label_map.name_of(user), "user_number": label_map.ids[user], "user_index": user,
                        "sample_index": index, "seed": seed, "status": status,
                        "guidance": settings.get("cond_scale"), "prior_guidance": settings.get("prior_cond_scale"),
                        "eta": settings.get("eta"),
                        "scores": {k: plain_json(v[j]) for k, v in scores.items()}})
    return records


def _curation_result(out: Path, done: dict[str, UserProgress], labels: list[str], *, wanted: int, cap: int) -> CurationResult:
    """Each user's kept / drawn counts, and a message for each user left short."""
    result = CurationResult(output_dir=out, manifest=out / MANIFEST)
    for label in labels:
        p = done[label]
        result.users[label] = {"kept": p.kept, "drawn": p.drawn, "acceptance": p.kept / p.drawn if p.drawn else None,
                               "complete": p.kept >= wanted}
        if p.kept < wanted:
            result.short.append(
                f"user {label}: kept {p.kept} of {wanted} after {p.drawn} draws (acceptance "
                f"{p.kept / max(1, p.drawn):.1%}); lower --min_confidence, widen --kinematic_margin, raise "
                f"--max_draws_per_user (now {cap}) or train the generator longer, then re-run to continue.")
    return result


def _judge_block(generate_fn: GenerateFn, filter_fn: FilterFn | None, user: int, indices: list[int], seed: int):
    images = generate_fn(user, indices, seed).float()
    scores, passed = filter_fn(images, user) if exists(filter_fn) else ({}, np.ones(len(images), dtype=bool))
    return images, scores, np.asarray(passed, dtype=bool)


def train_split_tensors(data_root, *, image_size: int, colormap: str | None, label_map: dict | None,
                        split_file: str | Path | None, split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split only (the images the generator saw) of a data root, as model-space tensors
    with the generator's class indices: what the filters are fitted on."""
    from dalle2_md.data.dataset import MicroDopplerDataset

    if exists(split_file) and not Path(split_file).is_file():
        raise UserError(f"split file {split_file} does not exist; pass the split.json of the generator's training run "
                        "(it lies in the run folder) so the filters see only the images the generator saw.")
    ds = MicroDopplerDataset(data_root, image_size=image_size, colormap=colormap, split="train", split_file=split_file,
                             split_seed=split_seed, label_map=label_map)
    return ds.tensors()


def judged_at(filter_fn: FilterFn, size: int) -> FilterFn:
    """`filter_fn` judging images resized to `size` first: the filters are fitted on the train
    split at the decoder's size, while an upsampled chain draws at the data's own size."""
    from dalle2_md.models.upsampler import resize_images

    return lambda images, user: filter_fn(to_signed(resize_images((images + 1) / 2, size)), user)


def remove_curated_set(output_dir: str | Path) -> None:
    """Delete a curated set's own files (those its journal names) and its manifests."""
    out = Path(output_dir)
    _, blocks, _ = _read_journal(out / JOURNAL)
    for block in blocks:
        for r in block["samples"]:
            if r["file"]:
                (out / r["file"]).unlink(missing_ok=True)
    for name in (JOURNAL, MANIFEST, "metadata.json"):
        (out / name).unlink(missing_ok=True)
    for d in sorted((p for p in out.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def generate_dataset(
    model,
    output_dir: str | Path,
    *,
    user_labels: Sequence[str] | None = None,
    num_samples_per_user: int,
    filter: str = "none",
    data_root: str | Path | None = None,
    split_file: str | Path | None = None,
    split_seed: int = 0,
    min_confidence: float = 0.5,
    kinematic_margin: float = 0.1,
    recogniser_steps: int = 300,
    layout: str | None = None,
    sampling: SamplingConfig = DEFAULTS,
    seed: int = 0,
    batch_size: int = 32,
    max_draws_per_user: int | None = None,
    model_id: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = say,
) -> CurationResult:
    """`dalle2-md generate --filter/--layout`: a curated data set from a `MicroDopplerDALLE2`.

    Args:
        model: the chain (its label map gives the original labels and the input's layout).
        output_dir: new or empty folder, or the folder of a run to continue.
        user_labels: original labels as on disk, e.g. "ID_5" (default every user).
        num_samples_per_user: kept samples per user.
        filter: "none", "recogniser", "kinematic" or "both".
        data_root, split_file, split_seed: the real data and the split the generator was trained
            with; only the train split is read (for the filters).
        min_confidence, kinematic_margin, recogniser_steps: filter settings (see `build_filter`).
        layout: "kaggle", "hierarchical", "flat" or None (the input's).
        sampling: guidance, eta and steps of the chain.
        seed, batch_size, max_draws_per_user, overwrite, progress, log: see `curate_dataset`.
        model_id: what identifies the model (file paths, fingerprint), stored in the settings.
    """
    from dalle2_md.generation.samples import _label_map

    lm = _label_map(model)
    indices = [model.user_index(u) for u in user_labels] if user_labels else list(range(model.num_users))
    filter_fn, info = None, {"kind": "none"}
    if filter != "none":
        if not exists(data_root):
            raise UserError(f"--filter {filter} needs --data_root: the real data the generator was trained on "
                            "(only its train split is used, never the test images).")
        images, user_indices = train_split_tensors(data_root, image_size=model.decoder.config.image_size,
                                                   colormap=model.colormap, label_map=lm.to_dict(),
                                                   split_file=split_file, split_seed=split_seed)
        filter_fn, info = build_filter(filter, images, user_indices, num_users=model.num_users, min_confidence=min_confidence,
                                       kinematic_margin=kinematic_margin, colormap=model.colormap,
                                       recogniser_train=RecogniserTrainConfig(steps=recogniser_steps),
                                       recogniser_cache=Path(output_dir) / CACHE_DIR / "recogniser.pt", label_map=lm.to_dict())
        info["split_file"] = str(split_file) if exists(split_file) else f"recomputed (seed {split_seed})"
        if model.image_size != model.decoder.config.image_size:
            filter_fn = judged_at(filter_fn, model.decoder.config.image_size)
    settings = {**asdict(sampling), "model": model_id or {}}
    return curate_dataset(chain_sampler(model, sampling), output_dir, label_map=lm, user_indices=indices,
                          num_samples_per_user=num_samples_per_user, seed=seed, filter_fn=filter_fn, filter_info=info,
                          layout=layout, colormap=model.colormap, batch_size=batch_size,
                          max_draws_per_user=max_draws_per_user, settings=settings, overwrite=overwrite,
                          progress=progress, log=log)
