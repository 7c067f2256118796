"""The 256 px profiles of the quality protocol: DALL-E 2's cascade against the simple alternatives,
every set judged at the data's own size.

Three ways to a 256 px sample of a user, all from generators trained on the same real train images:

- cascade: the two-stage chain at the base size (64 px, pixels, trained on the train images
  shrunk by area; its decoder v-prediction on a zero-terminal-SNR schedule, `protocol.V_ZSNR_DECODER`) and the diffusion upsampler (64 -> 256, trained on random crops of the full-size
  train images), sampled with its 8 network evaluations;
- bicubic: the same base samples enlarged by bicubic interpolation;
- latent: the two-stage chain at 256 px through a VQGAN latent (f = 8 on CPU, a 32 x 32 latent).

Each set is judged by `evaluate_samples` against the real 256 px test images, with a recogniser
trained at 256 px on the real train images: A_gen / A_real, CAS, domain FID and KID beside their
size-matched real floors, the background-defect rate and the kinematic errors. A grid shows real
images beside the three sets at full size.

    python benchmarks/quality.py --profile cascade256   # 2 CPU cores (~75 min), both used
    python benchmarks/quality.py --profile gpu256       # 31 users at GPU sizes (a GPU; time an estimate)
    python benchmarks/cascade256.py --profile smoke     # tiny 16 -> 32 px run: proves the phases run

Two processes: the main one trains and samples the base chain; a helper (`--lane helper`, started
by the main one) trains the reference recogniser, the upsampler and the latent chain. Both cache
what they made in the work folder, so a run that stopped resumes from the last finished model.
Writes benchmarks/results/quality_cascade256.{json,md} and its grid (smoke: under /tmp).
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.augmentation.cascade import enlarge_samples, upsampler_schedule  # noqa: E402
from dalle2_md.augmentation.harness import cached_generator  # noqa: E402
from dalle2_md.data.display import save_grid  # noqa: E402
from dalle2_md.evaluation.protocol import (CascadeProfile, cascade_profiles, simulated_sets,  # noqa: E402
                                           sized_recogniser_config)
from dalle2_md.evaluation.recogniser import cached_recogniser  # noqa: E402
from dalle2_md.evaluation.report import evaluate_samples  # noqa: E402
from dalle2_md.generation.samples import sample_tensors  # noqa: E402
from dalle2_md.models.upsampler import MicroDopplerUpsampler, UpsamplerConfig, shrink  # noqa: E402
from dalle2_md.training.fit import fit_upsampler  # noqa: E402
from dalle2_md.training.presets import GeneratorBudget  # noqa: E402
from dalle2_md.utils import plain_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_data(p: CascadeProfile) -> dict:
    return simulated_sets(p.num_users, p.per_user, p.size, p.data_seed, p.num_test)


def recogniser(p: CascadeProfile, data: dict, work: Path):
    """The reference recogniser at the data's size on the real train images (cached)."""
    config = sized_recogniser_config(p.recogniser, p.num_users, p.size)
    return cached_recogniser(work / "recogniser.pt", *data["train"], config=config, train=p.recogniser_train)


def upsampler(p: CascadeProfile, data: dict, work: Path) -> tuple[MicroDopplerUpsampler, float]:
    """The base -> full-size upsampler on the real train images (cached as work/upsampler.pt,
    reused only while its config and training schedule are this profile's)."""
    path = work / "upsampler.pt"
    config = UpsamplerConfig(lowres_size=p.base_size, output_size=p.size, **p.upsampler)
    schedule = replace(upsampler_schedule(p.upsampler_train_steps, p.upsampler_batch_size), seed=p.seed,
                       log_every=max(1, p.upsampler_train_steps // 10))
    train_key = json.loads(json.dumps(asdict(schedule)))
    if path.exists():
        cached = MicroDopplerUpsampler.load(path)
        if cached.config == config and cached.meta.get("train") == train_key:
            return cached, 0.0
    start = time.perf_counter()
    ups, _ = fit_upsampler(data["train"][0], config, schedule, work / "runs" / "upsampler")
    seconds = time.perf_counter() - start
    ups.save(path, meta={"script": "benchmarks/cascade256.py", "seconds": seconds, "train": train_key})
    return ups, seconds


def chain_samples(p: CascadeProfile, images, ids, budget: GeneratorBudget, work: Path, name: str,
                  times: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-stage chain on exactly these images (cached under work/cache) and its
    `samples_per_user` samples per user; its training and sampling seconds go into `times`."""
    start = time.perf_counter()
    gen = cached_generator(images, ids, cache_dir=work / "cache", num_users=p.num_users, kind="two_stage",
                           budget=budget, seed=p.seed, run_dir=work / "runs" / name, colormap="jet")
    times[f"{name}_train"] = time.perf_counter() - start
    log(f"{name} chain ({images.shape[-1]} px) in {times[f'{name}_train']:.0f}s ({gen.seconds})")
    start = time.perf_counter()
    out = sample_tensors(gen.model, list(range(p.num_users)), p.samples_per_user, seed=p.sample_seed,
                         sampling=budget.sampling)
    times[f"{name}_sample"] = time.perf_counter() - start
    return out


def helper_lane(p: CascadeProfile, work: Path) -> None:
    """The helper process: recogniser, upsampler, then the latent chain and its samples."""
    data = make_data(p)
    times = {}
    start = time.perf_counter()
    recogniser(p, data, work)
    times["recogniser"] = time.perf_counter() - start
    log(f"helper: recogniser in {times['recogniser']:.0f}s")
    _, times["upsampler"] = upsampler(p, data, work)
    log(f"helper: upsampler in {times['upsampler']:.0f}s")
    if p.latent_budget is not None:
        images, ids = chain_samples(p, *data["train"], p.latent_budget, work, "latent", times)
        torch.save({"images": images, "ids": ids}, work / "latent_samples.pt")
    (work / "helper_times.json").write_text(json.dumps(times, indent=2) + "\n")


def start_helper(p: CascadeProfile, work: Path):
    log_path = work / "helper.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--profile", p.name, "--work_dir", str(work), "--lane", "helper"]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    log(f"helper: pid {proc.pid}, log {log_path}")
    return proc, log_path


def summary(m: dict) -> dict:
    """The figures of one set's `evaluate_samples` metrics that the table shows."""
    fid, kid, kin = m["fid"], m["kid"], m["kinematics"]
    floor = fid.get("train_vs_test_matched")
    return {
        "A_gen": m["identity"]["A_gen"], "A_real": m["identity"]["A_real"],
        "A_gen_over_A_real": m["identity"]["A_gen"] / m["identity"]["A_real"] if m["identity"]["A_real"] else None,
        "CAS_over_A_real": m.get("cas", {}).get("CAS_over_A_real"),
        "fid": fid["gen_vs_test"], "fid_floor": floor,
        "fid_over_floor": fid["gen_vs_test"] / floor if fid["gen_vs_test"] is not None and floor else None,
        "kid": (kid["gen_vs_test"] or {}).get("mean"), "kid_floor": (kid["train_vs_test_matched"] or {}).get("mean"),
        "kid_over_floor": kid["ratio"],
        "defects": m["background"]["gen"]["rate"], "defects_real_test": m["background"]["real_test"]["rate"],
        "kinematic_error": kin["gen"]["mean_rel_error"], "kinematic_floor": kin["floor"]["mean_rel_error"],
    }


def write_grid(path: Path, data: dict, sets: dict, p: CascadeProfile, rows: int = 4) -> Path:
    """Rows: one user each; columns: a real test image, then the user's first sample of each set."""
    test_x, test_ids = data["test"]
    tiles = []
    for u in range(min(rows, p.num_users)):
        tiles.append(test_x[int(torch.nonzero(test_ids == u)[0])])
        tiles += [s["images"][int(torch.nonzero(s["ids"] == u)[0])] for s in sets.values()]
    return save_grid((torch.stack(tiles) + 1) / 2, path, nrow=1 + len(sets), colormap="jet")


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return "/".join(_fmt(v.get(k), digits) for k in ("max_envelope", "cadence", "torso"))
    return f"{v:.{digits}g}"


def markdown(result: dict) -> str:
    p, t = result["profile"], result["times"]
    lines = [f"# 256 px: cascade vs bicubic vs latent (`--profile {p['name']}`)\n",
             f"gait31, {p['num_users']} users x {p['per_user']} recordings at {p['size']} px (data seed {p['data_seed']}), "
             f"the last {p['num_test']} of each user test; base {p['base_size']} px; {p['samples_per_user']} samples "
             f"per user per set. {result['device']}. Wall time {result['wall_seconds'] / 60:.1f} min "
             f"(times in s: {', '.join(f'{k} {v:.0f}' for k, v in t.items())}).\n",
             "| set | A_gen / A_real | CAS / A_real | FID / floor | KID (real floor) | background defects (real test) "
             "| envelope / cadence / torso error (real floor) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in result["sets"].items():
        lines.append(f"| {name} | {_fmt(s['A_gen_over_A_real'])} | {_fmt(s['CAS_over_A_real'])} | "
                     f"{_fmt(s['fid_over_floor'])} | {_fmt(s['kid'])} ({_fmt(s['kid_floor'])}) | "
                     f"{_fmt(s['defects'])} ({_fmt(s['defects_real_test'])}) | {_fmt(s['kinematic_error'])} "
                     f"({_fmt(s['kinematic_floor'])}) |")
    lines.append(f"\nA_real {_fmt(next(iter(result['sets'].values()))['A_real'])}. Grid: `{result['grid']}` "
                 f"(columns: real test | {' | '.join(result['sets'])}). Per-set reports: `{result['eval_dir']}`.")
    return "\n".join(lines) + "\n"


def run(p: CascadeProfile, work: Path, out: Path, workers: int = 2) -> dict:
    wall = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(p)
    log(f"{p.name}: {len(data['train'][0])} train / {len(data['test'][0])} test images at {p.size} px")
    helper = start_helper(p, work) if workers > 1 else None
    times = {}
    low, ids = chain_samples(p, shrink(data["train"][0], p.base_size), data["train"][1], p.base_budget, work, "base",
                             times)
    if helper is None:
        helper_lane(p, work)
    elif helper[0].wait() != 0:
        raise SystemExit(f"the helper process failed; see {helper[1]}")
    torch.set_num_threads(max(1, workers))  # the helper is done: both cores for what is left
    times.update(json.loads((work / "helper_times.json").read_text()))
    ups, _ = upsampler(p, data, work)
    start = time.perf_counter()
    sets = {"cascade": {"images": enlarge_samples(low, p.size, ups, seed=p.sample_seed), "ids": ids}}
    times["cascade_sample"] = time.perf_counter() - start
    sets["bicubic"] = {"images": enlarge_samples(low, p.size, None, seed=p.sample_seed), "ids": ids}
    if p.latent_budget is not None:
        sets["latent"] = torch.load(work / "latent_samples.pt")
    rec = recogniser(p, data, work)
    eval_dir = work / "eval" / out.name  # the per-set reports and plots stay beside the models
    judged = {}
    for name, s in sets.items():
        start = time.perf_counter()
        m = evaluate_samples(data["train"], data["test"], (s["images"], s["ids"]), recogniser=rec,
                             out_dir=eval_dir / name, colormap="jet", cas=p.cas)
        judged[name] = summary(m)
        log(f"{name}: A_gen/A_real {_fmt(judged[name]['A_gen_over_A_real'])}, FID/floor "
            f"{_fmt(judged[name]['fid_over_floor'])}, KID/floor {_fmt(judged[name]['kid_over_floor'])} "
            f"({time.perf_counter() - start:.0f}s)")
    grid = write_grid(out.with_name(out.name + "_grid.png"), data, sets, p)
    result = {"profile": json.loads(json.dumps(asdict(p), default=str)), "device": p.device_note,
              "expected": p.expected, "times": times, "sets": judged, "grid": str(grid.relative_to(ROOT))
              if grid.is_relative_to(ROOT) else str(grid), "eval_dir": str(eval_dir),
              "sample_timesteps": ups.config.sample_timesteps, "wall_seconds": time.perf_counter() - wall,
              "date": time.strftime("%Y-%m-%d")}
    out.with_suffix(".json").write_text(json.dumps(plain_json(result), indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {out}.json / .md in {result['wall_seconds'] / 60:.1f} min")
    return result


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=tuple(cascade_profiles()), default="cascade256")
    ap.add_argument("--work_dir", type=Path, default=None, help="models and caches (default: /tmp/cascade_<profile>)")
    ap.add_argument("--out", type=Path, default=None, help="path prefix of the .json / .md / _grid.png")
    ap.add_argument("--workers", type=int, default=2, choices=(1, 2), help="processes (one thread each)")
    ap.add_argument("--decoder_config", type=json.loads, default=None,
                    help='JSON of DecoderConfig fields that replace the base chain decoder\'s (the profiles\' is v + '
                         'zero terminal SNR + min-SNR-5), e.g. \'{"prediction": "eps", "zero_terminal_snr": false, '
                         '"loss_weighting": "p2"}\' for the library default; the other models are shared')
    ap.add_argument("--lane", choices=("helper",), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    p = cascade_profiles()[args.profile]
    if args.decoder_config:
        p = replace(p, base_budget=replace(p.base_budget, decoder={**p.base_budget.decoder, **args.decoder_config}))
    work = args.work_dir or Path(f"/tmp/cascade_{p.name}")
    if args.lane == "helper":
        helper_lane(p, work)
        return None
    default_out = ROOT / "benchmarks/results" / f"quality_{p.name}" if p.name != "smoke" else work / "quality_smoke"
    return run(p, work, args.out or default_out, workers=args.workers)


if __name__ == "__main__":
    main()
