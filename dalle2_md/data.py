"""The old home of the data layer, kept so existing imports work (`from dalle2_md.data import
MicroDopplerDataset`). The code lives one concept per module (issue 11):

    labels.py    LabelMap: user labels on disk <-> class indices
    scanning.py  finding the images and users under a data root (both layouts), header checks
    splits.py    the per-user train/val/test split and its JSON file
    dataset.py   MicroDopplerDataset: decoding every image once into memory, the decode cache
    display.py   colourising, grids and PNGs (images in [0, 1])

New code imports from those modules. The two display functions below keep their old [-1, 1]
input range for old callers; they are thin wrappers over display.py.
"""

from __future__ import annotations

from pathlib import Path

from .dataset import CACHE_FORMAT_VERSION, MicroDopplerDataset, _decode, _normalise_colormap  # noqa: F401  moved: issue 11
from .display import _as_array, colourise, save_grid
from .labels import DATA_LAYOUTS, USER_DIR_RE, LabelMap  # noqa: F401  moved: issue 11
from .scanning import IMAGE_EXTENSIONS, LAYOUTS, METADATA_FILE, DataIndex, DataWarning, scan_data_root  # noqa: F401  moved: issue 11
from .splits import SPLIT_FORMAT_VERSION, SPLITS, load_split, make_split, resolve_split, save_split  # noqa: F401  moved: issue 11
from .utils import short_list as _short_list  # noqa: F401  moved: issue 11


def to_display_rgb(images_minus1_1, colormap: str | None = "jet"):
    """Old name: `display.colourise` for images in [-1, 1]. Returns uint8 (N, H, W, 3)."""
    return colourise((_as_array(images_minus1_1) + 1.0) / 2.0, colormap)


def save_image_grid(images, path: str | Path, nrow: int = 8, colormap: str | None = "jet", padding: int = 2,
                    min_tile: int = 0) -> Path:
    """Old name: `display.save_grid` for images in [-1, 1]."""
    return save_grid((_as_array(images) + 1.0) / 2.0, path, nrow=nrow, colormap=colormap, padding=padding,
                     min_tile=min_tile)
