"""The old home of the data layer, kept so existing imports work (`from dalle2_md.data import
MicroDopplerDataset`). The code lives one concept per module (issue 11):

    labels.py    LabelMap: user labels on disk <-> class indices
    scanning.py  finding the images and users under a data root (both layouts), header checks
    splits.py    the per-user train/val/test split and its JSON file
    dataset.py   MicroDopplerDataset: decoding every image once into memory, the decode cache
    display.py   colourising, grids and PNGs (images in [0, 1])

New code imports from those modules. The old [-1, 1] display helpers `to_display_rgb` and
`save_image_grid` remain as one-line wrappers over `display.py` (which takes [0, 1]) so users'
scripts keep working; they warn once per call.
"""

from __future__ import annotations

from .dataset import CACHE_FORMAT_VERSION, MicroDopplerDataset, _decode, _normalise_colormap  # noqa: F401  moved: issue 11
from .labels import DATA_LAYOUTS, USER_DIR_RE, LabelMap  # noqa: F401  moved: issue 11
from .scanning import IMAGE_EXTENSIONS, LAYOUTS, METADATA_FILE, DataIndex, DataWarning, scan_data_root  # noqa: F401  moved: issue 11
from .splits import SPLIT_FORMAT_VERSION, SPLITS, load_split, make_split, resolve_split, save_split  # noqa: F401  moved: issue 11
from .utils import short_list as _short_list  # noqa: F401  moved: issue 11



def to_display_rgb(images, colormap="jet"):
    """Deprecated: `display.colourise((images + 1) / 2, colormap)` (images in [-1, 1])."""
    import warnings

    from .display import colourise

    warnings.warn("data.to_display_rgb is deprecated; use display.colourise((x + 1) / 2, colormap)",
                  DeprecationWarning, stacklevel=2)
    return colourise((images + 1) / 2, colormap)


def save_image_grid(images, path, nrow: int = 8, colormap="jet", padding: int = 2, min_tile: int = 0):
    """Deprecated: `display.save_grid((images + 1) / 2, path, ...)` (images in [-1, 1])."""
    import warnings

    from .display import save_grid

    warnings.warn("data.save_image_grid is deprecated; use display.save_grid((x + 1) / 2, path, ...)",
                  DeprecationWarning, stacklevel=2)
    return save_grid((images + 1) / 2, path, nrow=nrow, colormap=colormap, padding=padding, min_tile=min_tile)
