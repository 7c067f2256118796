"""Pixel vs latent decoder, and U-Net vs DiT over the latent, at equal training time.

Each arm is a whole two-stage generator (embedding model, [VQGAN,] decoder, prior) trained on the
same simulated users at 64 px. The pixel U-Net decoder trains a fixed number of steps; every
latent arm then gets exactly the seconds that decoder took, for its VQGAN and its decoder together
(`GeneratorBudget.decoder_seconds`: the decoder stops when the time is up). Judged like the
quality protocol: A_gen / A_real by the reference recogniser, domain FID against its size-matched
floor, kinematic errors against theirs, plus training and sampling images per second.

    python experiments/latent_vs_pixel.py                   # 64 px, 8 users (about an hour on one core)
    python experiments/latent_vs_pixel.py --smoke           # 32 px, tiny models: proves it runs

Writes benchmarks/results/latent_vs_pixel.json and .md (per-arm evaluation reports and sample
grids in benchmarks/results/latent_vs_pixel/).
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.defaults import SamplingConfig  # noqa: E402
from dalle2_md.generation.samples import sample_tensors
from dalle2_md.augmentation.harness import train_generator
from dalle2_md.evaluation.protocol import Profile, protocol_data, reference_recogniser  # noqa: E402
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig  # noqa: E402
from dalle2_md.evaluation.report import evaluate_samples  # noqa: E402
from dalle2_md.training.presets import CPU_DECODER_SIZES, QUICK_BUDGET, TINY_DECODER_SIZES, GeneratorBudget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINEMATICS = ("torso", "max_envelope", "cadence")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Arm:
    """One generator of the comparison; `same_time_as` names the arm whose decoder seconds this
    arm's VQGAN + decoder get (its `decoder_steps` is then only a cap)."""

    name: str
    budget: GeneratorBudget
    same_time_as: str | None = None


def _dit(sizes: dict, **over) -> dict:
    # a patch transformer over the 16 x 16 latent: 2 x 2 patches, 64 tokens
    return {**sizes, "backbone": "dit", "dit_patch_size": 2, **over}


def profiles() -> dict:
    # 600 pixel steps at 64 px: about a quarter of an hour per arm on one core
    pixel = GeneratorBudget(decoder_train_steps=600, sampling=SamplingConfig(decoder_steps=15, prior_steps=15))
    latent = replace(pixel, vqgan_train_steps=400, decoder_train_steps=100_000)
    # the 8-user default simulator (72 recordings per user, 16 of them test): the 448 / 128 split
    # of the first run of this comparison
    full = Profile(name="latent64", simulator="default", num_users=8, per_user=72, num_test=16, image_size=64,
                   samples_per_user=32, recogniser=dict(widths=(16, 32, 64), feature_dim=64, time_pool=4))
    arms = (Arm("pixel U-Net", pixel),
            Arm("latent U-Net (f = 4)", latent, same_time_as="pixel U-Net"),
            Arm("latent DiT (f = 4)", replace(latent, decoder=_dit(CPU_DECODER_SIZES, dim=64, attn_heads=4, dit_depth=4)),
                same_time_as="pixel U-Net"),
            # the DiT at a transformer's learning rate (the first DiT arm used every stage's 1e-3)
            Arm("latent DiT lr 3e-4 (f = 4)",
                replace(latent, decoder_lr=3e-4, decoder=_dit(CPU_DECODER_SIZES, dim=64, attn_heads=4, dit_depth=4)),
                same_time_as="pixel U-Net"))
    tiny = replace(QUICK_BUDGET, decoder_train_steps=12, prior_train_steps=10, clip_train_steps=10, decoder_batch_size=8)
    tiny_latent = replace(tiny, vqgan_train_steps=4, decoder_train_steps=100_000)
    smoke = Profile(name="latent_smoke", simulator="default", num_users=3, per_user=20, num_test=5, image_size=32,
                    samples_per_user=20,
                    recogniser=dict(widths=(8, 16), feature_dim=16), recogniser_train=RecogniserTrainConfig(steps=20))
    smoke_arms = (Arm("pixel U-Net", tiny),
                  Arm("latent U-Net (f = 4)", tiny_latent, same_time_as="pixel U-Net"),
                  Arm("latent DiT (f = 4)", replace(tiny_latent, decoder=_dit(TINY_DECODER_SIZES, dim=16)),
                      same_time_as="pixel U-Net"))
    return {"latent64": (full, arms), "latent_smoke": (smoke, smoke_arms)}


def _slug(name: str) -> str:
    """'latent U-Net (f = 4)' -> 'latent_U-Net_f_4': the arm's folder name."""
    return "_".join(name.replace("(", "").replace(")", "").replace("=", "").split())


def run_arm(arm: Arm, p: Profile, data: dict, recogniser, rows: dict, work: Path, eval_dir: Path) -> dict:
    budget = arm.budget
    if arm.same_time_as:
        budget = replace(budget, decoder_seconds=rows[arm.same_time_as]["seconds"]["decoder"])
    images, ids = data["sets"]["train"]
    gen = train_generator(images, ids, num_users=p.num_users, kind="two_stage", budget=budget, seed=p.train_seed,
                          run_dir=work / "runs" / _slug(arm.name), label_map=data["label_map"],
                          colormap="jet")
    start = time.perf_counter()
    fake = sample_tensors(gen.model, list(range(p.num_users)), p.samples_per_user, seed=p.sample_seed, sampling=budget.sampling)
    sample_seconds = time.perf_counter() - start
    m = evaluate_samples(data["sets"]["train"], data["sets"]["test"], fake, recogniser=recogniser,
                         out_dir=eval_dir / _slug(arm.name),
                         label_map=data["label_map"], colormap="jet", grid_per_user=4, cas=False)  # arms compared by A_gen, FID
    image_seconds = gen.seconds["decoder"] + gen.seconds.get("vqgan", 0.0)
    row = {
        "arm": arm.name, "budget": budget.to_dict(), "seconds": gen.seconds, "steps": gen.steps,
        "image_model_seconds": image_seconds,
        "decoder_train_img_per_s": gen.steps["decoder"] * budget.decoder_batch_size / gen.seconds["decoder"],
        "sample_img_per_s": len(fake[0]) / sample_seconds,
        "a_real": m["identity"]["A_real"], "a_gen": m["identity"]["A_gen"],
        "a_gen_over_a_real": m["identity"]["A_gen_over_A_real"],
        "fid": m["fid"]["gen_vs_test"], "fid_floor": m["fid"]["train_vs_test"],
        "kinematic_error": m["kinematics"]["gen"]["mean_rel_error"],
        "kinematic_error_floor": m["kinematics"]["floor"]["mean_rel_error"],
    }
    log(f"{arm.name}: {gen.steps['decoder']} decoder steps in {gen.seconds['decoder']:.0f}s "
        f"(+ VQGAN {gen.seconds.get('vqgan', 0):.0f}s); A_gen/A_real {row['a_gen_over_a_real']:.3f}, "
        f"FID {row['fid']} (floor {row['fid_floor']})")
    return row


def markdown(result: dict) -> str:
    def f(v, d=3):
        return "n/a" if v is None else f"{v:.{d}f}"

    lines = ["| arm | VQGAN + decoder seconds | decoder steps | decoder train img/s | sampling img/s | A_gen / A_real "
             "| domain FID (floor) | kinematic rel. error, torso / envelope / cadence (floor) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        kin = " / ".join(f(r["kinematic_error"][k]) for k in KINEMATICS)
        floor = " / ".join(f(r["kinematic_error_floor"][k]) for k in KINEMATICS)
        lines.append(f"| {r['arm']} | {r['image_model_seconds']:.0f} | {r['steps']['decoder']} | "
                     f"{r['decoder_train_img_per_s']:.1f} | {r['sample_img_per_s']:.1f} | {f(r['a_gen_over_a_real'])} | "
                     f"{f(r['fid'], 1)} ({f(r['fid_floor'], 1)}) | {kin} ({floor}) |")
    return "\n".join(lines) + "\n"


def run_arms(name: str, *, work: Path, out_json: Path, eval_dir: Path, only: list[str] | None = None,
             reuse: Path | None = None) -> dict:
    p, arms = profiles()[name]
    unknown = sorted(set(only or ()) - {a.name for a in arms})
    if unknown:
        raise SystemExit(f"--arms: no arm {unknown}; the {name} arms are: {', '.join(a.name for a in arms)}")
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    data = protocol_data(p)
    log(f"data: {', '.join(f'{s} {len(x)}' for s, (x, _) in data['sets'].items())} images, {p.num_users} users "
        f"({p.simulator}), {p.image_size}px")
    recogniser = reference_recogniser(p, data, work)
    # rows of an earlier run stand in for the arms not rerun (an equal-time arm reads its reference's seconds)
    rows = {r["arm"]: r for r in json.loads(reuse.read_text())["rows"]} if reuse else {}
    for arm in arms:
        if only and arm.name not in only:
            continue
        if arm.same_time_as and arm.same_time_as not in rows:
            raise SystemExit(f"arm {arm.name!r} gets the time of {arm.same_time_as!r}: run that arm too, or give "
                             "--reuse with a results file that has it.")
        rows[arm.name] = run_arm(arm, p, data, recogniser, rows, work, eval_dir)
    result = {"profile": name, "image_size": p.image_size, "num_users": p.num_users, "rows": list(rows.values()),
              "torch_threads": torch.get_num_threads(), "load_average_at_end": list(os.getloadavg()),
              "wall_seconds": time.perf_counter() - started}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1, default=float))
    out_json.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    log(f"wrote {out_json} and {out_json.with_suffix('.md')} ({result['wall_seconds'] / 60:.1f} min)")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="32 px, tiny models: proves the script runs")
    ap.add_argument("--work_dir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--eval_dir", default=None)
    ap.add_argument("--arms", nargs="+", default=None, help="run only these arms (by name)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier results JSON whose rows stand in for the arms not rerun")
    args = ap.parse_args()
    torch.set_num_threads(1)
    name = "latent_smoke" if args.smoke else "latent64"
    base = Path("/tmp/dalle2md_latent_smoke") if args.smoke else ROOT / "benchmarks" / "results"
    run_arms(name, work=Path(args.work_dir or f"/tmp/dalle2md_{name}_work"),
             out_json=Path(args.out or base / "latent_vs_pixel.json"),
             eval_dir=Path(args.eval_dir or base / "latent_vs_pixel"), only=args.arms, reuse=args.reuse)


if __name__ == "__main__":
    main()
