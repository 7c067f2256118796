"""Throughput and memory of `generate`: images/s at 32, 64 and 128 px, an older checkout's code
(`--old`) against this one, and peak RSS for 31 users x 200 images at 64 px.

Both paths run without guidance (cond_scale 1), so they do the same network evaluations. Models
are untrained (random weights cost the same per step as trained ones) with the CPU sizes of
`dalle2_md.training.presets.CPU_*_SIZES`; each measurement runs in a child process with its own
PYTHONPATH (OLD = a checkout of the older code, default /work/main; NEW = this repository), so
peak RSS is that child's alone. Rows:

    old      the older checkout's generate, DDIM, the CPU sizes' default steps (decoder 25, prior 16)
    new      this generate, same sampler and steps (what batching and the code change)
    new-dpm  this generate, DPM-Solver++(2M) at --dpm_steps (the default sampler)

    python benchmarks/bench_generate.py --threads 1
    python benchmarks/bench_generate.py --skip_rss        # throughput only
    python benchmarks/bench_generate.py --skip_throughput --rss_paths new   # one RSS row

`--attention` measures instead what `compat.use_sdpa_attention` changes: the same model with
dalle2-pytorch's einsum attention (before) and through F.scaled_dot_product_attention (after,
what every model the package builds now uses), at 64, 128 and 256 px. Untrained CPU-size
models (U-Net dim 16, dim_mults 1 2 4: self-attention at the middle, size / 4, so 4096 tokens at
256 px; cross-attention at size / 2 and size / 4), the default guidance (3: the U-Net sees
twice the batch) and sampler, 2 users x 2 images in one batch, 4 steps per stage; each in a
fresh child process, so its peak RSS is its own. Then, per `--rss_batch_sizes` (default 64,
generation's default, and 32), one child at 256 px over 31 users x 8 images (the most the grid
keeps per user), 1 step per stage, SDPA only: generation's memory is one batch plus the grid,
so this is the peak of 31 x 200 images at that batch size.
Writes JSON and a Markdown table (`--out`, default benchmarks/results/bench_generate_sdpa.json):

    python benchmarks/bench_generate.py --attention --threads 1
    python benchmarks/bench_generate.py --attention --sizes 64 --skip_rss   # a smoke run
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
try:
    from dalle2_md.generation.samples import load_generator, write_samples
except ImportError:  # a checkout from before the subpackages (dalle2_md/generation.py)
    from dalle2_md.generation import load_generator, write_samples
model = load_generator(model_path=spec["bundle"], device="cpu")
if spec.get("attention"):  # "einsum": dalle2-pytorch's own forward; "sdpa": the package's default
    from dalle2_md.compat import use_sdpa_attention
    use_sdpa_attention(model, enabled=spec["attention"] == "sdpa")
extra = {"sampler": spec["sampler"]} if spec.get("sampler") else {}
write_samples(model, spec["out"] + "_warm", user_labels=spec["users"][:1], num_samples_per_user=1, sample_steps=2, prior_steps=2)
start = time.perf_counter()
write_samples(model, spec["out"], user_labels=spec["users"], num_samples_per_user=spec["n"], sample_steps=spec["steps"],
              prior_steps=spec["prior_steps"], seed=0, batch_size=spec["batch_size"],
              cond_scale=spec.get("cond_scale", 1.0), prior_cond_scale=1.0, **extra)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"seconds": seconds, "images": len(spec["users"]) * spec["n"],
                              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_bundle(path: Path, image_size: int, num_users: int, tiny: bool = False) -> Path:
    import torch

    from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
    from dalle2_md.models.chain import MicroDopplerDALLE2
    from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior
    from dalle2_md.training.presets import CPU_CLIP_SIZES, CPU_DECODER_SIZES, CPU_PRIOR_SIZES

    torch.manual_seed(0)
    dim = CPU_CLIP_SIZES["dim_latent"]
    sizes = dict(CPU_DECODER_SIZES, dim=8, dim_mults=(1, 2)) if tiny else CPU_DECODER_SIZES
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=num_users, dim=dim, **CPU_PRIOR_SIZES))
    # num_users: the CPU sizes' decoder also reads a user token (user_conditioning)
    decoder = MicroDopplerDecoder(config=DecoderConfig(image_size=image_size, channels=1, image_embed_dim=dim,
                                                       num_users=num_users, **sizes))
    return MicroDopplerDALLE2(prior=prior, decoder=decoder).save(path)


def run_child(code_root: Path, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child failed ({code_root}):\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return json.loads(lines[-1][len("RESULT "):])


def attention_benchmark(args) -> None:
    """--attention: einsum (before) vs SDPA (after) attention, peak RSS and images/s per size."""
    from dalle2_md.defaults import DEFAULTS

    sizes = [int(s) for s in (args.sizes or "64,128,256").split(",")]
    rows, rss = [], []
    with tempfile.TemporaryDirectory(prefix="bench-sdpa-") as tmp:
        tmp = Path(tmp)
        for size in sizes:
            bundle = build_bundle(tmp / f"chain{size}.pt", size, num_users=31)
            spec = dict(bundle=str(bundle), users=["0", "1"], n=2, threads=args.threads, batch_size=4,
                        steps=args.attention_steps, prior_steps=args.attention_steps, cond_scale=DEFAULTS.cond_scale)
            for attention in ("einsum", "sdpa"):
                r = run_child(REPO, dict(spec, attention=attention, out=str(tmp / f"{attention}{size}")))
                row = {"size": size, "attention": attention, "images": r["images"], "batch_size": spec["batch_size"],
                       "steps": spec["steps"], "prior_steps": spec["prior_steps"], "cond_scale": spec["cond_scale"],
                       "seconds": r["seconds"], "images_per_s": r["images"] / r["seconds"],
                       "peak_rss_mib": r["peak_rss_mib"]}
                rows.append(row)
                print(f"{size:4d} px {attention:6s}: {row['images_per_s']:.3f} images/s ({r['images']} images, "
                      f"{r['seconds']:.1f}s), peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
            before, after = rows[-2], rows[-1]
            print(f"{size:4d} px sdpa / einsum: {after['images_per_s'] / before['images_per_s']:.2f}x images/s, "
                  f"{after['peak_rss_mib'] / before['peak_rss_mib']:.2f}x peak RSS", flush=True)
        if not args.skip_rss:
            size = 256
            bundle = build_bundle(tmp / f"rss{size}.pt", size, num_users=31)
            for batch_size in [int(b) for b in args.rss_batch_sizes.split(",")]:
                spec = dict(bundle=str(bundle), users=[str(u) for u in range(31)], n=8, threads=args.threads,
                            batch_size=batch_size, steps=1, prior_steps=1, cond_scale=DEFAULTS.cond_scale,
                            attention="sdpa", out=str(tmp / f"rss{batch_size}"))
                r = run_child(REPO, spec)
                rss.append({"size": size, "attention": "sdpa", "users": 31, "per_user": spec["n"],
                            "batch_size": batch_size, "steps": 1, "prior_steps": 1, "cond_scale": spec["cond_scale"], **r})
                print(f"31 x 8 at {size} px, batches of {batch_size}, sdpa: peak RSS {r['peak_rss_mib']:.0f} MiB "
                      f"({r['seconds']:.0f}s)", flush=True)

    lines = ["| size | attention | images/s | peak RSS MiB | images/s after / before | peak RSS after / before |",
             "|---:|---|---:|---:|---:|---:|"]
    for before, after in zip(rows[::2], rows[1::2]):
        lines.append(f"| {before['size']} | einsum (before) | {before['images_per_s']:.3f} | "
                     f"{before['peak_rss_mib']:.0f} | | |")
        lines.append(f"| {after['size']} | sdpa (after) | {after['images_per_s']:.3f} | {after['peak_rss_mib']:.0f} | "
                     f"{after['images_per_s'] / before['images_per_s']:.2f}x | "
                     f"{after['peak_rss_mib'] / before['peak_rss_mib']:.2f}x |")
    if rss:
        lines += ["", "| 31 users x 8 images, 256 px, guidance 3, 1 step per stage | attention | peak RSS MiB | seconds |",
                  "|---|---|---:|---:|"]
        lines += [f"| batches of {r['batch_size']} | {r['attention']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |"
                  for r in rss]
    print()
    print("\n".join(lines))
    import torch

    out = Path(args.out or "benchmarks/results/bench_generate_sdpa.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "threads": args.threads, "torch": torch.__version__, "untrained_models": True,
        "decoder": "CPU_DECODER_SIZES (dim 16, dim_mults 1 2 4, 2 heads x 16, mid self-attention at size / 4)",
        "sampler": DEFAULTS.sampler, "throughput": rows, "rss_31_users_256px": rss}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="/work/main", help="checkout of the old code")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dpm_steps", type=int, default=10, help="steps of the new-dpm row (both stages)")
    ap.add_argument("--sizes", default=None, help="default 32,64,128 (64,128,256 with --attention)")
    ap.add_argument("--skip_rss", action="store_true")
    ap.add_argument("--skip_throughput", action="store_true")
    ap.add_argument("--rss_paths", default="old,new", help="which paths get the 31 x 200 RSS run")
    ap.add_argument("--attention", action="store_true", help="einsum vs SDPA attention instead (see above)")
    ap.add_argument("--attention_steps", type=int, default=4, help="steps per stage of the --attention rows")
    ap.add_argument("--rss_batch_sizes", default="64,32", help="--attention: batch sizes of the 256 px RSS runs")
    ap.add_argument("--out", default=None,
                    help="default benchmarks/results/bench_generate.json (bench_generate_sdpa.json with --attention)")
    args = ap.parse_args()
    if args.attention:
        return attention_benchmark(args)
    args.sizes = args.sizes or "32,64,128"
    args.out = args.out or "benchmarks/results/bench_generate.json"
    old_root, new_root = Path(args.old), REPO
    # images per size: enough batches to time, few enough for a busy 2-core machine
    plan = {32: (8, 4), 64: (4, 4), 128: (2, 2)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        tmp = Path(tmp)
        for size in [] if args.skip_throughput else [int(s) for s in args.sizes.split(",")]:
            users, n = plan.get(size, (2, 2))
            bundle = build_bundle(tmp / f"chain{size}.pt", size, num_users=31)
            base = dict(bundle=str(bundle), users=[str(u) for u in range(users)], n=n, threads=args.threads,
                        batch_size=64)
            variants = {
                "old": (old_root, dict(base, steps=25, prior_steps=16)),
                "new": (new_root, dict(base, steps=25, prior_steps=16, sampler="ddim")),
                "new-dpm": (new_root, dict(base, steps=args.dpm_steps, prior_steps=args.dpm_steps, sampler="dpmpp_2m")),
            }
            for name, (root, spec) in variants.items():
                r = run_child(root, dict(spec, out=str(tmp / f"{name}{size}")))
                row = {"size": size, "space": "pixel", "path": name, "steps": spec["steps"],
                       "prior_steps": spec["prior_steps"], **r, "images_per_s": r["images"] / r["seconds"]}
                rows.append(row)
                print(f"{size:4d} px {name:8s}: {row['images_per_s']:.3f} images/s ({r['images']} images, "
                      f"{r['seconds']:.1f}s, peak RSS {r['peak_rss_mib']:.0f} MiB)", flush=True)
        rss = []
        if not args.skip_rss:
            bundle = build_bundle(tmp / "rss64.pt", 64, num_users=31, tiny=True)
            spec = dict(bundle=str(bundle), users=[str(u) for u in range(31)], n=200, threads=args.threads,
                        batch_size=64, steps=1, prior_steps=1)
            paths = (("old", old_root, {}), ("new", new_root, {"sampler": "ddim"}))
            for name, root, extra in [p for p in paths if p[0] in args.rss_paths.split(",")]:
                start = time.perf_counter()
                r = run_child(root, dict(spec, out=str(tmp / f"rss_{name}"), **extra))
                rss.append({"path": name, **r, "wall_s": time.perf_counter() - start})
                print(f"31 x 200 at 64 px, {name}: peak RSS {r['peak_rss_mib']:.0f} MiB ({r['seconds']:.0f}s)", flush=True)

    print()
    print("| size | path | steps (decoder/prior) | images/s | ratio to old | peak RSS MiB |")
    print("|---:|---|---|---:|---:|---:|")
    for r in rows:
        old = next(o for o in rows if o["size"] == r["size"] and o["path"] == "old")
        print(f"| {r['size']} | {r['path']} | {r['steps']}/{r['prior_steps']} | {r['images_per_s']:.3f} | "
              f"{r['images_per_s'] / old['images_per_s']:.2f}x | {r['peak_rss_mib']:.0f} |")
    if rss:
        print()
        print("| 31 users x 200 images, 64 px (1 step per stage, dim-8 U-Net) | peak RSS MiB | seconds |")
        print("|---|---:|---:|")
        for r in rss:
            print(f"| {r['path']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "untrained_models": True,
                               "throughput": rows, "rss_31x200_64px": rss}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
