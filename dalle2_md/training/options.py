"""Data options: where a run's data is and how it is read.

Owns: DataOptions (the data flags of every training command); `load_train_data` (the train
split a run reads, with its label map and split written into the run folder, and skipped files
named); the image size / colormap a run takes from the bundle it builds on when the flags leave
them out (`recorded_data_settings`, `with_settings_from`, `with_defaults`); and how a data set's
samples are shown (`display_colormap`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from dalle2_md.utils import DataError, exists, say

DEFAULT_IMAGE_SIZE, DEFAULT_COLORMAP = 64, "jet"  # when neither a flag nor a bundle says


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """Where the data is and how to read it.

    Args:
        data_root: folder of user folders, or images/ + metadata.json.
        num_users: expected number of users (checked), or None.
        image_size: side of the square images the models see; None: the size recorded in the
            bundle the run builds on (see `with_settings_from`), else DEFAULT_IMAGE_SIZE.
        colormap: colormap inverted into one channel ("jet"), or "none" to keep RGB; None: as
            for image_size.
        flat_structure: require the flat layout (images/ + metadata.json).
        split_seed: seed of the per-user train/val/test split.
        cache_dir: cache of decoded images and image embeddings (None: no image cache; the
            embeddings then go to `<run_dir>/../.cache`).
    """

    data_root: str
    num_users: int | None = None
    image_size: int | None = DEFAULT_IMAGE_SIZE
    colormap: str | None = DEFAULT_COLORMAP
    flat_structure: bool = False
    split_seed: int = 0
    cache_dir: str | None = None


def load_train_data(data: DataOptions, run_dir: str | Path):
    """The train split of the data set; writes `label_map.json` and `split.json` into the run
    folder (an existing split.json is reused, so a resumed run sees the same images).

    Args:
        data: the data options.
        run_dir: the run folder.
    """
    from dalle2_md.data.dataset import MicroDopplerDataset
    from dalle2_md.data.scanning import METADATA_FILE

    data = with_defaults(data)
    root = Path(data.data_root).expanduser()
    if data.flat_structure and root.is_dir() and not (root / METADATA_FILE).is_file():
        raise DataError(
            f"--flat_structure was given but {root} has no {METADATA_FILE}; the flat layout is "
            f"{root}/images/*.png + {root}/{METADATA_FILE}. Leave out --flat_structure for user folders."
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = MicroDopplerDataset(
        root, image_size=data.image_size, colormap=data.colormap, num_users=data.num_users,
        split="train", split_file=run_dir / "split.json", split_seed=data.split_seed, cache_dir=data.cache_dir,
    )
    ds.label_map.save(run_dir / "label_map.json")
    say(f"data: {ds.root} ({ds.layout}), {len(ds.label_map)} users, {len(ds)} training images "
        f"at {ds.channels}x{ds.image_size}x{ds.image_size}")
    if ds.skipped:
        say(f"data: {skipped_summary(ds.skipped)}")
    return ds


def skipped_summary(skipped, limit: int = 10) -> str:
    """'skipped 2 unreadable file(s): a.png (why), b.png (why)' for a data set's `skipped` list."""
    names = ", ".join(f"{Path(p).name} ({why})" for p, why in skipped[:limit])
    more = f", ... {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)} unreadable file(s): {names}{more}"


def with_defaults(data: DataOptions) -> DataOptions:
    """The data options with an unset image size / colormap given the defaults."""
    return replace(data, image_size=data.image_size or DEFAULT_IMAGE_SIZE, colormap=data.colormap or DEFAULT_COLORMAP)


def recorded_data_settings(bundle_path: str | Path) -> dict:
    """{"image_size", "colormap"} of the data an embedding-model bundle was trained on,
    as recorded in its meta (older files without it: the model's own image size)."""
    from dalle2_md.models.bundle import load_bundle

    payload = load_bundle(bundle_path, kind="clip")
    meta, config = payload.get("meta") or {}, payload.get("config") or {}
    channels = config.get("channels", 1)
    return {"image_size": meta.get("image_size", config.get("image_size")),
            "colormap": meta.get("colormap", DEFAULT_COLORMAP if channels == 1 else "none")}


def with_settings_from(data: DataOptions, bundle_path: str | Path | None) -> DataOptions:
    """Fill the image size and colormap that were not given (None) from the bundle the run
    builds on, so a run reads the data as the embedding model's run did; then the defaults.

    Args:
        data: the data options; given values are kept.
        bundle_path: an embedding-model (clip) bundle, or None.
    """
    if exists(bundle_path) and (data.image_size is None or data.colormap is None):
        recorded = recorded_data_settings(bundle_path)
        filled = {k: v for k, v in recorded.items() if getattr(data, k) is None and exists(v)}
        if filled:
            say(f"data: {', '.join(f'{k} {v}' for k, v in filled.items())} (as recorded in {bundle_path})")
            data = replace(data, **filled)
    return with_defaults(data)


def display_colormap(ds) -> str:
    """How samples of this data set are shown: greyscale data (a colormap given but no colour
    image met, `ds.residual` None) is shown grey, colour data through its colormap."""
    if ds.colormap is None or ds.residual is None:
        return "none"
    return ds.colormap

