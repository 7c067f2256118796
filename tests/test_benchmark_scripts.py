"""Benchmark scripts whose figures docs/results.md quotes still run against today's library (a
smoke run each: tiny models, seconds). latent_vs_pixel.py had stopped running when the quality
protocol's data phase changed under it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_latent_vs_pixel_smoke_trains_every_arm_within_the_pixel_arms_time(tmp_path):
    out = tmp_path / "lvp.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/latent_vs_pixel.py"), "--smoke",
                           "--work_dir", str(tmp_path / "work"), "--out", str(out), "--eval_dir", str(tmp_path / "eval")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["arm"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"pixel U-Net", "latent U-Net (f = 4)", "latent DiT (f = 4)"}
    pixel_seconds = rows["pixel U-Net"]["seconds"]["decoder"]
    for name in ("latent U-Net (f = 4)", "latent DiT (f = 4)"):
        row = rows[name]
        assert row["seconds"]["vqgan"] > 0 and row["steps"]["decoder"] > 0
        assert row["budget"]["decoder_seconds"] == pixel_seconds  # equal compute: the pixel arm's seconds
        assert 0 <= row["a_gen_over_a_real"]
