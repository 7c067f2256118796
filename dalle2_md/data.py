"""The old home of the data layer, kept so existing imports work (`from dalle2_md.data import
MicroDopplerDataset`). The code lives one concept per module (issue 11):

    labels.py    LabelMap: user labels on disk <-> class indices
    scanning.py  finding the images and users under a data root (both layouts), header checks
    splits.py    the per-user train/val/test split and its JSON file
    dataset.py   MicroDopplerDataset: decoding every image once into memory, the decode cache
    display.py   colourising, grids and PNGs (images in [0, 1])

New code imports from those modules. The old [-1, 1] display helpers `to_display_rgb` and
`save_image_grid` are gone: call `display.colourise((x + 1) / 2, colormap)` and
`display.save_grid((x + 1) / 2, path, ...)`.
"""

from __future__ import annotations

from .dataset import CACHE_FORMAT_VERSION, MicroDopplerDataset, _decode, _normalise_colormap  # noqa: F401  moved: issue 11
from .labels import DATA_LAYOUTS, USER_DIR_RE, LabelMap  # noqa: F401  moved: issue 11
from .scanning import IMAGE_EXTENSIONS, LAYOUTS, METADATA_FILE, DataIndex, DataWarning, scan_data_root  # noqa: F401  moved: issue 11
from .splits import SPLIT_FORMAT_VERSION, SPLITS, load_split, make_split, resolve_split, save_split  # noqa: F401  moved: issue 11
from .utils import short_list as _short_list  # noqa: F401  moved: issue 11

