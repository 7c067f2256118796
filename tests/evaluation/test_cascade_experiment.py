"""experiments/cascade_vs_bicubic.py still runs against today's library (its --smoke run: seconds)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cascade_vs_bicubic_smoke_judges_every_method(tmp_path):
    out = tmp_path / "cvb"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/cascade_vs_bicubic.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["judged"]["rows"]
    assert {"bicubic", "cascade", "nearest"} <= set(rows)
    for name in ("bicubic", "cascade", "nearest"):
        row = rows[name]
        numbers = [row["kid"], row["fid"], row["a_gen"], row["psnr"], row["background"],
                   row["kinematic_rel_error"]["max_envelope"]]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers), (name, row)
    assert out.with_suffix(".png").is_file() and out.with_suffix(".md").is_file()
