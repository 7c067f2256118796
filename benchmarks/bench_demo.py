"""End-to-end demo cost: wall time, CPU time and peak memory of `dalle2-md demo` (simulate,
train embedding -> decoder -> prior, generate, interpolate), run in a child process.

Peak memory is the child's maximum resident set size (`getrusage(RUSAGE_CHILDREN)`), so
this script's own imports do not count. Per-stage seconds come from the demo's own printout.

    python benchmarks/bench_demo.py            # the --quick demo (CI smoke-test sizes)
    python benchmarks/bench_demo.py --full     # the full demo
    python benchmarks/bench_demo.py --threads 1 --out benchmarks/results/bench_demo.json
    python benchmarks/bench_demo.py --full --image_size 64 --vqgan_steps 1500   # 64 px over a VQGAN latent
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_demo(full: bool, out_dir: Path, threads: int | None, image_size: int | None = None,
             vqgan_steps: int | None = None) -> dict:
    command = [sys.executable, "-m", "dalle2_md.cli.main", "demo", "--output_dir", str(out_dir), "--no-progress"]
    if not full:
        command.append("--quick")
    for flag, value in (("--image_size", image_size), ("--vqgan_steps", vqgan_steps)):
        if value is not None:
            command += [flag, str(value)]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"demo failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    stages = {m[1]: float(m[2]) for m in re.finditer(r"^(\w+)\s+([\d.]+)s$", proc.stdout, re.MULTILINE)}
    return {
        "variant": "full" if full else "quick",
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "stages_s": stages,
        "report": str(out_dir / "report.md"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="run the full demo instead of --quick")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the demo (default: torch's own)")
    ap.add_argument("--keep", default=None, help="write the demo here and keep it (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="JSON results file (default: benchmarks/results/bench_demo_<variant>.json)")
    ap.add_argument("--image_size", type=int, default=None, help="the demo's --image_size (default: its own)")
    ap.add_argument("--vqgan_steps", type=int, default=None, help="the demo's --vqgan_steps (default: its own, 400: over a VQGAN latent)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        row = run_demo(args.full, Path(args.keep or tmp) / "demo", args.threads, args.image_size, args.vqgan_steps)
    row.update(image_size=args.image_size, vqgan_steps=args.vqgan_steps)
    print("| variant | wall s | cpu s | peak RSS MiB | " + " | ".join(row["stages_s"]) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(row["stages_s"]))
    print(f"| {row['variant']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['peak_rss_mib']:.0f} | "
          + " | ".join(f"{v:.1f}" for v in row["stages_s"].values()) + " |")
    out = Path(args.out or f"benchmarks/results/bench_demo_{row['variant']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "bench_demo",
        "threads": args.threads,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        **row,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
