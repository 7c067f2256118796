"""The one display path: colourise (images in [0, 1]), the grid builder and PNG grids; plus
checked_fields, the from_dict rule."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_md.data.colormap import scalar_to_rgb
from dalle2_md.data.display import colourise, save_grid, tile_grid
from dalle2_md.utils import BundleError, checked_fields


def test_colourise_and_save_grid_take_0_1(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (3, 1, 6, 6)) / 255.0
    rgb = colourise(torch.from_numpy(values).float(), "jet")
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 6, 6, 3)
    assert np.array_equal(rgb, scalar_to_rgb(values[:, 0]))
    grey = colourise(values[0], "none")  # (C, H, W) is one image
    assert grey.shape == (1, 6, 6, 3) and np.array_equal(grey[0, ..., 1], np.rint(values[0, 0] * 255))
    a = save_grid(values, tmp_path / "a.png", nrow=2, colormap="jet", min_tile=12)
    assert Image.open(a).size == (2 * 14 + 2, 2 * 14 + 2)  # 6 px tiles doubled to 12, padding 2
    # each tile is its colourised image, doubled by nearest neighbour
    assert np.array_equal(np.asarray(Image.open(a).convert("RGB"))[2:14, 2:14], rgb[0].repeat(2, 0).repeat(2, 1))


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


def _stored_configs():
    """(class, an instance, how it is written into bundles and checkpoints)."""
    from dalle2_md.models.embedding import ClipConfig
    from dalle2_md.models.decoder import DecoderConfig
    from dalle2_md.models.prior import PriorConfig
    from dalle2_md.evaluation.recogniser import RecogniserConfig
    from dalle2_md.training.loop import TrainConfig
    from dalle2_md.models.vqgan import VQGanConfig

    return [(ClipConfig, ClipConfig(num_users=3, image_size=16), ClipConfig.to_dict),
            (DecoderConfig, DecoderConfig(vqgan=VQGanConfig()), DecoderConfig.to_dict),
            (VQGanConfig, VQGanConfig(), VQGanConfig.to_dict),
            (TrainConfig, TrainConfig(max_steps=3), TrainConfig.to_dict),
            (RecogniserConfig, RecogniserConfig(num_users=3), asdict),
            (PriorConfig, PriorConfig(num_users=3, dim=16, embed_dim=8), asdict)]


@pytest.mark.parametrize("index", range(6))
def test_every_stored_config_round_trips_and_refuses_an_unknown_key(index):
    cls, config, dump = _stored_configs()[index]
    stored = dump(config)
    assert cls.from_dict(stored) == config
    with pytest.raises(BundleError, match=r"unknown keys \['sparkle'\]"):
        cls.from_dict({**stored, "sparkle": 1})
    if "vqgan" in stored:  # the nested VQGAN config is held to the same rule
        with pytest.raises(BundleError, match=r"its vqgan\) has unknown keys \['sparkle'\]"):
            cls.from_dict({**stored, "vqgan": {**stored["vqgan"], "sparkle": 1}})


def test_a_bundle_with_an_unknown_config_key_is_refused_naming_file_and_key(tmp_path):
    from dalle2_md.evaluation.recogniser import Recogniser, RecogniserConfig

    path = Recogniser(config=RecogniserConfig(num_users=2, image_size=16, widths=(4,), feature_dim=4)).save(tmp_path / "rec.pt")
    assert Recogniser.load(path).config.num_users == 2
    payload = torch.load(path, weights_only=True)
    payload["config"]["sparkle"] = 1
    torch.save(payload, path)
    with pytest.raises(BundleError, match=r"rec\.pt: recogniser config has unknown keys \['sparkle'\]"):
        Recogniser.load(path)


def test_a_prior_bundle_with_an_unknown_config_key_is_refused_naming_file_and_key(tmp_path):
    from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior

    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=2, dim=8, depth=1, heads=2, dim_head=4, timesteps=10,
                                                      sample_timesteps=2))
    path = prior.save(tmp_path / "prior.pt")
    assert UserConditionedDiffusionPrior.load(path).config == prior.config
    payload = torch.load(path, weights_only=True)
    payload["config"]["sparkle"] = 1
    torch.save(payload, path)
    with pytest.raises(BundleError, match=r"prior\.pt: prior config has unknown keys \['sparkle'\]"):
        UserConditionedDiffusionPrior.load(path)
