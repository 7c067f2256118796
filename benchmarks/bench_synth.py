"""Simulator throughput: spectrograms per second on one CPU thread, at several image sizes.

Measures `simulate_spectrogram` alone and the full per-image path of `synthesize_dataset`
(simulate, jet colour, PNG encode). CPU time is reported beside wall time because a shared
machine stretches wall time while the single-thread CPU cost stays put.

    python benchmarks/bench_synth.py [--sizes 64 256] [--n 100] [--profile default|gait31]
        [--out benchmarks/results/bench_synth.json]
"""

import os

# single thread for numpy/scipy; must be set before numpy is imported
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dalle2_md.data.colormap import scalar_to_rgb  # noqa: E402
from dalle2_md.data.synthesize import PNG_COMPRESS_LEVEL, sample_rng
from dalle2_md.data.simulator import get_profile, make_users, simulate_spectrogram


def _timed(fn, n):
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return time.perf_counter() - w0, time.process_time() - c0


def bench(size: int, n: int, users, variation=None) -> dict:
    def sim(i):
        u = users[i % len(users)]
        return simulate_spectrogram(u, sample_rng(0, u.user_id, i), image_size=size, variation=variation)

    def full(i):
        img, _ = sim(i)
        Image.fromarray(scalar_to_rgb(img)).save(io.BytesIO(), format="PNG", compress_level=PNG_COMPRESS_LEVEL)

    full(0)  # warm-up: imports, colormap table
    row = {"image_size": size, "n": n}
    for name, fn in (("simulate", sim), ("simulate+png", full)):
        wall, cpu = _timed(fn, n)
        row[f"{name}_img_per_s_wall"] = n / wall
        row[f"{name}_img_per_s_cpu"] = n / cpu
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sizes (default: 64 256)")
    ap.add_argument("--n", type=int, default=100, help="images per size and path (default: 100)")
    ap.add_argument("--profile", default="default", help="simulator profile (default: default)")
    ap.add_argument("--out", default="benchmarks/results/bench_synth.json", help="JSON results file")
    args = ap.parse_args()

    profile = get_profile(args.profile)
    users = make_users(profile.num_users, seed=0, spread=profile.user_spread)
    rows = [bench(s, args.n, users, profile.variation) for s in args.sizes]
    print("| size | simulate img/s (wall) | simulate img/s (cpu) | +jet+PNG img/s (wall) | +jet+PNG img/s (cpu) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['image_size']} | {r['simulate_img_per_s_wall']:.1f} | {r['simulate_img_per_s_cpu']:.1f} "
            f"| {r['simulate+png_img_per_s_wall']:.1f} | {r['simulate+png_img_per_s_cpu']:.1f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "bench_synth",
        "profile": profile.name,
        "threads": 1,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
