"""The per-user train/val/test split: made reproducibly from a seed (`make_split`), saved as
JSON beside a run (`save_split` / `load_split`), and reused or made for a scanned data root
(`resolve_split`)."""

from __future__ import annotations

import json
import logging
import math
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from dalle2_md.data.scanning import DataIndex, DataWarning
from dalle2_md.utils import DataError, atomic_write, read_json_file, short_list

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_FORMAT_VERSION = 1


def _validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or fr[0] <= 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise DataError(f"split fractions {fractions} must be three non-negative numbers (train>0) that sum to 1, e.g. 0.8,0.1,0.1")
    return fr


def make_split(dataset_or_index, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """A reproducible per-user train/val/test split of relative file paths.

    Each user's files are shuffled with a generator seeded by (seed, user name), so adding a
    user leaves the others' splits unchanged. Users with >=3 images get at least one image in
    val and test (when those fractions are >0); users with fewer go wholly to train.

    Args:
        dataset_or_index: a `DataIndex` or `MicroDopplerDataset` (its files and user indices).
        fractions: (train, val, test), summing to 1.
        seed: split seed.
    Returns:
        {"seed", "fractions", "train": [...], "val": [...], "test": [...]} (plain JSON types).
    """
    fr = _validate_fractions(fractions)
    obj = dataset_or_index
    root = Path(obj.root)
    user_indices = obj.user_indices if isinstance(obj, DataIndex) else obj.user_indices.tolist()
    lm = obj.label_map
    by_user: dict[int, list[str]] = {}
    for path, lab in zip(obj.files, user_indices):
        by_user.setdefault(int(lab), []).append(Path(path).relative_to(root).as_posix())
    out = {"format_version": SPLIT_FORMAT_VERSION, "seed": int(seed), "fractions": list(fr), "train": [], "val": [], "test": []}
    small = []
    for lab in sorted(by_user):
        files = sorted(by_user[lab])
        n = len(files)
        name = lm.name_of(lab)
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])
        order = [files[i] for i in rng.permutation(n)]
        if n < 3:
            small.append(f"{name} ({n})")
            out["train"] += order
            continue
        n_val = max(1, round(n * fr[1])) if fr[1] > 0 else 0
        n_test = max(1, round(n * fr[2])) if fr[2] > 0 else 0
        while n - n_val - n_test < 1:  # keep one training image
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        out["val"] += order[:n_val]
        out["test"] += order[n_val : n_val + n_test]
        out["train"] += order[n_val + n_test :]
    if small:
        logger.warning("users with fewer than 3 images go to the training split only: %s", short_list(small))
    for k in SPLITS:
        out[k].sort()
    return out


def save_split(split: dict, path: str | Path) -> Path:
    """Write a split (from make_split) as JSON."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        json.dump(split, f, indent=1)
    return path


def load_split(path: str | Path) -> dict:
    """Read and check a split file written by save_split."""
    path = Path(path)
    split = read_json_file(path, what="split file", fix="delete it to make a new split")
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in SPLITS):
        raise DataError(f"split file {path} lacks 'train'/'val'/'test' lists; delete it to make a new split")
    seen: dict[str, str] = {}
    for k in SPLITS:
        for rel in split[k]:
            if rel in seen:
                raise DataError(f"split file {path} puts {rel} in both {seen[rel]} and {k}; delete it to make a new split")
            seen[rel] = k
    return split


def resolve_split(index: DataIndex, split_file=None, seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict:
    """The split for `index`: read from `split_file` when it exists, else made (and saved
    there when a path is given).

    Args:
        index: the scanned data set.
        split_file: split JSON path or None (recompute from `seed`, do not save).
        seed: seed for a new split.
        fractions: (train, val, test) for a new split.
    """
    if split_file is not None and Path(split_file).is_file():
        split = load_split(split_file)
        listed = {rel for k in SPLITS for rel in split[k]}
        present = {index.relpath(f) for f in index.files}
        new = sorted(present - listed)
        if new:
            raise DataError(
                f"split file {split_file} does not cover {len(new)} image(s) now in {index.root} "
                f"(e.g. {short_list(new, 3)}); delete the split file to make a new split, or remove those images"
            )
        gone = listed - present - {index.relpath(p) for p, _ in index.skipped}
        if gone:
            warnings.warn(
                f"split file {split_file} lists {len(gone)} image(s) no longer in {index.root} "
                f"(e.g. {short_list(sorted(gone), 3)}); they are ignored",
                DataWarning,
                stacklevel=3,
            )
        return split
    split = make_split(index, fractions=fractions, seed=seed)
    if split_file is not None:
        save_split(split, split_file)
    return split
