"""Scanning a data root: which image files are there, which user each belongs to, and which
files are unreadable (a cheap header check; pixels are decoded later by dataset.py).

Two layouts are detected automatically:

    hierarchical: data_root/<prefix><int>/...image files   (user_0, user_01, ID_1, subject7)
    flat:         data_root/images/*.png + data_root/metadata.json
                  [{"filename": "user0_001.png", "user_id": 0}, ...]

Anything wrong with the data raises one `DataError` that names the problem, the file and the
fix; single unreadable images are skipped and listed (`DataIndex.skipped`).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from dalle2_md.data.labels import USER_DIR_RE, LabelMap
from dalle2_md.utils import DataError, short_list

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
METADATA_FILE = "metadata.json"


class DataWarning(UserWarning):
    """Something in the data set was skipped or looks off, but training can go on."""


@dataclass
class DataIndex:
    """What is on disk, before decoding: candidate image files and their user indices (0..N-1;
    `label_map` names them)."""

    root: Path
    layout: str
    files: list[Path]
    user_indices: list[int]
    label_map: LabelMap
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def relpath(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def counts(self) -> list[int]:
        """Images per user index."""
        return np.bincount(np.asarray(self.user_indices, dtype=np.int64), minlength=len(self.label_map)).tolist()


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
            f"{root}: ignoring folders whose names do not end in a user number: {short_list(o.name for o in others)}",
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
            f"{short_list(missing, 5)}; add the files or remove their entries"
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
                f"{root} holds users the model was not trained on: {short_list(unknown)}; "
                f"the model knows {short_list(lm.names, 40)}. Remove those users or use a model trained on them"
            )
    if num_users is not None and num_users != len(lm):
        what = "the model's label map has" if label_map is not None else f"{root} ({layout} layout) holds"
        raise DataError(
            f"num_users={num_users} but {what} {len(lm)} users ({short_list(lm.names, 6)}); "
            f"set --num-users {len(lm)} (or leave it out) or fix the data"
        )

    def index(name: str) -> int:
        try:
            return lm.index_of(name)
        except DataError:
            return lm.index_of(found.ids[found.names.index(name)])

    name_to_index = {name: index(name) for name in found.names}
    kept, user_indices, skipped = [], [], []
    for path, name in zip(files, names_of):
        problem = _header_problem(path)
        if problem is None:
            kept.append(path)
            user_indices.append(name_to_index[name])
        else:
            skipped.append((path, problem))
    if not kept:
        raise DataError(f"none of the {len(files)} images under {root} could be read (e.g. {skipped[0][0]}: {skipped[0][1]})")
    have = set(user_indices)
    dead = [name for name in found.names if name_to_index[name] not in have]
    if dead:
        raise DataError(f"every image of user(s) {short_list(dead)} in {root} is unreadable; fix or remove them")
    return DataIndex(root=root, layout=layout, files=kept, user_indices=user_indices, label_map=lm, skipped=skipped)


def source_image_size(data_root: str | Path, *, sample: int = 64) -> int:
    """The side the data's images have on disk (the larger side, most common among the first
    `sample` files): the size an upsampler trained on this data writes.

    Args:
        data_root: as for `scan_data_root`.
        sample: how many image headers to read.
    """
    from collections import Counter

    sides = Counter()
    for path in scan_data_root(data_root).files[:sample]:
        with Image.open(path) as im:
            sides[max(im.size)] += 1
    return sides.most_common(1)[0][0]
