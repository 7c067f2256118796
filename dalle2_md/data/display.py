"""How images are shown: the one colourising path (`colourise`), the one grid builder
(`tile_grid`, with `image_grid` / `save_grid` on top) and PNG writing (`write_png`).

One value range: every function here takes images in [0, 1], the range the decoder samples in
(`model.sample(..., colorize=False)`) and the training sample grids use. Data-set tensors are
in [-1, 1] (model space, see dataset.py): pass `(x + 1) / 2`.

torch is not imported at module level (the simulator draws its PNGs through here without it);
tensors are accepted anywhere an array is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from einops import rearrange

from dalle2_md.data.colormap import scalar_to_rgb
from dalle2_md.utils import atomic_write

GRID_PADDING = 2  # white pixels between grid tiles
GRID_MIN_TILE = 96  # grids and strips show small images enlarged to at least this many pixels


def _as_array(images) -> np.ndarray:
    if hasattr(images, "detach"):  # a torch tensor
        images = images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def colourise(images, colormap: str | None = "jet") -> np.ndarray:
    """Images in [0, 1] -> uint8 RGB for viewing.

    Args:
        images: (N, C, H, W) or (C, H, W) tensor or array in [0, 1] (values outside are
            clipped); C is 1 (a scalar spectrogram) or 3 (RGB).
        colormap: colormap 1-channel images are drawn through; None or "none" shows them grey.
            3-channel images pass through.
    Returns:
        uint8 array (N, H, W, 3).
    """
    x = _as_array(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, C, H, W) with C in (1, 3), got shape {x.shape}")
    unit = np.clip(x, 0.0, 1.0)
    if unit.shape[1] == 3:
        return np.rint(rearrange(unit, "n c h w -> n h w c") * 255.0).astype(np.uint8)
    if colormap is None or str(colormap).lower() == "none":
        grey = np.rint(unit[:, 0] * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return scalar_to_rgb(unit[:, 0], colormap)


def as_image_tensor(rgb: np.ndarray):
    """uint8 RGB (N, H, W, 3) from `colourise` -> float tensor (N, 3, H, W) in [0, 1]."""
    import torch

    return rearrange(torch.from_numpy(rgb), "n h w c -> n c h w").float() / 255.0


def tile_grid(tiles: np.ndarray, *, nrow: int = 8, padding: int = GRID_PADDING, min_tile: int = 0) -> np.ndarray:
    """Lay uint8 RGB tiles out row by row on a white canvas: the one grid builder.

    Args:
        tiles: uint8 (N, h, w, 3), e.g. from `colourise`.
        nrow: tiles per row (the last row may be short).
        padding: white pixels between tiles and around the edge.
        min_tile: enlarge tiles smaller than this by a whole factor (nearest neighbour, so no
            pixel is invented), for grids of 16-32 px images a person has to look at.
    Returns:
        uint8 (rows * (h + padding) + padding, ncol * (w + padding) + padding, 3).
    """
    factor = max(1, math.ceil(min_tile / tiles.shape[1])) if min_tile else 1
    if factor > 1:
        tiles = tiles.repeat(factor, axis=1).repeat(factor, axis=2)
    n, h, w, _ = tiles.shape
    ncol = max(1, min(int(nrow), n))
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + padding) + padding, ncol * (w + padding) + padding, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y : y + h, x : x + w] = tiles[k]
    return grid


def image_grid(images, *, nrow: int = 8, colormap: str | None = "jet", padding: int = GRID_PADDING,
               min_tile: int = 0) -> np.ndarray:
    """Images in [0, 1] (see `colourise`) -> one uint8 RGB grid (H, W, 3) (see `tile_grid`)."""
    return tile_grid(colourise(images, colormap), nrow=nrow, padding=padding, min_tile=min_tile)


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W, 3) array as a PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_write(path) as f:
        Image.fromarray(rgb).save(f, format="PNG")
    return path


def save_grid(images, path: str | Path, *, nrow: int = 8, colormap: str | None = "jet", padding: int = GRID_PADDING,
              min_tile: int = 0) -> Path:
    """Save images in [0, 1] as one PNG grid (`image_grid` + `write_png`); returns the path."""
    return write_png(image_grid(images, nrow=nrow, colormap=colormap, padding=padding, min_tile=min_tile), path)
