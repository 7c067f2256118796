"""The one display path: colourise (images in [0, 1]), the grid builder, and the old [-1, 1]
wrappers in dalle2_md.data giving the same pixels; plus checked_fields, the from_dict rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_md.colormap import scalar_to_rgb
from dalle2_md.data import save_image_grid, to_display_rgb
from dalle2_md.display import colourise, save_grid, tile_grid
from dalle2_md.utils import BundleError, checked_fields


def test_colourise_takes_0_1_and_the_old_names_take_minus1_1(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (3, 1, 6, 6)) / 255.0
    rgb = colourise(torch.from_numpy(values).float(), "jet")
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 6, 6, 3)
    assert np.array_equal(rgb, scalar_to_rgb(values[:, 0]))
    assert np.array_equal(to_display_rgb(values * 2 - 1, "jet"), rgb)
    grey = colourise(values[0], "none")  # (C, H, W) is one image
    assert grey.shape == (1, 6, 6, 3) and np.array_equal(grey[0, ..., 1], np.rint(values[0, 0] * 255))
    a = save_grid(values, tmp_path / "a.png", nrow=2, colormap="jet", min_tile=12)
    b = save_image_grid(values * 2 - 1, tmp_path / "b.png", nrow=2, colormap="jet", min_tile=12)
    assert a.read_bytes() == b.read_bytes()
    assert Image.open(a).size == (2 * 14 + 2, 2 * 14 + 2)  # 6 px tiles doubled to 12, padding 2


def test_tile_grid_places_tiles_row_by_row_on_white():
    tiles = np.stack([np.full((4, 5, 3), k, dtype=np.uint8) for k in range(5)])
    grid = tile_grid(tiles, nrow=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 7, 0] == 1 and grid[6, 7, 0] == 4
    assert (grid[6:10, 13:18] == 255).all() and (grid[0] == 255).all()  # the missing sixth tile, the margin


@dataclass
class _Config:
    width: int = 8
    depth: int = 2


def test_checked_fields_refuses_unknown_keys_and_drops_retired_ones():
    assert checked_fields(_Config, {"width": 4, "old_flag": True}, what="toy config", retired=("old_flag",)) == {"width": 4}
    with pytest.raises(BundleError, match=r"toy config has unknown keys \['colour'\].*newer dalle2-md"):
        checked_fields(_Config, {"width": 4, "colour": 1}, what="toy config")
