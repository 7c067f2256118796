"""The in-memory data set: every image of a data root (or of one split of it) decoded once to
model space, (C, H, W) float in [-1, 1], with an optional on-disk cache of the decoded tensors;
`load_splits` gives the train / val / test sets of one split.

Decoding: colour images are inverted through the colormap (colormap.rgb_to_scalar) at their
own resolution, greyscale images are used directly, then every channel is resized in float
precision.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch.utils.data import Dataset

from dalle2_md.data.colormap import rgb_to_scalar
from dalle2_md.data.labels import LabelMap
from dalle2_md.data.scanning import DataWarning, scan_data_root
from dalle2_md.data.splits import SPLITS, resolve_split
from dalle2_md.utils import DataError, UserError, atomic_write, exists, say


CACHE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# decoding


def _resample_filter(src_hw: tuple[int, int], dst_hw: tuple[int, int]):
    # Shrinking: area (box) averaging. Each output pixel is the mean energy of the cells it
    # covers, so a one-pixel limb flash is kept (dimmed) rather than dropped, and there are no
    # negative lobes that would ring around the bright torso line. Enlarging: bicubic, since box
    # would give blocks; its small overshoot is clipped afterwards.
    if dst_hw[0] <= src_hw[0] and dst_hw[1] <= src_hw[1]:
        return Image.Resampling.BOX
    return Image.Resampling.BICUBIC


def _resize_channels(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] -> (C, size, size), resized per channel in float precision."""
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return rearrange(arr, "h w c -> c h w").copy()
    filt = _resample_filter((h, w), (size, size))
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c]), mode="F").resize((size, size), filt)) for c in range(arr.shape[-1])]
    return np.clip(np.stack(out), 0.0, 1.0)


def _to_unit_array(im: Image.Image, colormap: str | None) -> tuple[np.ndarray, float | None]:
    """Any PIL image -> ((H, W, C) float32 in [0, 1], colormap residual or None).

    C is 1 under a colormap (colour images inverted through it, greyscale used as the scalar
    directly) and 3 without one."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "LA":
        im, mode = im.convert("L"), "L"
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im, dtype=np.float32)
        # 16-bit PNG/TIFF greyscale (I;16 and, in newer Pillow, I): full scale is 65535
        grey = np.clip(a, 0.0, 1.0) if mode == "F" else np.clip(a / 65535.0, 0.0, 1.0)
    elif mode == "L":
        grey = np.asarray(im, dtype=np.float32) / 255.0
    else:
        grey = None
    if grey is not None:
        if colormap is None:
            return np.repeat(grey[..., None], 3, axis=-1), None
        return grey[..., None], None
    rgb = np.asarray(im.convert("RGB"))  # P, RGBA, CMYK, YCbCr...: alpha is dropped
    if colormap is None:
        return rgb.astype(np.float32) / 255.0, None
    scalars, residual = rgb_to_scalar(rgb, colormap)
    return scalars[..., None], residual


def _decode(path: Path, image_size: int, colormap: str | None) -> tuple[np.ndarray, float | None]:
    with Image.open(path) as im:
        im.load()  # raises on truncated data here, inside the caller's per-file guard
        arr, residual = _to_unit_array(im, colormap)
    return _resize_channels(arr, image_size), residual


# --------------------------------------------------------------------------------------------
# the data set


def _normalise_colormap(colormap: str | None) -> str | None:
    if colormap is None or str(colormap).lower() == "none":
        return None
    from dalle2_md.data.colormap import lookup_table

    try:
        lookup_table(colormap)
    except ValueError as e:
        raise DataError(f"{e} (or 'none' to keep RGB)") from None
    return colormap


class MicroDopplerDataset(Dataset):
    """All of a data set's images, decoded once and held in memory.

    Items are (image FloatTensor (C, H, W) in [-1, 1], user index); `user_indices` holds every
    image's contiguous user index 0..N-1 and `label_map` turns one into the original label
    ("ID_5"). Under a colormap (default
    jet) C = 1: colour images are inverted through the colormap at their own resolution (before
    resizing, because blending jet colours makes colours that are not on the map) and greyscale
    images are used directly; with colormap="none" C = 3 (RGB).

    Storage: scalars as float16 (enough for 16-bit greyscale sources, half of float32), RGB as
    uint8 (the source precision).
    """

    def __init__(
        self,
        data_root: str | Path,
        *,
        image_size: int = 64,
        colormap: str | None = "jet",
        num_users: int | None = None,
        split: str | None = None,
        split_file: str | Path | None = None,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        label_map: LabelMap | dict | None = None,
        cache_dir: str | Path | None = None,
    ):
        """
        Args:
            data_root: folder of user folders, or images/ + metadata.json.
            image_size: side of the square images returned.
            colormap: colormap to invert into one channel ("jet"), or "none" to keep RGB.
            num_users: expected number of users; a mismatch is an error.
            split: "train", "val", "test", or None for every image.
            split_file: split JSON; reused if it exists, written there if not. None: the split
                is recomputed from `split_seed` (deterministic for the same files).
            split_seed: seed for a new split.
            split_fractions: (train, val, test) for a new split.
            label_map: labels of a trained model (LabelMap or its dict); data users must be in it.
            cache_dir: if given, decoded tensors are cached there, keyed by the files (paths,
                sizes, mtimes), image_size and colormap.
        """
        if split is not None and split not in SPLITS:
            raise DataError(f"split {split!r} is not one of {SPLITS} (or None for all images)")
        if int(image_size) < 1:
            raise DataError(f"image_size must be a positive integer, got {image_size}")
        if isinstance(label_map, dict):
            label_map = LabelMap.from_dict(label_map)
        self.image_size = int(image_size)
        self.colormap = _normalise_colormap(colormap)
        self.channels = 1 if self.colormap is not None else 3
        self.split = split

        index = scan_data_root(data_root, num_users=num_users, label_map=label_map)
        self.index = index
        self.root, self.layout, self.label_map = index.root, index.layout, index.label_map
        files, user_indices = list(index.files), list(index.user_indices)

        self.split_info = None
        if split is not None:
            self.split_info = resolve_split(index, split_file, split_seed, split_fractions)
            wanted = set(self.split_info[split])
            keep = [i for i, f in enumerate(files) if index.relpath(f) in wanted]
            files, user_indices = [files[i] for i in keep], [user_indices[i] for i in keep]

        store, kept, decode_skipped, residual = self._load(files, cache_dir)
        self.skipped = list(index.skipped) + decode_skipped
        self._store = store
        self.files = [files[i] for i in kept]
        self.user_indices = torch.tensor([user_indices[i] for i in kept], dtype=torch.long)
        self.residual = residual
        self._report(total=len(files) + len(index.skipped))
        if len(self.files) == 0:
            raise DataError(f"no readable images in the {split or 'whole'} split of {self.root}")

    # -- decode + cache ---------------------------------------------------------------------
    def _cache_path(self, files: list[Path], cache_dir) -> Path:
        key = {
            "v": CACHE_FORMAT_VERSION,
            "root": str(self.root),
            "size": self.image_size,
            "colormap": self.colormap,
            "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        }
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
        return Path(cache_dir) / f"decoded-{digest}.pt"

    def _load(self, files: list[Path], cache_dir):
        cache = self._cache_path(files, cache_dir) if cache_dir is not None and files else None
        if cache is not None and cache.is_file():
            try:
                blob = torch.load(cache, map_location="cpu", weights_only=True)
                skipped = [(files[i], reason) for i, reason in blob["skipped"]]
                return blob["store"], list(blob["kept"]), skipped, blob["residual"]
            except Exception as e:  # a damaged cache is rebuilt, never fatal
                say(f"ignoring unreadable decode cache {cache} ({e})")

        dtype = torch.float16 if self.colormap is not None else torch.uint8
        store = torch.empty((len(files), self.channels, self.image_size, self.image_size), dtype=dtype)
        kept, skipped, res_sum, res_n = [], [], 0.0, 0
        for i, path in enumerate(files):
            try:
                arr, residual = _decode(path, self.image_size, self.colormap)
            except Exception as e:  # one bad file must not stop the data set
                skipped.append((i, f"unreadable or truncated ({type(e).__name__}: {e})"))
                continue
            if residual is not None:
                res_sum, res_n = res_sum + residual, res_n + 1
            t = torch.from_numpy(arr)
            if dtype == torch.uint8:
                store[len(kept)] = (t * 255.0).round().to(torch.uint8)
            else:
                store[len(kept)] = (t * 2.0 - 1.0).to(torch.float16)
            kept.append(i)
        store = store[: len(kept)].clone()
        residual = res_sum / res_n if res_n else None
        if cache is not None:
            try:
                with atomic_write(cache) as f:
                    torch.save({"store": store, "kept": kept, "skipped": [list(s) for s in skipped], "residual": residual}, f)
            except OSError as e:
                say(f"could not write decode cache {cache} ({e})")
        return store, kept, [(files[i], reason) for i, reason in skipped], residual

    def _report(self, total: int) -> None:
        if self.skipped:
            listing = "; ".join(f"{p} ({why})" for p, why in self.skipped[:20])
            more = f"; ... {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            warnings.warn(f"skipped {len(self.skipped)} of {total} images: {listing}{more}", DataWarning, stacklevel=3)
        if self.residual is not None:
            from dalle2_md.data.colormap import check_colormap_residual

            # once per data set, on the mean over its colour images
            check_colormap_residual(self.residual, f"{self.root} (mean over its colour images)", self.colormap)

    # -- access -----------------------------------------------------------------------------
    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.float() / 127.5 - 1.0
        return x.float()

    @property
    def images(self) -> torch.Tensor:
        """All images, (N, C, H, W) float32 in [-1, 1] (a fresh tensor each call)."""
        return self._to_float(self._store)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, C, H, W) float32 in [-1, 1], user indices (N,) long)."""
        return self.images, self.user_indices.clone()

    def counts(self) -> list[int]:
        """Images per user index in this split."""
        return torch.bincount(self.user_indices, minlength=len(self.label_map)).tolist()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._to_float(self._store[i]), int(self.user_indices[i])

    def __repr__(self) -> str:
        return (
            f"MicroDopplerDataset({len(self)} images, {len(self.label_map)} users, {self.layout}, "
            f"split={self.split}, {self.channels}x{self.image_size}x{self.image_size}, colormap={self.colormap})"
        )


def load_splits(
    data_root: str | Path,
    *,
    image_size: int,
    colormap: str | None = "jet",
    split_file: str | Path | None = None,
    split_seed: int = 0,
    label_map: dict | None = None,
    must_exist: bool = False,
) -> dict:
    """The train / val / test data sets of a data root under one split (used by the
    `evaluate` and `augment-eval` commands).

    Args:
        data_root: folder of user folders, or images/ + metadata.json.
        image_size: side the images are decoded to.
        colormap: colormap inverted into one channel, or "none".
        split_file: a saved split (a training run's split.json); None recomputes the default
            split from `split_seed` (the same one training computes for the same files).
        split_seed: seed of a recomputed split.
        label_map: a trained model's label map, so class indices match the model's.
        must_exist: refuse a `split_file` that does not exist (instead of creating it).
    Returns:
        {"train", "val", "test": MicroDopplerDataset}
    """
    if exists(split_file) and must_exist and not Path(split_file).is_file():
        raise UserError(f"split file {split_file} does not exist; pass the split.json of the training run "
                        "(it lies in the run folder) or leave out --split_file to recompute the default split")
    out = {}
    for split in ("train", "val", "test"):
        try:
            out[split] = MicroDopplerDataset(data_root, image_size=image_size, colormap=colormap, split=split,
                                             split_file=split_file, split_seed=split_seed, label_map=label_map)
        except UserError as e:
            if split == "val" and "no readable images" in str(e):
                out[split] = None  # tiny data sets may have no validation images; the recogniser then keeps its last weights
                continue
            raise
    return out
