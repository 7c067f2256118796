"""The recogniser's physics augmentations keep what identifies a walker within their ranges, stay
in [-1, 1], follow their seed, and leave the recogniser's old settings and cache keys untouched."""

from dataclasses import replace

import pytest
import torch

from dalle2_md.data.simulator import get_profile, image_axes
from dalle2_md.evaluation import recogniser as rec
from dalle2_md.evaluation.augmentations import (
    bright_mask,
    doppler_flip_rows,
    flip_doppler,
    physics_augment,
    respeckle,
    scale_doppler,
    shift_noise_floor,
    stretch_time,
)
from dalle2_md.evaluation.kinematics import read_kinematics
from dalle2_md.evaluation.protocol import simulate
from dalle2_md.evaluation.recogniser import LEGACY_RECOGNISER_TRAIN, RecogniserConfig, RecogniserTrainConfig
from dalle2_md.utils import UserError

ALL_ON = RecogniserTrainConfig(doppler_scale=0.1, time_stretch=0.05, doppler_flip=0.5, snr_jitter_db=6.0, respeckle=0.5)


@pytest.fixture(scope="module")
def walks():
    """Eight gait31 walks at 64 px (four users, both directions among them), model space."""
    images, _ = simulate(4, 2, 64, 0, get_profile("gait31"))
    return images


def _old_augment(x, cfg, g):
    """`recogniser._augment` as it was before the physics augmentations (copied verbatim)."""
    n, _, h, w = x.shape
    limit = int(round(cfg.max_shift * w))
    if limit > 0:
        shift = torch.randint(-limit, limit + 1, (n,), generator=g)
        cols = (torch.arange(w)[None, :] - shift[:, None]) % w
        x = torch.gather(x, 3, cols[:, None, None, :].expand_as(x))
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=g)
    if cfg.time_masks > 0 or cfg.freq_masks > 0:
        fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        cols = rec._band_masks(n, w, cfg.time_masks, cfg.time_mask_width, g)
        rows = rec._band_masks(n, h, cfg.freq_masks, cfg.freq_mask_width, g)
        masked = rows[:, None, :, None] | cols[:, None, None, :]
        x = torch.where(masked, fill, x)
    return x


def _fixed_batch():
    return (torch.arange(6 * 16 * 16) % 9).float().reshape(6, 1, 16, 16) / 4 - 1  # exact in float32


@pytest.mark.parametrize("cfg", [RecogniserTrainConfig(), LEGACY_RECOGNISER_TRAIN,
                                 replace(RecogniserTrainConfig(), time_masks=0, freq_masks=0, noise_std=0.0)])
def test_defaults_reproduce_the_old_augment_and_rng_stream(cfg):
    x = _fixed_batch()
    g_old, g_new = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(rec._augment(x, cfg, g_new), _old_augment(x, cfg, g_old))
    assert torch.equal(torch.rand(4, generator=g_new), torch.rand(4, generator=g_old))  # nothing more was drawn


def test_defaults_reproduce_the_values_recorded_before_the_change():
    x = _fixed_batch()
    for cfg, total in ((RecogniserTrainConfig(), 0.16415372092160396), (LEGACY_RECOGNISER_TRAIN, -2.5526065964077134)):
        assert float(rec._augment(x, cfg, torch.Generator().manual_seed(3)).double().sum()) == pytest.approx(total, abs=1e-9)


def test_cache_keys_of_settings_without_physics_augmentations_are_unchanged():
    x, ids = _fixed_batch(), torch.arange(6) % 3
    shape = RecogniserConfig(num_users=3, image_size=16)
    # the keys these settings had before the physics augmentations existed
    assert rec.recogniser_cache_key(x, ids, config=shape, train=RecogniserTrainConfig()) == "f955ef4903d258b95786"
    assert rec.recogniser_cache_key(x, ids, config=shape, train=LEGACY_RECOGNISER_TRAIN) == "df80832eb5e18de82aa2"
    assert not set(rec.PHYSICS_AUGMENTATIONS) & set(RecogniserTrainConfig().key_dict())
    on = replace(RecogniserTrainConfig(), doppler_flip=0.5)
    assert on.key_dict()["doppler_flip"] == 0.5
    assert rec.recogniser_cache_key(x, ids, config=shape, train=on) != "f955ef4903d258b95786"


@pytest.mark.parametrize("bad", [dict(doppler_scale=1.0), dict(time_stretch=-0.1), dict(doppler_flip=1.5),
                                 dict(snr_jitter_db=-1.0), dict(respeckle=2.0)])
def test_out_of_range_settings_are_refused(bad):
    with pytest.raises(UserError):
        RecogniserTrainConfig(**bad)


def test_all_off_leaves_the_batch_and_the_generator_untouched(walks):
    g = torch.Generator().manual_seed(1)
    assert physics_augment(walks, RecogniserTrainConfig(), g) is walks
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("h", [16, 17, 64])
def test_flip_maps_plus_v_to_minus_v_exactly_and_twice_is_identity(h):
    zero = image_axes(h)["zero_row"]  # the simulator's convention: row r shows (zero - r) velocity steps
    assert zero == h // 2
    x = torch.full((1, 1, h, 8), -1.0)
    x[0, 0, zero - 5] = 1.0  # a torso line at +5 steps
    x[0, 0, zero] = 0.3  # clutter at zero Doppler
    y = flip_doppler(x)
    assert torch.equal(y[0, 0, zero + 5], x[0, 0, zero - 5]) and torch.equal(y[0, 0, zero], x[0, 0, zero])
    assert int((y[0, 0, :, 0] == 1.0).nonzero()) == zero + 5
    assert torch.equal(flip_doppler(y), x)
    rows = doppler_flip_rows(h)
    assert sorted(rows.tolist()) == list(range(h))  # a permutation: nothing lost
    assert all((zero - r) == -(zero - int(rows[r])) for r in range(h) if rows[r] != r or r == zero)


def test_flip_turns_a_walk_towards_into_one_away(walks):
    for im in walks:
        before = read_kinematics(((im[0] + 1) / 2).numpy()).torso_px
        after = read_kinematics(((flip_doppler(im[None])[0, 0] + 1) / 2).numpy()).torso_px
        assert after == pytest.approx(-before, abs=1e-6)


def test_doppler_scaling_keeps_zero_fixed_and_moves_a_line_by_the_factor():
    h, zero = 64, 32
    x = torch.full((2, 1, h, 8), -0.8)
    x[:, :, zero - 15] = 1.0  # a line at +15 steps
    x[:, :, zero] = 0.5
    for f in (0.9, 1.1):
        y = scale_doppler(x, torch.tensor([f, 1.0]))
        assert torch.equal(y[1], x[1])  # factor 1: unchanged
        assert torch.equal(y[0, 0, zero], x[0, 0, zero])  # zero Doppler stays put
        profile = y[0, 0, :, 0] + 0.8  # above the background
        line = [r for r in range(h) if r < zero - 5]
        centre = float((profile[line] * torch.tensor(line)).sum() / profile[line].sum())
        assert centre == pytest.approx(zero - 15 * f, abs=0.05)  # at +15 f steps
        assert y.min() >= -1 and y.max() <= 1


def test_doppler_scaling_fills_with_the_background_and_scales_the_torso(walks):
    y = scale_doppler(walks, torch.full((len(walks),), 0.8))
    assert torch.isfinite(y).all() and y.min() >= -1 and y.max() <= 1
    assert torch.equal(y[:, :, 0], walks.flatten(2).median(dim=2).values[:, :, None].expand(-1, -1, 64))
    for f in (0.9, 1.1):
        ratios = []
        for im, out in zip(walks, scale_doppler(walks, torch.full((len(walks),), f))):
            ratios.append(read_kinematics(((out[0] + 1) / 2).numpy()).torso_px / read_kinematics(((im[0] + 1) / 2).numpy()).torso_px)
        assert sum(ratios) / len(ratios) == pytest.approx(f, abs=0.02)


def _crossings(row: torch.Tensor) -> torch.Tensor:
    """Sub-pixel positions where a row crosses zero upwards."""
    a, b = row[:-1], row[1:]
    up = (a < 0) & (b >= 0)
    idx = torch.nonzero(up).flatten()
    return idx + a[idx] / (a[idx] - b[idx])


def test_time_stretch_scales_the_step_period_by_the_factor():
    w, period = 64, 8.0
    x = torch.cos(2 * torch.pi * torch.arange(w) / period).expand(1, 1, 8, w).clone()
    assert torch.equal(stretch_time(x, torch.tensor([1.0])), x)
    for f in (0.95, 1.05, 1.1):
        row = stretch_time(x, torch.tensor([f]))[0, 0, 0]
        c = _crossings(row[w // 4 : 3 * w // 4])  # away from the wrap seam
        measured = float((c[-1] - c[0]) / (len(c) - 1))
        assert measured == pytest.approx(period * f, rel=0.01)


def test_time_stretch_through_the_config_keeps_the_cadence_in_range():
    w, period, s = 64, 8.0, 0.05
    x = torch.cos(2 * torch.pi * torch.arange(w) / period).expand(16, 1, 8, w).clone()
    cfg = RecogniserTrainConfig(time_stretch=s)
    y = physics_augment(x, cfg, torch.Generator().manual_seed(0))
    periods = []
    for row in y[:, 0, 0]:
        c = _crossings(row[w // 4 : 3 * w // 4])
        periods.append(float((c[-1] - c[0]) / (len(c) - 1)) / period)
    assert all(1 - s - 0.01 <= p <= 1 + s + 0.01 for p in periods)
    assert max(periods) - min(periods) > s / 2  # the factors do vary


def test_noise_floor_shift_moves_only_the_background(walks):
    bright = bright_mask(walks)
    for d in (-6.0, 6.0):
        y = shift_noise_floor(walks, torch.full((len(walks),), d))
        assert torch.equal(y[bright], walks[bright])
        offset = -2 * d / 40  # d dB of the simulator's 40 dB range, in model units
        bg = ~bright & (walks + offset > -1) & (walks + offset < 1)  # background that stays inside [-1, 1]
        assert bg.sum() > 1000 and torch.allclose(y[bg] - walks[bg], torch.full_like(y[bg], offset), atol=1e-6)
        assert torch.equal(y[~bright & ~bg], (walks[~bright & ~bg] + offset).clamp(-1, 1))
        assert torch.isfinite(y).all() and y.min() >= -1 and y.max() <= 1
    assert torch.equal(shift_noise_floor(walks, torch.zeros(len(walks))), walks)


def test_respeckle_keeps_the_walker_and_redraws_the_background_from_itself(walks):
    y = respeckle(walks, torch.Generator().manual_seed(0))
    bright = bright_mask(walks)
    assert torch.equal(y[bright], walks[bright])
    assert torch.isfinite(y).all() and y.min() >= -1 and y.max() <= 1
    for im, out, b in zip(walks, y, bright):
        old, new = im[~b], out[~b]
        assert set(new.tolist()) <= set(old.tolist())  # drawn from the image's own background
        assert abs(float(new.mean() - old.mean())) < 0.03 and float(new.std()) == pytest.approx(float(old.std()), rel=0.1)
        if old.std() > 0.05:  # a background that is not all clipped really changes
            assert (new != old).float().mean() > 0.5


def test_respeckle_follows_its_seed_and_its_apply_mask(walks):
    a = respeckle(walks, torch.Generator().manual_seed(0))
    assert torch.equal(a, respeckle(walks, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, respeckle(walks, torch.Generator().manual_seed(1)))
    apply = torch.tensor([True, False] * 4)
    b = respeckle(walks, torch.Generator().manual_seed(0), apply=apply)
    assert torch.equal(b[~apply], walks[~apply]) and torch.equal(b[apply], a[apply])
    with pytest.raises(UserError):
        respeckle(walks.expand(-1, 3, -1, -1), torch.Generator())


def test_every_augmentation_stays_in_range_and_follows_the_seed(walks):
    for cfg in [ALL_ON] + [RecogniserTrainConfig(**{name: getattr(ALL_ON, name)}) for name in rec.PHYSICS_AUGMENTATIONS]:
        a = physics_augment(walks, cfg, torch.Generator().manual_seed(0))
        assert torch.isfinite(a).all() and a.min() >= -1 and a.max() <= 1
        assert torch.equal(a, physics_augment(walks, cfg, torch.Generator().manual_seed(0)))
        assert not torch.equal(a, physics_augment(walks, cfg, torch.Generator().manual_seed(1)))


def test_a_recogniser_trains_with_every_augmentation_on(walks):
    ids = torch.arange(len(walks)) // 2
    model = rec.train_recogniser(walks, ids, num_users=4, config=RecogniserConfig(num_users=4, widths=(4, 8), feature_dim=8),
                                 train=replace(ALL_ON, steps=3, batch_size=4))
    assert model.meta["train"]["doppler_scale"] == 0.1
