"""experiments/cascade_vs_bicubic.py still runs against today's library (its --smoke run: seconds)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cascade_vs_bicubic_smoke_judges_every_method(tmp_path):
    out = tmp_path / "cvb"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/cascade_vs_bicubic.py"), "--smoke", "--out", str(out),
                           "--lowres_noise_levels", "0.1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["judged"]["rows"]
    assert {"bicubic", "cascade", "nearest", "cascade, input noise 0.1"} <= set(rows)
    assert rows["cascade, input noise 0.1"]["kid"] != rows["cascade"]["kid"]  # another level, other samples
    for name in ("bicubic", "cascade", "nearest", "cascade, input noise 0.1"):
        row = rows[name]
        numbers = [row["kid"], row["fid"], row["a_gen"], row["psnr"], row["background"],
                   row["kinematic_rel_error"]["max_envelope"]]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers), (name, row)
    assert out.with_suffix(".png").is_file() and out.with_suffix(".md").is_file()


@pytest.mark.slow
def test_quality_cascade_profile_judges_three_sets_at_the_data_size(tmp_path):
    """benchmarks/cascade256.py's smoke profile (16 -> 32 px, two processes) trains each model
    once and judges every set at 32 px; a second run in the same folder trains nothing."""
    from dalle2_md.evaluation.protocol import cascade_profiles

    work, out = tmp_path / "work", tmp_path / "q"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/cascade256.py"), "--profile", "smoke",
                           "--work_dir", str(work), "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["sets"]) == ["cascade", "bicubic", "latent"]
    for name, s in result["sets"].items():
        numbers = [s["A_gen_over_A_real"], s["fid_over_floor"], s["kid"], s["defects"], s["CAS_over_A_real"],
                   s["kinematic_error"]["max_envelope"]]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers), (name, s)
    # the upsampler and the base generator differ, so cascade and bicubic are two different sets
    assert result["sets"]["cascade"]["kid"] != result["sets"]["bicubic"]["kid"]
    # the helper made the upsampler, recogniser and latent samples; the main process the base chain
    assert {"recogniser", "upsampler", "latent_train", "base_train", "cascade_sample"} <= set(result["times"])
    helper_log = (work / "helper.log").read_text()
    assert "[upsampler] training" in helper_log and "[upsampler] training" not in proc.stdout
    p = cascade_profiles()["smoke"]
    from PIL import Image
    grid = Image.open(out.with_name(out.name + "_grid.png"))
    assert grid.width >= 4 * p.size and grid.height >= min(4, p.num_users) * p.size  # full-size tiles
    # a second run finds every model in the work folder and trains nothing
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks/cascade256.py"), "--profile", "smoke",
                            "--work_dir", str(work), "--out", str(tmp_path / "q2")], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not re.search(r"\] training \d+ steps", again.stdout + (work / "helper.log").read_text())


def test_the_cascade_profiles_are_256_px_from_a_64_px_base():
    from dalle2_md.evaluation.protocol import CASCADE_PROFILE_NAMES, cascade_profiles

    profiles = cascade_profiles()
    assert set(CASCADE_PROFILE_NAMES) <= set(profiles)
    for name in CASCADE_PROFILE_NAMES:
        p = profiles[name]
        assert p.size == 256 and p.base_size == 64 and p.latent_budget is not None
        assert p.upsampler_train_steps > 0 and p.samples_per_user == p.num_test  # FID / KID sets match test
        # the base decoder the cascade256 run picked: the eps + P2 one washed out its backgrounds
        assert p.base_budget.decoder["prediction"] == "v" and p.base_budget.decoder["zero_terminal_snr"]
    assert "an estimate" in profiles["gpu256"].expected
