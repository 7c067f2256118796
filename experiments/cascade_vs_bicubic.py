"""Given a perfect 64 px base image, does the diffusion upsampler (64 -> 256) add the right detail,
better than bicubic upsampling?

This isolates the upsampler, as judging the decoder on true embeddings isolates the decoder: the
low-res input is the real 256 px test image shrunk to 64 px by area averaging (as the data loader
shrinks images: `data/dataset.py`'s box filter, which equals `F.interpolate(mode="area")` at an
integer factor), so nothing upstream of the upsampler can be blamed. Three ways back to 256 px:

- bicubic: `F.interpolate(mode="bicubic", align_corners=False)`, clamped to [0, 1];
- cascade: the diffusion upsampler (`MicroDopplerUpsampler`, trained here on the train images
  only through `fit_upsampler`), sampled with its default 8 network evaluations;
- nearest: the 64 px input enlarged by nearest neighbour, the floor.

With `--nearest_input`, a diagnostic fourth row ("cascade, nearest input") feeds the upsampler the
test image shrunk by nearest-neighbour subsampling instead, which is how its training shrinks
images (dalle2-pytorch's `LowresConditioner`), to show how much of the result is that mismatch.

Each set is judged against the real 256 px test images: KID and FID in the features of a recogniser
trained at 256 px on the real train images (the K-shot shape, time pooled by 16), beside the
size-matched real floor (real train vs real test); A_gen / A_real by that recogniser; per-image
relative errors of the kinematics read back (upsampled image i against real test image i: max
envelope, cadence, torso; walks away from the radar read flipped, so that the envelope read is the
walker's), beside the real spread (another recording of the same user), PSNR against the real
image, and the mean background level.

    python experiments/cascade_vs_bicubic.py            # 8 users x 40 recordings at 256 px (~25 min, one core)
    python experiments/cascade_vs_bicubic.py --smoke    # 3 users x 6 recordings, 16 -> 32 px: proves it runs
    python experiments/cascade_vs_bicubic.py --upsampler /tmp/cascade_cascade256/upsampler.pt \
        --lowres_noise_levels 0 0.1   # the cascade256 profile's upsampler, sampled at other input noise levels

Writes benchmarks/results/cascade_vs_bicubic.json, .md and .png (the grid: rows are test images,
columns real | bicubic | cascade | the 64 px input enlarged by nearest neighbour).
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dalle2_md.augmentation.cascade import upsampler_schedule  # noqa: E402
from dalle2_md.data.display import save_grid  # noqa: E402
from dalle2_md.evaluation.metrics import (background_levels, domain_fid, kernel_distance,  # noqa: E402
                                          read_kinematics_batch)
from dalle2_md.evaluation.kinematics import read_kinematics  # noqa: E402
from dalle2_md.evaluation.protocol import KSHOT_RECOGNISER, simulated_sets, sized_recogniser_config  # noqa: E402
from dalle2_md.evaluation.recogniser import (RecogniserConfig, RecogniserTrainConfig, accuracy,  # noqa: E402
                                             extract_features, train_recogniser)
from dalle2_md.models.upsampler import MicroDopplerUpsampler, UpsamplerConfig  # noqa: E402
from dalle2_md.training.fit import fit_upsampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks/results/cascade_vs_bicubic"
METHODS = ("bicubic", "cascade", "nearest")
DIAGNOSTIC = "cascade, nearest input"
KINEMATICS = ("max_envelope", "cadence", "torso")
# 900 steps of the dim-16 upsampler at batch 16: about 1 s a step on one busy CPU thread, 16 min
DEFAULT_STEPS = 900


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run: 3 users x 6 recordings, 16 -> 32 px, a few steps")
    ap.add_argument("--num_users", type=int, default=8)
    ap.add_argument("--per_user", type=int, default=40, help="recordings per user")
    ap.add_argument("--num_test", type=int, default=10, help="the last recordings of each user held out as test")
    ap.add_argument("--size", type=int, default=256, help="the data's own size (the upsampler's output)")
    ap.add_argument("--lowres", type=int, default=64, help="the base image's size (the upsampler's input)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="upsampler training steps")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dim", type=int, default=16, help="upsampler U-Net width (32 is its default; 16 steps 2.5x faster)")
    ap.add_argument("--recogniser_steps", type=int, default=800)
    ap.add_argument("--data_seed", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seeds the upsampler's and the recogniser's training")
    ap.add_argument("--sample_seed", type=int, default=0)
    ap.add_argument("--grid_rows", type=int, default=4)
    ap.add_argument("--nearest_input", action="store_true",
                    help=f"also judge '{DIAGNOSTIC}': the upsampler fed nearest-shrunk inputs, as its training shrinks them")
    ap.add_argument("--lowres_noise_levels", type=float, nargs="+", default=None,
                    help="also judge the cascade sampled with its low-res input noised at these levels (fractions of "
                         "the low-res schedule) instead of the config's, one row each ('cascade, input noise L')")
    ap.add_argument("--upsampler", type=Path, default=None,
                    help="judge this trained upsampler bundle (same data and sizes) instead of training one")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="path prefix of the .json, .md and .png")
    ap.add_argument("--work_dir", type=Path, default=None, help="the upsampler's run folder (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.num_users, args.per_user, args.num_test, args.size, args.lowres = 3, 6, 2, 32, 16
        args.steps, args.batch_size, args.dim, args.recogniser_steps, args.grid_rows = 4, 4, 8, 10, 2
    return args


def upsampler_config(args) -> UpsamplerConfig:
    if args.smoke:
        return UpsamplerConfig(lowres_size=args.lowres, output_size=args.size, dim=args.dim, dim_mults=(1, 2),
                               attn_heads=1, attn_dim_head=8)
    return UpsamplerConfig(lowres_size=args.lowres, output_size=args.size, dim=args.dim)


def recogniser_config(args, num_users: int) -> RecogniserConfig:
    shape = dict(KSHOT_RECOGNISER)
    if args.smoke:  # FID needs more images per set than features: 6 test images, 4 features
        shape.update(widths=(4, 8), feature_dim=4)
    return sized_recogniser_config(shape, num_users, args.size)


def make_data(args) -> dict:
    return simulated_sets(args.num_users, args.per_user, args.size, args.data_seed, args.num_test)


def train_upsampler(args, train_images: torch.Tensor, work: Path):
    schedule = replace(upsampler_schedule(args.steps, args.batch_size), lr=args.lr, seed=args.seed,
                       log_every=max(1, args.steps // 10))
    start = time.perf_counter()
    ups, record = fit_upsampler(train_images, upsampler_config(args), schedule, work)
    seconds = time.perf_counter() - start
    return ups, {"seconds": seconds, "step_seconds": seconds / args.steps, "final_loss": record.losses[-1],
                 "params": sum(p.numel() for p in ups.unet.parameters())}


def upsampled_sets(ups, real01: torch.Tensor, args) -> tuple[dict, dict, torch.Tensor]:
    """{method: (N, 1, size, size) in [0, 1]}, {method: sampling seconds}, the 64 px input."""
    low = F.interpolate(real01, size=args.lowres, mode="area")
    low_nearest = F.interpolate(real01, size=args.lowres, mode="nearest")  # how the upsampler's training shrinks
    out, seconds = {}, {}
    out["bicubic"] = F.interpolate(low, size=args.size, mode="bicubic", align_corners=False).clamp(0, 1)
    out["nearest"] = F.interpolate(low, size=args.size, mode="nearest")
    inputs = [("cascade", low, None)] + ([(DIAGNOSTIC, low_nearest, None)] if args.nearest_input else [])
    inputs += [(f"cascade, input noise {level:g}", low, level) for level in args.lowres_noise_levels or ()]
    for name, lowres, level in inputs:
        start = time.perf_counter()
        out[name] = ups.sample(lowres, seed=args.sample_seed, lowres_noise_level=level)
        seconds[name] = time.perf_counter() - start
        log(f"{name}: {len(lowres)} images in {seconds[name]:.0f}s")
    first = ("bicubic", "cascade", "nearest")
    return {k: out[k] for k in first + tuple(k for k in out if k not in first)}, seconds, low


def psnr(x01: torch.Tensor, real01: torch.Tensor) -> float:
    mse = ((x01.double() - real01.double()) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean())


def walker_on_top(real01: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each real image's walker is on the positive-Doppler side. gait31 walks
    away from the radar half the time; the kinematic reader's envelope and cadence follow the
    upper envelope, which then sits on zero Doppler (a max envelope of 0 px and no cadence), so
    such images, and every upsampled version of them, are read flipped about zero Doppler."""
    kin = [read_kinematics(im) for im in real01[:, 0].double().numpy()]
    return torch.tensor([np.percentile(k.upper_envelope_px, 95) >= np.percentile(-k.lower_envelope_px, 95)
                         for k in kin])


def read_walker_side(x01: torch.Tensor, on_top: torch.Tensor) -> dict:
    """`read_kinematics_batch` of images in [0, 1], each read with its walker on top."""
    x = torch.where(on_top[:, None, None, None], x01, x01.flip(-2))
    return read_kinematics_batch(x[:, 0].double().numpy())


def kinematic_errors(readings: dict, real: dict) -> dict:
    """Per-image relative errors (image i against real image i), averaged over the images both read."""
    out = {}
    for k in KINEMATICS:
        err = np.abs(readings[k] - real[k]) / np.maximum(np.abs(real[k]), 1e-9)
        out[k] = float(np.nanmean(err)) if np.isfinite(err).any() else None
    return out


def other_recording(readings: dict, user_ids: torch.Tensor) -> dict:
    """Each test image's readings replaced by those of the same user's next test recording: the
    real recording-to-recording spread, the kinematic errors' reference."""
    out = {k: np.empty_like(v) for k, v in readings.items()}
    for u in torch.unique(user_ids):
        idx = torch.nonzero(user_ids == u).reshape(-1).numpy()
        for k in readings:
            out[k][idx] = readings[k][np.roll(idx, -1)]
    return out


def judge(rec, sets: dict, real_test, real_train, args) -> dict:
    """Every measure of each set against the real test images, plus the real floor."""
    test_x, test_ids = real_test
    g = torch.Generator().manual_seed(args.seed)
    floor_x = real_train[0][torch.randperm(len(real_train[0]), generator=g)[:len(test_x)]]  # size-matched
    feats_test = extract_features(rec, test_x)
    a_real = accuracy(rec, test_x, test_ids)[0]
    on_top = walker_on_top((test_x + 1) / 2)
    real_kin = read_walker_side((test_x + 1) / 2, on_top)
    real_bg = float(background_levels(test_x).mean())
    rows = {"real floor (train vs test)": {
        "kid": kernel_distance(extract_features(rec, floor_x), feats_test)["mean"],
        "fid": domain_fid(rec, test_x, floor_x), "background": float(background_levels(floor_x).mean()),
        "kinematic_rel_error": kinematic_errors(other_recording(real_kin, test_ids), real_kin)}}
    for name, x01 in sets.items():
        x = x01 * 2 - 1
        rows[name] = {"kid": kernel_distance(extract_features(rec, x), feats_test)["mean"],
                      "fid": domain_fid(rec, test_x, x), "a_gen": accuracy(rec, x, test_ids)[0],
                      "psnr": psnr(x01, (test_x + 1) / 2), "background": float(background_levels(x).mean()),
                      "kinematic_rel_error": kinematic_errors(read_walker_side(x01, on_top), real_kin)}
        rows[name]["a_gen_over_a_real"] = rows[name]["a_gen"] / a_real if a_real else None
    floor = rows["real floor (train vs test)"]
    for row in rows.values():
        row["kid_over_floor"] = row["kid"] / floor["kid"] if floor["kid"] > 0 else None
        row["fid_over_floor"] = row["fid"] / floor["fid"] if floor["fid"] > 0 else None
    return {"a_real": a_real, "real_background": real_bg, "walkers_flipped": int((~on_top).sum()), "rows": rows}


def grid_rows(test_ids: torch.Tensor, count: int) -> list[int]:
    """Test images to show: the first one of each of `count` users."""
    firsts = [int(torch.nonzero(test_ids == u)[0]) for u in torch.unique(test_ids)]
    return firsts[:count]


def write_grid(path: Path, real01, sets: dict, low, picks: list[int], size: int) -> Path:
    shown_low = F.interpolate(low, size=size, mode="nearest")
    tiles = [t for i in picks for t in (real01[i], sets["bicubic"][i], sets["cascade"][i], shown_low[i])]
    return save_grid(torch.stack(tiles), path, nrow=4, colormap="jet")


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"


def upsampler_line(result: dict) -> str:
    s, u = result["settings"], result["upsampler"]
    if "from" in u:
        return f"{result['upsampler_config']['dim']} wide, {u['params']:,} weights, loaded from `{u['from']}`"
    return (f"dim {s['dim']}, {u['params']:,} weights, {s['steps']} steps at batch {s['batch_size']} on {s['lowres']} "
            f"px crops, {u['step_seconds']:.2f} s a step, {u['seconds'] / 60:.1f} min")


def markdown(result: dict) -> str:
    s, j = result["settings"], result["judged"]
    lines = [
        "# Cascade (diffusion upsampler) vs bicubic, from the real image shrunk to "
        f"{s['lowres']} px\n",
        f"gait31, {s['num_users']} users x {s['per_user']} recordings at {s['size']} px (data seed {s['data_seed']}), "
        f"the last {s['num_test']} of each user test ({result['num_test_images']} images), the rest train "
        f"({result['num_train_images']}). Upsampler: {upsampler_line(result)}; sampled with {result['sample_timesteps']} network evaluations. Recogniser: "
        f"{s['recogniser_steps']} steps on the real train images, A_real {j['a_real']:.3f}. "
        f"Wall time {result['wall_seconds'] / 60:.1f} min.\n",
        "| set | KID | KID / floor | FID | FID / floor | A_gen / A_real | envelope err | cadence err "
        "| torso err | PSNR dB | background |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in j["rows"].items():
        k = r.get("kinematic_rel_error", {})
        lines.append(f"| {name} | {_fmt(r['kid'])} | {_fmt(r['kid_over_floor'])} | {_fmt(r['fid'])} | "
                     f"{_fmt(r['fid_over_floor'])} | {_fmt(r.get('a_gen_over_a_real'))} | "
                     f"{_fmt(k.get('max_envelope'))} | {_fmt(k.get('cadence'))} | {_fmt(k.get('torso'))} | "
                     f"{_fmt(r.get('psnr'), 4)} | {_fmt(r['background'])} |")
    lines.append(f"| real test | 0 | - | 0 | - | 1 | 0 | 0 | 0 | - | {_fmt(j['real_background'])} |")
    lines.append("\nKID and FID against the real test images in the recogniser's features; the floor is "
                 "a size-matched draw of real train images. Kinematic errors: per image, the upsampled "
                 "image of test image i against test image i's own reading, relative, averaged, read with the "
                 "walker on the positive-Doppler side (images of walks away flipped); on the floor row, "
                 "another test recording of the same user against it (the real spread). "
                 f"'{DIAGNOSTIC}': the upsampler fed nearest-neighbour-shrunk inputs, as its training "
                 "shrinks them, instead of the area-shrunk ones the data loader and base decoder give.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    data = make_data(args)
    train_x, train_ids = data["train"]
    test_x, test_ids = data["test"]
    log(f"data: {len(train_x)} train, {len(test_x)} test images at {args.size} px")
    if args.upsampler:
        ups = MicroDopplerUpsampler.load(args.upsampler)
        up_info = {"seconds": 0.0, "step_seconds": 0.0, "final_loss": float("nan"), "from": str(args.upsampler),
                   "params": sum(p.numel() for p in ups.unet.parameters())}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ups, up_info = train_upsampler(args, train_x, args.work_dir or Path(tmp))
    if args.work_dir and not args.upsampler:  # kept for a second look (`MicroDopplerUpsampler.load`)
        ups.save(Path(args.work_dir) / "upsampler_final.pt", meta={"script": "cascade_vs_bicubic.py"})
    log(f"upsampler: {args.steps} steps in {up_info['seconds']:.0f}s ({up_info['step_seconds']:.3f} s a step), "
        f"last loss {up_info['final_loss']:.4f}")
    real01 = (test_x + 1) / 2
    sets, sample_seconds, low = upsampled_sets(ups, real01, args)
    start = time.perf_counter()
    rec = train_recogniser(train_x, train_ids, config=recogniser_config(args, args.num_users),
                           train=RecogniserTrainConfig(steps=args.recogniser_steps, seed=args.seed))
    rec_seconds = time.perf_counter() - start
    judged = judge(rec, sets, data["test"], data["train"], args)
    log(f"recogniser: {rec_seconds:.0f}s, A_real {judged['a_real']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_grid(out.with_suffix(".png"), real01, sets, low, grid_rows(test_ids, args.grid_rows), args.size)
    result = {"question": "given a perfect low-res base image, does the diffusion upsampler add the right detail, "
                          "better than bicubic?",
              "settings": vars(args) | {"out": str(args.out), "work_dir": str(args.work_dir)},
              "upsampler_config": ups.config.to_dict(), "sample_timesteps": ups.config.sample_timesteps,
              "num_train_images": len(train_x), "num_test_images": len(test_x),
              "upsampler": up_info, "sample_seconds": sample_seconds, "recogniser_seconds": rec_seconds,
              "judged": judged, "wall_seconds": time.perf_counter() - wall}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {out}.json, .md and .png in {result['wall_seconds'] / 60:.1f} min")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
