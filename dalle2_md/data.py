"""The data layer: finding a user's micro-Doppler images on disk, mapping user labels to class
indices, decoding every image once into memory, the per-user train/val/test split, and turning
model outputs back into viewable RGB (grids, PNGs).

Two layouts are detected automatically:

    hierarchical: data_root/<prefix><int>/...image files   (user_0, user_01, ID_1, subject7)
    flat:         data_root/images/*.png + data_root/metadata.json
                  [{"filename": "user0_001.png", "user_id": 0}, ...]

Anything wrong with the data raises one `DataError` that names the problem, the file and the
fix; single unreadable images are skipped with one warning that lists them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .utils import DataError, atomic_write

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUTS = ("hierarchical", "flat")
SPLITS = ("train", "val", "test")
METADATA_FILE = "metadata.json"
# a user folder is any name ending in an integer: user_0, user_01, ID_1, subject7
USER_DIR_RE = re.compile(r"^(?P<prefix>.*?)(?P<num>\d+)$")
SPLIT_FORMAT_VERSION = 1
CACHE_FORMAT_VERSION = 1


class DataWarning(UserWarning):
    """Something in the data set was skipped or looks off, but training can go on."""


def _short_list(items: Sequence[Any], limit: int = 8) -> str:
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


# --------------------------------------------------------------------------------------------
# label map


@dataclass(frozen=True, kw_only=True)
class LabelMap:
    """Original user labels <-> contiguous class indices 0..N-1.

    `names[i]` is the label shown to people (the folder name "ID_5", or the metadata user_id as
    a string "5"); `ids[i]` is the integer inside it, which is what users usually type.
    Indices follow the integers in increasing order, so ID_1..ID_31 <-> 0..30 and a gap
    (ID_1, ID_7) still gives 0, 1.
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    layout: str = "hierarchical"

    def __post_init__(self):
        names, ids = tuple(str(n) for n in self.names), tuple(int(i) for i in self.ids)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "ids", ids)
        if len(names) != len(ids):
            raise DataError(f"label map has {len(names)} names but {len(ids)} ids; it is damaged")
        if len(set(names)) != len(names):
            raise DataError(f"label map repeats a user name: {_short_list(names)}")
        if len(set(ids)) != len(ids):
            raise DataError(f"label map repeats a user number: {_short_list(ids)}")
        if self.layout not in LAYOUTS:
            raise DataError(f"label map layout {self.layout!r} is not one of {LAYOUTS}")

    @classmethod
    def from_folder_names(cls, names: Sequence[str]) -> "LabelMap":
        """Hierarchical layout: folder names ending in an integer, ordered by that integer."""
        parsed = []
        for name in names:
            m = USER_DIR_RE.match(name)
            if m is None:
                raise DataError(f"user folder name {name!r} does not end in a number (e.g. user_0, ID_1)")
            parsed.append((int(m["num"]), name))
        parsed.sort()
        nums = [n for n, _ in parsed]
        dup = sorted({n for n in nums if nums.count(n) > 1})
        if dup:
            clash = [name for n, name in parsed if n in dup]
            raise DataError(
                f"user folders {_short_list(clash)} carry the same user number; "
                "rename or merge them so each user number appears once"
            )
        return cls(names=tuple(n for _, n in parsed), ids=tuple(nums), layout="hierarchical")

    @classmethod
    def from_ids(cls, ids: Sequence[int]) -> "LabelMap":
        """Flat layout: integer user_ids from metadata.json, named by their decimal string."""
        uniq = sorted(set(int(i) for i in ids))
        return cls(names=tuple(str(i) for i in uniq), ids=tuple(uniq), layout="flat")

    def __len__(self) -> int:
        return len(self.names)

    def name_of(self, index: int) -> str:
        """The original label of class `index`."""
        index = int(index)
        if not 0 <= index < len(self):
            raise DataError(f"user index {index} is out of range: this label map has {len(self)} users (0..{len(self) - 1})")
        return self.names[index]

    def file_stem(self, index: int) -> str:
        """File-name stem for generated images of class `index`: the folder name in the
        hierarchical layout ("ID_5"), `user_<id>` in the flat one ("user_5")."""
        name = self.name_of(index)
        return name if self.layout == "hierarchical" else f"user_{self.ids[int(index)]}"

    def index_of(self, label: str | int) -> int:
        """Class index of a user given as a name ("ID_5"), its number as text ("5") or int (5).

        Numbers are the user's own number (ID_5 -> 5), not the class index. A name with a
        different prefix but a known number ("user_5" for folder ID_5) is matched on the number.
        """
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if int(label) in self.ids:
                return self.ids.index(int(label))
        elif isinstance(label, str):
            text = label.strip()
            if text in self.names:
                return self.names.index(text)
            lowered = [n.lower() for n in self.names]
            if lowered.count(text.lower()) == 1:
                return lowered.index(text.lower())
            m = USER_DIR_RE.match(text)
            if m is not None and int(m["num"]) in self.ids:
                prefix = m["prefix"].lower()
                known = {USER_DIR_RE.match(n)["prefix"].lower() for n in self.names} | {"", "user", "user_", "id_", "id"}
                if prefix in known:
                    return self.ids.index(int(m["num"]))
        raise DataError(
            f"unknown user {label!r}: valid users are {_short_list(self.names, 40)} "
            "(give the name or its number)"
        )

    def to_dict(self) -> dict:
        """Plain JSON types, for bundles and label_map.json."""
        return {"names": list(self.names), "ids": list(self.ids), "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelMap":
        """Rebuild from `to_dict()` output (e.g. the label_map stored in a bundle)."""
        if not isinstance(d, dict) or not {"names", "ids"} <= set(d):
            raise DataError("label map is malformed: expected a dict with 'names' and 'ids'")
        names, ids = d["names"], d["ids"]
        if not isinstance(names, list) or not isinstance(ids, list):
            raise DataError("label map is malformed: 'names' and 'ids' must be lists")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise DataError("label map is malformed: 'ids' must be integers")
        return cls(names=tuple(names), ids=tuple(ids), layout=d.get("layout", "hierarchical"))

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically) to `path`."""
        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        """Read a label map written by `save`."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"label map file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"label map file {path} is not readable JSON ({e}); re-create it") from None
        try:
            return cls.from_dict(d)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return f"LabelMap({len(self)} users, {self.layout}: {_short_list(self.names, 6)})"


# --------------------------------------------------------------------------------------------
# scanning


@dataclass
class DataIndex:
    """What is on disk, before decoding: candidate image files and their class indices."""

    root: Path
    layout: str
    files: list[Path]
    labels: list[int]
    label_map: LabelMap
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def relpath(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def counts(self) -> list[int]:
        """Images per class index."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.label_map)).tolist()


OWN_ARTEFACTS = frozenset({"contact_sheet.png"})


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _header_problem(path: Path) -> str | None:
    """Cheap check (file size + image header, no pixel decode); truncation shows up on decode."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header parse is the check
    except UnidentifiedImageError:
        return "not an image file"
    except Exception as e:  # any PIL/OS failure is a property of this one file
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def _scan_hierarchical(root: Path) -> tuple[list[str], dict[str, list[Path]]]:
    user_dirs, others = [], []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        (user_dirs if USER_DIR_RE.match(child.name) else others).append(child)
    # the simulator's own contact sheet sits beside the user folders and is not a sample
    loose = [
        p.name for p in root.iterdir() if p.is_file() and _is_image_name(p) and p.name not in OWN_ARTEFACTS
    ]
    if not user_dirs:
        hint = f" (found {len(loose)} images directly in it: put each user's images in its own folder)" if loose else ""
        raise DataError(
            f"no user folders and no {METADATA_FILE} in {root}{hint}. Expected either "
            f"{root}/user_0/*.png, {root}/user_1/*.png, ... (folder names ending in the user number) "
            f"or {root}/images/*.png with {root}/{METADATA_FILE}"
        )
    if others:
        warnings.warn(
            f"{root}: ignoring folders whose names do not end in a user number: {_short_list(o.name for o in others)}",
            DataWarning,
            stacklevel=3,
        )
    if loose:
        warnings.warn(f"{root}: ignoring {len(loose)} images outside the user folders", DataWarning, stacklevel=3)
    per_user = {}
    for d in user_dirs:
        imgs = sorted(p for p in d.rglob("*") if p.is_file() and _is_image_name(p))
        if not imgs:
            raise DataError(
                f"user folder {d} holds no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}): "
                "add its images or remove the folder"
            )
        per_user[d.name] = imgs
    return [d.name for d in user_dirs], per_user


def _scan_flat(root: Path) -> tuple[list[Path], list[int]]:
    meta_path = root / METADATA_FILE
    try:
        entries = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{meta_path} is not valid JSON ({e}); fix it or regenerate it") from None
    except OSError as e:
        raise DataError(f"cannot read {meta_path} ({e})") from None
    fix = 'each entry must look like {"filename": "user0_001.png", "user_id": 0}'
    if not isinstance(entries, list):
        raise DataError(f"{meta_path} must hold a JSON list of entries; {fix}")
    if not entries:
        raise DataError(f"{meta_path} lists no images; {fix}")
    image_dir = root / "images" if (root / "images").is_dir() else root
    files, ids, missing, seen = [], [], [], {}
    for i, entry in enumerate(entries):
        where = f"{meta_path}, entry {i}"
        if not isinstance(entry, dict) or "filename" not in entry or "user_id" not in entry:
            raise DataError(f"{where} ({json.dumps(entry)[:80]}) lacks 'filename' or 'user_id'; {fix}")
        name, uid = entry["filename"], entry["user_id"]
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'filename' must be a non-empty string, got {name!r}; {fix}")
        if isinstance(uid, bool) or not isinstance(uid, int):
            raise DataError(
                f"{where} ({name}): 'user_id' must be a JSON integer such as 3, got {uid!r} "
                f"({type(uid).__name__}); write the number without quotes"
            )
        rel = PurePosixPath(name.replace("\\", "/"))
        if rel.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in rel.parts:
            raise DataError(
                f"{where}: filename {name!r} points outside the data root {root}; "
                "use paths relative to the images/ folder and keep the images inside the data root"
            )
        path = image_dir / rel
        if not path.is_file() and image_dir != root and (root / rel).is_file():
            path = root / rel
        if not path.is_file():
            missing.append(name)
            continue
        if path in seen:
            raise DataError(f"{where}: {name!r} is listed twice (first at entry {seen[path]}); list each image once")
        seen[path] = i
        files.append(path)
        ids.append(uid)
    if missing:
        raise DataError(
            f"{meta_path} lists {len(missing)} file(s) that do not exist in {image_dir}: "
            f"{_short_list(missing, 5)}; add the files or remove their entries"
        )
    return files, ids


def scan_data_root(data_root: str | Path, *, num_users: int | None = None, label_map: LabelMap | None = None) -> DataIndex:
    """Find the images and user labels under `data_root` (layout detected automatically).

    Args:
        data_root: folder holding user folders, or `images/` + `metadata.json`.
        num_users: if given, the number of users the data (or `label_map`) must have.
        label_map: labels from a trained model; the data's users must all be in it.
    """
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DataError(f"data root {root} does not exist; pass the folder that holds your user folders or metadata.json")
    if not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder")
    root = root.resolve()

    if (root / METADATA_FILE).is_file():
        layout = "flat"
        files, raw = _scan_flat(root)
        names_of = [str(u) for u in raw]
        found = LabelMap.from_ids(raw)
    else:
        layout = "hierarchical"
        _, per_user = _scan_hierarchical(root)
        found = LabelMap.from_folder_names(list(per_user))
        files = [p for name in found.names for p in per_user[name]]
        names_of = [name for name in found.names for _ in per_user[name]]

    lm = found
    if label_map is not None:
        lm = label_map
        unknown = []
        for name, uid in zip(found.names, found.ids):
            try:
                lm.index_of(name)
            except DataError:
                try:
                    lm.index_of(uid)
                except DataError:
                    unknown.append(name)
        if unknown:
            raise DataError(
                f"{root} holds users the model was not trained on: {_short_list(unknown)}; "
                f"the model knows {_short_list(lm.names, 40)}. Remove those users or use a model trained on them"
            )
    if num_users is not None and num_users != len(lm):
        what = "the model's label map has" if label_map is not None else f"{root} ({layout} layout) holds"
        raise DataError(
            f"num_users={num_users} but {what} {len(lm)} users ({_short_list(lm.names, 6)}); "
            f"set --num-users {len(lm)} (or leave it out) or fix the data"
        )

    def index(name: str) -> int:
        try:
            return lm.index_of(name)
        except DataError:
            return lm.index_of(found.ids[found.names.index(name)])

    name_to_index = {name: index(name) for name in found.names}
    kept, labels, skipped = [], [], []
    for path, name in zip(files, names_of):
        problem = _header_problem(path)
        if problem is None:
            kept.append(path)
            labels.append(name_to_index[name])
        else:
            skipped.append((path, problem))
    if not kept:
        raise DataError(f"none of the {len(files)} images under {root} could be read (e.g. {skipped[0][0]}: {skipped[0][1]})")
    have = set(labels)
    dead = [name for name in found.names if name_to_index[name] not in have]
    if dead:
        raise DataError(f"every image of user(s) {_short_list(dead)} in {root} is unreadable; fix or remove them")
    return DataIndex(root=root, layout=layout, files=kept, labels=labels, label_map=lm, skipped=skipped)


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


def _invert_colormap(rgb: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """rgb_to_scalar, solved once per distinct colour (a spectrogram has at most a few hundred)
    instead of once per pixel; returns (H, W) scalars and the pixel-weighted residual."""
    from .colormap import lookup_table, rgb_to_scalar

    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    uniq, inverse, counts = np.unique(packed.reshape(-1), return_inverse=True, return_counts=True)
    colours = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=-1).astype(np.uint8)
    scalars, _ = rgb_to_scalar(colours, name)
    # residual per distinct colour = distance to the nearest table colour, weighted by pixel count
    lut = np.rint(lookup_table(name))
    c = colours.astype(np.float32)
    d2 = (c**2).sum(1, keepdims=True) - 2.0 * c @ lut.T + (lut**2).sum(1)
    dist = np.sqrt(np.maximum(d2.min(1), 0.0))
    residual = float((dist * counts).sum() / counts.sum())
    return scalars[inverse.reshape(-1)].reshape(rgb.shape[:2]).astype(np.float32), residual


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
    scalars, residual = _invert_colormap(rgb, colormap)
    return scalars[..., None], residual


def _decode(path: Path, image_size: int, colormap: str | None) -> tuple[np.ndarray, float | None]:
    with Image.open(path) as im:
        im.load()  # raises on truncated data here, inside the caller's per-file guard
        arr, residual = _to_unit_array(im, colormap)
    return _resize_channels(arr, image_size), residual


# --------------------------------------------------------------------------------------------
# splits


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
        dataset_or_index: a `DataIndex` or `MicroDopplerDataset` (its files and labels).
        fractions: (train, val, test), summing to 1.
        seed: split seed.
    Returns:
        {"seed", "fractions", "train": [...], "val": [...], "test": [...]} (plain JSON types).
    """
    fr = _validate_fractions(fractions)
    obj = dataset_or_index
    root = Path(obj.root)
    labels = obj.labels if isinstance(obj, DataIndex) else obj.user_ids.tolist()
    lm = obj.label_map
    by_user: dict[int, list[str]] = {}
    for path, lab in zip(obj.files, labels):
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
        logger.warning("users with fewer than 3 images go to the training split only: %s", _short_list(small))
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
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"split file {path} is not readable JSON ({e}); delete it to make a new split") from None
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
                f"(e.g. {_short_list(new, 3)}); delete the split file to make a new split, or remove those images"
            )
        gone = listed - present - {index.relpath(p) for p, _ in index.skipped}
        if gone:
            warnings.warn(
                f"split file {split_file} lists {len(gone)} image(s) no longer in {index.root} "
                f"(e.g. {_short_list(sorted(gone), 3)}); they are ignored",
                DataWarning,
                stacklevel=3,
            )
        return split
    split = make_split(index, fractions=fractions, seed=seed)
    if split_file is not None:
        save_split(split, split_file)
    return split


# --------------------------------------------------------------------------------------------
# dataset


def _normalise_colormap(colormap: str | None) -> str | None:
    if colormap is None or str(colormap).lower() == "none":
        return None
    from .colormap import lookup_table

    try:
        lookup_table(colormap)
    except ValueError as e:
        raise DataError(f"{e} (or 'none' to keep RGB)") from None
    return colormap


class MicroDopplerDataset(Dataset):
    """All of a data set's images, decoded once and held in memory.

    Items are (image FloatTensor (C, H, W) in [-1, 1], user index). Under a colormap (default
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
        files, labels = list(index.files), list(index.labels)

        self.split_info = None
        if split is not None:
            self.split_info = resolve_split(index, split_file, split_seed, split_fractions)
            wanted = set(self.split_info[split])
            keep = [i for i, f in enumerate(files) if index.relpath(f) in wanted]
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]

        store, kept, decode_skipped, residual = self._load(files, cache_dir)
        self.skipped = list(index.skipped) + decode_skipped
        self._store = store
        self.files = [files[i] for i in kept]
        self.user_ids = torch.tensor([labels[i] for i in kept], dtype=torch.long)
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
                logger.warning("ignoring unreadable decode cache %s (%s)", cache, e)

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
                logger.warning("could not write decode cache %s (%s)", cache, e)
        return store, kept, [(files[i], reason) for i, reason in skipped], residual

    def _report(self, total: int) -> None:
        if self.skipped:
            listing = "; ".join(f"{p} ({why})" for p, why in self.skipped[:20])
            more = f"; ... {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            warnings.warn(f"skipped {len(self.skipped)} of {total} images: {listing}{more}", DataWarning, stacklevel=3)
        if self.residual is not None:
            from .colormap import check_colormap_residual

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
        return self.images, self.user_ids.clone()

    def counts(self) -> list[int]:
        """Images per user index in this split."""
        return torch.bincount(self.user_ids, minlength=len(self.label_map)).tolist()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._to_float(self._store[i]), int(self.user_ids[i])

    # make_split accepts a dataset, so expose its labels the way DataIndex does
    @property
    def labels(self) -> list[int]:
        return self.user_ids.tolist()

    def __repr__(self) -> str:
        return (
            f"MicroDopplerDataset({len(self)} images, {len(self.label_map)} users, {self.layout}, "
            f"split={self.split}, {self.channels}x{self.image_size}x{self.image_size}, colormap={self.colormap})"
        )


# --------------------------------------------------------------------------------------------
# display


def to_display_rgb(images_minus1_1, colormap: str | None = "jet") -> np.ndarray:
    """Model-space images -> uint8 RGB for viewing.

    Args:
        images_minus1_1: (N, C, H, W) or (C, H, W) tensor/array in [-1, 1]; C is 1 (scalar) or 3.
        colormap: colormap to re-colour 1-channel images with; "none" shows them grey. 3-channel
            images pass through.
    Returns:
        uint8 array (N, H, W, 3).
    """
    x = images_minus1_1
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, C, H, W) with C in (1, 3), got shape {x.shape}")
    unit = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    cmap = None if colormap is None or str(colormap).lower() == "none" else colormap
    if unit.shape[1] == 3:
        return np.rint(rearrange(unit, "n c h w -> n h w c") * 255.0).astype(np.uint8)
    if cmap is None:
        grey = np.rint(unit[:, 0] * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    from .colormap import scalar_to_rgb

    return scalar_to_rgb(unit[:, 0], cmap)


def save_image_grid(images, path: str | Path, nrow: int = 8, colormap: str | None = "jet", padding: int = 2,
                    min_tile: int = 0) -> Path:
    """Save images as one PNG grid.

    Args:
        images: (N, C, H, W) in [-1, 1] (see to_display_rgb).
        path: output PNG.
        nrow: images per row.
        colormap: as in to_display_rgb.
        padding: white pixels between images.
        min_tile: enlarge tiles smaller than this by a whole factor (nearest neighbour, so no
            pixel is invented), for grids of 16-32 px images a person has to look at.
    """
    rgb = to_display_rgb(images, colormap)
    factor = max(1, math.ceil(min_tile / rgb.shape[1])) if min_tile else 1
    if factor > 1:
        rgb = rgb.repeat(factor, axis=1).repeat(factor, axis=2)
    n, h, w, _ = rgb.shape
    ncol = max(1, min(int(nrow), n))
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + padding) + padding, ncol * (w + padding) + padding, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y : y + h, x : x + w] = rgb[k]
    path = Path(path)
    with atomic_write(path) as f:
        Image.fromarray(grid).save(f, format="PNG")
    return path
