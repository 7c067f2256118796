"""Jet colormap round trip, non-colormap warning, and the shape/dtype of scalar_to_rgb."""

import numpy as np
import pytest

from dalle2_md.data.colormap import LUT_SIZE, check_colormap_residual, rgb_to_scalar, scalar_to_rgb
from dalle2_md.data.simulator import make_users, simulate_spectrogram
from dalle2_md.data.synthesize import sample_rng

# jet holds pure blue for 5 table entries; the inverse maps that colour to the run's middle,
# so scalars on the 8-bit grid come back within 2 entries
GRID_TOL = 2 / (LUT_SIZE - 1)
# continuous scalars additionally lose up to half an entry when they are rounded to the table
CONTINUOUS_TOL = 2.5 / (LUT_SIZE - 1) + 1e-6


def _round_trip(values):
    rgb = scalar_to_rgb(values, "jet")
    back, residual = rgb_to_scalar(rgb, "jet")
    return rgb, back, residual


def test_scalar_to_rgb_shape_and_dtype():
    v = np.linspace(0, 1, 2 * 3 * 5).reshape(2, 3, 5)
    rgb = scalar_to_rgb(v)
    assert rgb.shape == (2, 3, 5, 3) and rgb.dtype == np.uint8
    # jet: 0 is dark blue, 1 is dark red, the middle is greenish
    lo, mid, hi = scalar_to_rgb(np.array([0.0, 0.5, 1.0]))
    assert lo[2] > 100 and lo[0] == 0 and lo[1] == 0
    assert hi[0] > 100 and hi[1] == 0 and hi[2] == 0
    assert mid[1] > 200
    # out-of-range values clip instead of wrapping
    assert np.array_equal(scalar_to_rgb(np.array([-1.0, 2.0])), scalar_to_rgb(np.array([0.0, 1.0])))


def test_round_trip_grid_scalars_within_two_levels():
    grid = np.arange(LUT_SIZE) / (LUT_SIZE - 1)
    rgb, back, residual = _round_trip(grid)
    assert residual == pytest.approx(0.0, abs=1e-6)
    assert np.abs(back - grid).max() <= GRID_TOL + 1e-6
    # colours themselves survive exactly
    assert np.array_equal(scalar_to_rgb(back), rgb)


def test_round_trip_random_scalars():
    v = np.random.default_rng(0).random((64, 64))
    rgb, back, residual = _round_trip(v)
    assert back.shape == v.shape
    assert residual == pytest.approx(0.0, abs=1e-6)
    assert np.abs(back - v).max() <= CONTINUOUS_TOL
    quantised = np.rint(v * (LUT_SIZE - 1)) / (LUT_SIZE - 1)
    assert np.abs(back - quantised).max() <= GRID_TOL + 1e-6
    assert np.array_equal(scalar_to_rgb(back), rgb)


def test_round_trip_simulated_spectrogram():
    user = make_users(2, seed=0)[1]
    img, _ = simulate_spectrogram(user, sample_rng(0, 1, 0), image_size=64)
    rgb, back, residual = _round_trip(img)
    assert residual == pytest.approx(0.0, abs=1e-6)
    assert np.abs(back - img).max() <= CONTINUOUS_TOL
    quantised = np.rint(img * (LUT_SIZE - 1)) / (LUT_SIZE - 1)
    assert np.abs(back - quantised).max() <= GRID_TOL + 1e-6


@pytest.mark.parametrize("kind", ["random_rgb", "greyscale"])
def test_non_jet_image_warns_with_residual(kind):
    rng = np.random.default_rng(1)
    if kind == "random_rgb":
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    else:
        img = np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=-1)
    _, residual = rgb_to_scalar(img)
    assert residual > 12.0
    with pytest.warns(UserWarning, match=r"not look like a 'jet'.*residual"):
        check_colormap_residual(residual, f"{kind}.png")


def test_jet_image_does_not_warn():
    _, residual = rgb_to_scalar(scalar_to_rgb(np.random.default_rng(2).random((16, 16))))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_colormap_residual(residual, "jet.png")
