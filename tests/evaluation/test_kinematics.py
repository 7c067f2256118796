"""Reading kinematics back from spectrograms: torso velocity and cadence against the
simulator's ground truth, clutter rejection, and pixel-unit behaviour on toy images."""

import numpy as np
import pytest

from dalle2_md.evaluation.kinematics import Kinematics, read_kinematics
from dalle2_md.data.simulator import make_users, simulate_spectrogram
from dalle2_md.data.synthesize import sample_rng


@pytest.fixture(scope="module")
def readings():
    """8 users x 5 samples at 64 px: (kinematics with axes, kinematics without, ground truth)."""
    out = []
    for u in make_users(8, seed=2):
        for i in range(5):
            img, truth = simulate_spectrogram(u, sample_rng(2, u.user_id, i), image_size=64)
            out.append((read_kinematics(img, axes=truth["axes"]), read_kinematics(img), truth))
    return out


def test_torso_velocity_matches_ground_truth(readings):
    # 64 px rows are ~0.23 m/s apart; the sub-row peak fit and the median over columns get
    # the radial walking speed (speed x cos(aspect)) within 10 %
    rel = np.array([k.torso_mps / t["radial_speed_mps"] - 1 for k, _, t in readings])
    assert np.mean(np.abs(rel) < 0.10) >= 0.9, np.round(rel, 3)
    assert abs(np.median(rel)) < 0.05


def test_cadence_matches_ground_truth(readings):
    rel = np.array([k.cadence_steps_per_s / t["cadence_steps_per_s"] - 1 for k, _, t in readings])
    assert np.mean(np.abs(rel) < 0.10) >= 0.9, np.round(rel, 3)


def test_pixel_units_without_axes(readings):
    for k, k_px, t in readings:
        assert k_px.torso_mps is None and k_px.cadence_steps_per_s is None
        assert k_px.torso_px == pytest.approx(k.torso_px)
        assert k.torso_mps == pytest.approx(k.torso_px * t["axes"]["mps_per_row"])
    # without a time scale the step rate is searched widely; it still lands on the true one
    rel = np.array([k_px.cadence_steps_per_col / (t["cadence_steps_per_s"] * t["axes"]["s_per_col"]) - 1 for _, k_px, t in readings])
    assert np.mean(np.abs(rel) < 0.10) >= 0.85, np.round(rel, 3)


def test_envelopes_bracket_the_torso(readings):
    for k, _, t in readings:
        assert isinstance(k, Kinematics)
        assert k.upper_envelope_px.shape == (64,) and k.lower_envelope_px.shape == (64,)
        assert np.all(k.upper_envelope_px >= k.torso_line_px - 0.5)
        assert np.all(k.lower_envelope_px <= k.torso_line_px + 0.5)
        # limbs within 20 dB of the torso swing out to 1.5-4x the walking speed
        assert 1.5 * t["radial_speed_mps"] < k.max_envelope_mps < 4.0 * t["radial_speed_mps"]
    assert "torso_px" in readings[0][0].summary() and "torso_line_px" not in readings[0][0].summary()


def _toy(h=64, w=64, torso_row=20, clutter=1.0, torso=0.8):
    """Dark image, a clutter line at zero Doppler and a torso line with a sinusoidal limb band."""
    img = np.zeros((h, w))
    img[h // 2] = clutter
    img[torso_row] = torso
    cols = np.arange(w)
    steps_per_col = 4 / w  # four flashes across the image
    top = torso_row - 4 - np.rint(6 * (1 + np.sin(2 * np.pi * steps_per_col * cols)) / 2).astype(int)
    for c in cols:
        img[top[c] : torso_row, c] = torso - 0.3  # 12 dB below the torso: inside the envelope
    return img, steps_per_col


def test_clutter_line_is_not_the_torso():
    img, _ = _toy(clutter=1.0, torso=0.8)  # clutter 8 dB stronger than the walker
    k = read_kinematics(img)
    # sub-row refinement leans towards the limb band above the torso, by under half a row
    assert k.torso_px == pytest.approx(32 - 20, abs=0.5)
    assert np.all(np.abs(k.torso_line_px - 12) <= 0.5)


def test_toy_envelope_and_cadence():
    img, steps_per_col = _toy()
    k = read_kinematics(img)
    assert k.cadence_steps_per_col == pytest.approx(steps_per_col, rel=0.05)
    assert k.max_envelope_px == pytest.approx(32 - (20 - 4 - 6), abs=0.5)
    assert np.all(k.lower_envelope_px == 12)
    # a stricter threshold (10 dB) drops the limb band: envelope collapses onto the torso
    strict = read_kinematics(img, threshold_db=10.0)
    assert np.all(strict.upper_envelope_px == 12)
    # isolated speckle far above the band is not a limb
    speckled = img.copy()
    speckled[2, ::5] = 0.75
    assert read_kinematics(speckled).max_envelope_px == pytest.approx(k.max_envelope_px)


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        read_kinematics(np.zeros((3, 16, 16)))
