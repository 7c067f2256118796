"""The gait simulator: determinism, the three layouts, ground truth, contact sheet, CLI, and
users that a simple classifier can tell apart."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dalle2_md.cli.main import cli
from dalle2_md.data.colormap import rgb_to_scalar, scalar_to_rgb
from dalle2_md.data.synthesize import CONTACT_PAD, sample_rng, synthesize_dataset
from dalle2_md.data.simulator import RadarConfig, image_axes, make_users, simulate_spectrogram
from dalle2_md.utils import UserError


def _pngs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_gives_identical_files(tmp_path):
    kw = dict(num_users=2, images_per_user=2, image_size=32, progress=False)
    synthesize_dataset(tmp_path / "a", seed=3, **kw)
    synthesize_dataset(tmp_path / "b", seed=3, **kw)
    synthesize_dataset(tmp_path / "c", seed=4, **kw)
    a, b, c = (_pngs(tmp_path / x) for x in "abc")
    assert len(a) == 5  # 4 images + contact sheet
    assert a == b
    assert (tmp_path / "a" / "ground_truth.json").read_text() == (tmp_path / "b" / "ground_truth.json").read_text()
    assert a.keys() == c.keys() and a["user_0/image_001.png"] != c["user_0/image_001.png"]


def test_sample_does_not_depend_on_order(tmp_path):
    synthesize_dataset(tmp_path, num_users=2, images_per_user=3, image_size=32, seed=5, progress=False)
    user = make_users(2, seed=5)[1]
    img, truth = simulate_spectrogram(user, sample_rng(5, 1, 2), image_size=32)
    on_disk = np.asarray(Image.open(tmp_path / "user_1" / "image_003.png").convert("RGB"))
    assert np.array_equal(on_disk, scalar_to_rgb(img))
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    rec = next(r for r in gt["samples"] if r["path"] == "user_1/image_003.png")
    assert rec["label"] == 1 and rec["speed_mps"] == pytest.approx(truth["speed_mps"])


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("hierarchical", ["user_0/image_001.png", "user_0/image_002.png", "user_2/image_002.png"]),
        ("kaggle", ["ID_1/image_001.png", "ID_3/image_002.png"]),
        ("flat", ["images/user0_001.png", "images/user2_002.png"]),
    ],
)
def test_layouts_match_readme(tmp_path, layout, expected):
    s = synthesize_dataset(tmp_path, num_users=3, images_per_user=2, image_size=16, layout=layout, progress=False)
    assert s["num_images"] == 6
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png") if p.name != "contact_sheet.png")
    assert len(files) == 6
    for rel in expected:
        assert rel in files
    if layout == "flat":
        meta = json.loads((tmp_path / "metadata.json").read_text())
        assert meta[0] == {"filename": "user0_001.png", "user_id": 0}
        assert all(set(m) == {"filename", "user_id"} for m in meta)
        assert sorted((m["filename"], m["user_id"]) for m in meta) == sorted(
            (f"user{u}_{i:03d}.png", u) for u in range(3) for i in (1, 2)
        )
    else:
        assert not (tmp_path / "metadata.json").exists()
    if layout == "kaggle":
        assert not (tmp_path / "ID_0").exists() and (tmp_path / "ID_3").is_dir()
    img = Image.open(tmp_path / expected[0])
    assert img.mode == "RGB" and img.size == (16, 16)
    # every pixel is a jet colour
    assert rgb_to_scalar(np.asarray(img))[1] < 1e-6


def test_ground_truth_and_contact_sheet(tmp_path):
    num_users, size = 3, 32
    synthesize_dataset(tmp_path, num_users=num_users, images_per_user=4, image_size=size, progress=False)
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert len(gt["users"]) == num_users and len(gt["samples"]) == 12
    for rec in gt["samples"]:
        assert (tmp_path / rec["path"]).is_file()
        for key in ("label", "speed_mps", "cadence_steps_per_s", "height_m", "aspect_deg", "snr_db", "axes"):
            assert key in rec
        assert abs(rec["aspect_deg"]) <= 15 and 10 <= rec["snr_db"] <= 30
        assert 1.55 <= rec["height_m"] <= 1.95
        assert rec["axes"]["mps_per_row"] > 0 and rec["axes"]["s_per_col"] > 0
    sheet = Image.open(tmp_path / "contact_sheet.png")
    tile = max(size, 64)  # small images are enlarged on the sheet
    assert sheet.size[1] == num_users * (tile + CONTACT_PAD) + CONTACT_PAD


def test_physical_ranges():
    users = make_users(8, seed=0)
    assert users == make_users(8, seed=0) and users != make_users(8, seed=1)
    cad, speeds = [], []
    for u in users:
        _, t = simulate_spectrogram(u, sample_rng(0, u.user_id, 0), image_size=16)
        speeds.append(t["speed_mps"])
        cad.append(t["cadence_steps_per_s"])
        assert t["speed_mps"] == pytest.approx(u.speed_mps, rel=0.051)
    # ordinary walking: 0.8-1.95 m/s, 1.3-2.5 steps/s, and users spread over the range
    assert 0.8 <= min(speeds) and max(speeds) <= 1.95 and max(speeds) - min(speeds) > 0.5
    assert 1.3 <= min(cad) and max(cad) <= 2.5 and max(cad) - min(cad) > 0.2
    ax = image_axes(64)
    assert ax["zero_row"] == 32
    # the Doppler span is +-fs/2: +-7.5 m/s at 24 GHz, 2.4 kHz
    assert ax["velocity_top_mps"] == pytest.approx(RadarConfig().fs_hz / 2 * RadarConfig().wavelength_m / 2, rel=0.01)


def test_image_is_normalised_spectrogram():
    user = make_users(1, seed=0)[0]
    img, truth = simulate_spectrogram(user, sample_rng(0, 0, 0), image_size=64)
    assert img.shape == (64, 64) and img.dtype == np.float32
    assert img.max() == pytest.approx(1.0) and img.min() >= 0.0
    # the walker approaches: more energy above zero Doppler (row 32) than below it
    assert img[:31].mean() > img[34:].mean()


def _softmax_regression(x, y, classes, steps=400, lr=0.5, l2=1e-3):
    w = np.zeros((x.shape[1], classes))
    b = np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        z = x @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * g.sum(0)
    return w, b


def test_simple_classifier_separates_users():
    """8 users x 20 images at 64 px; the first 10 of each user train, the last 10 test.

    Features: each image downsampled along time to a single column (its mean Doppler profile),
    which keeps speed, limb extent and swing strength and drops the random start phase."""
    num_users, per_user, seed = 8, 20, 11
    users = make_users(num_users, seed=seed)
    x, y, idx = [], [], []
    for u in users:
        for i in range(per_user):
            img, _ = simulate_spectrogram(u, sample_rng(seed, u.user_id, i), image_size=64)
            x.append(img.mean(axis=1))
            y.append(u.user_id)
            idx.append(i)
    x, y, idx = np.array(x), np.array(y), np.array(idx)
    train, test = idx < per_user // 2, idx >= per_user // 2
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    w, b = _softmax_regression(x[train], y[train], num_users)
    acc = ((x[test] @ w + b).argmax(1) == y[test]).mean()
    assert acc >= 0.9, f"held-out accuracy {acc:.3f}"


def test_bad_arguments_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="layout"):
        synthesize_dataset(tmp_path, num_users=1, images_per_user=1, layout="nested", progress=False)
    with pytest.raises(UserError, match="num_users"):
        make_users(0)


def test_cli_synth(tmp_path):
    out = tmp_path / "syn"
    result = CliRunner().invoke(
        cli,
        ["synth", "--num_users", "2", "--images_per_user", "2", "--image_size", "16", "--layout", "kaggle",
         "--out", str(out), "--seed", "1", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "contact_sheet.png" in result.output
    assert (out / "ID_1" / "image_001.png").is_file() and (out / "ID_2" / "image_002.png").is_file()
    assert (out / "ground_truth.json").is_file()
    help_text = CliRunner().invoke(cli, ["synth", "--help"]).output
    for flag in ("--num_users", "--images_per_user", "--image_size", "--layout", "--out", "--seed", "./data/synthetic"):
        assert flag in help_text


# -- profiles ----------------------------------------------------------------------------------


def test_gait31_profile_has_31_users_and_real_within_user_variation(tmp_path):
    kw = dict(images_per_user=4, image_size=16, seed=2, progress=False, profile="gait31")
    s = synthesize_dataset(tmp_path / "a", **kw)
    assert s["num_users"] == 31 and s["layout"] == "kaggle" and s["num_images"] == 124
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == sorted(f"ID_{i}" for i in range(1, 32))
    synthesize_dataset(tmp_path / "b", **kw)
    assert _pngs(tmp_path / "a") == _pngs(tmp_path / "b")
    gt = json.loads((tmp_path / "a" / "ground_truth.json").read_text())
    assert gt["profile"] == "gait31" and len(gt["users"]) == 31
    samples = gt["samples"]
    by_user = {}
    for rec in samples:
        by_user.setdefault(rec["label"], []).append(rec)
    # the same person walks at different speeds, angles and ranges from recording to recording
    for recs in by_user.values():
        for key in ("speed_mps", "aspect_deg", "centre_range_m", "arm_swing_deg"):
            assert len({round(r[key], 6) for r in recs}) == len(recs)
    assert {r["direction"] for r in samples} == {"towards", "away"}
    for r in samples:  # away: negative radial velocity
        assert (r["radial_speed_mps"] > 0) == (r["direction"] == "towards")
    carrying = [r["carrying"] for r in samples]
    assert 0 < sum(c != "none" for c in carrying) < len(samples) // 2
    # farther walkers have a lower SNR (radar equation), up to a few dB of spread
    near = [r["snr_db"] for r in samples if r["centre_range_m"] < 5]
    far = [r["snr_db"] for r in samples if r["centre_range_m"] > 10]
    assert np.mean(near) > np.mean(far) + 10


def test_user_spread_packs_users_closer():
    default, packed = make_users(31, seed=0), make_users(31, seed=0, spread=0.7)
    spread = lambda users: np.ptp([u.speed_mps for u in users])  # noqa: E731
    assert spread(packed) == pytest.approx(0.7 * spread(default), rel=0.1)
    with pytest.raises(UserError, match="spread"):
        make_users(3, spread=0.0)


def test_gait31_neighbours_overlap_in_speed():
    """One user's recordings spread wider in speed than the gap to the next user's mean."""
    from dalle2_md.data.simulator import get_profile

    prof = get_profile("gait31")
    users = sorted(make_users(31, seed=0, spread=prof.user_spread), key=lambda u: u.speed_mps)
    gaps = np.diff([u.speed_mps for u in users])
    u = users[15]
    radial = [simulate_spectrogram(u, sample_rng(0, u.user_id, i), image_size=16, variation=prof.variation)[1]["radial_speed_mps"]
              for i in range(12)]
    assert np.ptp(np.abs(radial)) > 2 * gaps.max()


def test_default_profile_keeps_its_documented_draws(tmp_path):
    synthesize_dataset(tmp_path / "a", num_users=2, images_per_user=3, image_size=16, seed=1, progress=False)
    synthesize_dataset(tmp_path / "b", num_users=2, images_per_user=3, image_size=16, seed=1, progress=False, profile="default")
    assert _pngs(tmp_path / "a") == _pngs(tmp_path / "b")
    gt = json.loads((tmp_path / "a" / "ground_truth.json").read_text())
    assert "profile" not in gt and make_users(2, seed=1) == make_users(2, seed=1, spread=1.0)
    for rec in gt["samples"]:  # every default walker comes towards the radar, nobody carries
        assert rec["radial_speed_mps"] > 0 and abs(rec["aspect_deg"]) <= 15
        assert "direction" not in rec and "carrying" not in rec


def test_cli_synth_profile(tmp_path):
    out = tmp_path / "g31"
    result = CliRunner().invoke(
        cli, ["synth", "--profile", "gait31", "--num_users", "3", "--images_per_user", "2", "--image_size", "16",
              "--out", str(out), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "profile gait31" in result.output and (out / "ID_3" / "image_002.png").is_file()
    bad = CliRunner().invoke(cli, ["synth", "--profile", "gait99", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "gait99" in bad.output
    with pytest.raises(UserError, match="profile"):
        synthesize_dataset(tmp_path / "y", profile="gait99", progress=False)
