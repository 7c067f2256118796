"""The quality protocol on the simulator: the two-stage generator against the single-stage one,
each trained on the real train split and judged by a recogniser trained on real images (identity
accuracy A_gen / A_real, domain FID against its real-vs-real floor, diversity, memorisation,
kinematic errors) and by the augmentation gain at K real images per user; writes JSON and a
results page, with every goal marked met or not (goals are reported, never asserted).

The data, split, recogniser settings and profiles are `dalle2_md.evaluation.protocol`'s: the
"full" profile is gait31 (31 users, data seed 1) at 32 px with the split, recogniser shape,
K-shot generator budget and default recipe of benchmarks/augment_ablation.py, so its augmentation
gain is the ablation's default row, and `--generator_cache` reuses the ablation's K-shot generators.

    python benchmarks/quality.py               # CPU profile ("full"), writes benchmarks/results/quality.md
    python benchmarks/quality.py --generator_cache DIR   # the same, reusing cached K-shot generators
    python benchmarks/quality.py --smoke       # tiny end-to-end check (a few minutes, writes under /tmp)
    python benchmarks/quality.py --profile full128 --workers 2   # 128 px through the latent path (CPU), both cores
    python benchmarks/quality.py --profile cascade256   # 256 px: cascade vs bicubic vs latent (2 CPU cores)
    python benchmarks/quality.py --profile gpu256       # the same at GPU sizes
    python benchmarks/quality.py --profile gpu256_latent   # the protocol at 256 px through the latent path (a GPU)
    python benchmarks/quality.py --gpu         # 256 px in pixels (a GPU)

One function per phase: data, recogniser, generators, samples, evaluation, augmentation, report.
With `--workers N` the main process starts N - 1 helper processes of this script (`--lane`) that
run whole K-shot repetitions (generator, recognisers, recipe) and train the single-stage
generator while it trains, samples and judges the two-stage one; they share the generator cache
and a per-run folder of finished repetitions, and a lock file beside each file in the making keeps
two processes from making the same one (`dalle2_md.utils.claimed`).
"""

import os

# one thread for numpy / BLAS (and for torch.compile's code generation, which otherwise takes
# every core from the other worker) unless asked otherwise; set before torch / numpy are imported
_THREADS = "1"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
            "TORCHINDUCTOR_COMPILE_THREADS"):
    os.environ.setdefault(var, _THREADS)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.augmentation.harness import augmentation_gain, cached_generator, kshot_generator
from dalle2_md.generation.samples import sample_tensors
from dalle2_md.evaluation.protocol import (  # noqa: E402
    CASCADE_PROFILE_NAMES,
    PROFILE_NAMES,
    Profile,
    kinematic_ratios,
    profiles,
    protocol_data,
    recogniser_config,
    reference_recogniser,
)
from dalle2_md.evaluation.report import evaluate_samples
from dalle2_md.utils import plain_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# phases


def phase_data(p: Profile) -> dict:
    """The profile's data (`protocol.protocol_data`): simulated users, the last `num_test`
    recordings of each held out as test."""
    data = protocol_data(p)
    log(f"data: {', '.join(f'{s} {len(x)}' for s, (x, _) in data['sets'].items())} images, {p.num_users} users "
        f"({p.simulator}), {p.image_size}px")
    return data


def phase_recogniser(p: Profile, data: dict, work: Path):
    """The reference recogniser: all real train images, cached in the work folder."""
    return reference_recogniser(p, data, work)


def phase_generators(p: Profile, data: dict, work: Path, generator_cache: str | None = None,
                     kinds=("two_stage", "baseline")) -> dict:
    """Two-stage and single-stage generators on the full real train split, same decoder budget
    (taken from `generator_cache` when an earlier run trained them there)."""
    images, ids = data["sets"]["train"]
    out = {}
    for kind in kinds:
        start = time.perf_counter()
        gen = cached_generator(images, ids, cache_dir=generator_cache, num_users=p.num_users, kind=kind,
                               budget=p.budget, seed=p.train_seed, run_dir=work / "runs" / kind,
                               label_map=data["label_map"], colormap="jet")
        log(f"{kind}: trained in {time.perf_counter() - start:.0f}s "
            f"({', '.join(f'{k} {v:.0f}s' for k, v in gen.seconds.items())}); final losses {gen.final_losses}")
        # kept in the work folder, so other guidance scales or step counts can be sampled later
        gen.model.save(work / f"{kind}.pt")
        out[kind] = gen
    return out


def phase_samples(p: Profile, generators: dict) -> dict:
    """`samples_per_user` generated images per user from each generator, fixed seed."""
    out = {}
    for kind, gen in generators.items():
        start = time.perf_counter()
        images, ids = sample_tensors(gen.model, list(range(p.num_users)), p.samples_per_user, seed=p.sample_seed, sampling=p.budget.sampling)
        out[kind] = {"images": images, "ids": ids, "seconds": time.perf_counter() - start}
        log(f"{kind}: {len(images)} samples in {out[kind]['seconds']:.0f}s")
    return out


def phase_evaluate(p: Profile, data: dict, recogniser, samples: dict, eval_dir: Path) -> dict:
    """`evaluate_samples` for each generator (metrics.json, report.md and plots per generator)."""
    train, test = data["sets"]["train"], data["sets"]["test"]
    out = {}
    for kind, s in samples.items():
        m = evaluate_samples(train, test, (s["images"], s["ids"]), recogniser=recogniser, out_dir=eval_dir / kind,
                             label_map=data["label_map"], colormap="jet", grid_per_user=4)
        out[kind] = m
        log(f"{kind}: A_gen {m['identity']['A_gen']:.3f} (A_real {m['identity']['A_real']:.3f}), "
            f"FID {m['fid']['gen_vs_test']} (floor {m['fid']['train_vs_test']})")
    return out


def phase_augmentation(p: Profile, data: dict, work: Path, generator_cache: str | None = None,
                       generator: str = "two_stage", seeds=None, seed_results: Path | None = None,
                       skip_busy_seeds: bool = False) -> dict | None:
    """Augmentation gain at K real per user (the generator's default recipe), the generator
    trained on those K only; the recognisers have the reference recogniser's shape."""
    shape = {k: v for k, v in asdict(recogniser_config(p)).items() if k not in ("num_users", "channels", "image_size")}
    if seeds is None:
        seeds = p.aug_seeds if generator == "two_stage" else p.baseline_aug_seeds
    return augmentation_gain(data["sets"]["train"], data["sets"]["test"], num_users=p.num_users,
                             work_dir=work / f"augment_{generator}", k=p.k, m=p.m, seeds=seeds, generator=generator,
                             budget=p.aug_budget, recogniser_train=p.recogniser_train, recogniser_shape=shape,
                             label_map=data["label_map"], log=log, generator_cache=generator_cache,
                             seed_results=seed_results, skip_busy_seeds=skip_busy_seeds)


# --------------------------------------------------------------------------------------------
# helper processes (--workers)


def lane(p: Profile, work: Path, generator_cache: str, seed_results: Path, number: int) -> None:
    """What helper process `number` (1, 2, ...) does: whole K-shot repetitions from the last seed
    back, skipping any that another process is running; helper 1 trains the all-data single-stage
    generator after its first repetition. By then the main process has trained the VQGAN both
    all-data generators share, and it needs the single-stage one only after it has sampled its
    own and run a repetition (see `_run`)."""
    data = phase_data(p)
    images, ids = data["sets"]["train"]

    def repetition(generator, seed):
        phase_augmentation(p, data, work, generator_cache, generator, seeds=[seed], seed_results=seed_results,
                           skip_busy_seeds=True)

    def all_data_baseline():
        gen = cached_generator(images, ids, cache_dir=generator_cache, num_users=p.num_users, kind="baseline",
                               budget=p.budget, seed=p.train_seed, run_dir=work / "runs" / "baseline",
                               label_map=data["label_map"], colormap="jet")
        log(f"lane {number}: baseline in {generator_cache} "
            f"({', '.join(f'{k} {v:.0f}s' for k, v in gen.seconds.items()) or 'found'})")

    jobs = [("two_stage", s) for s in reversed(p.aug_seeds)] + [("baseline", s) for s in reversed(p.baseline_aug_seeds)]
    if number == 1:
        jobs.insert(min(1, len(jobs)), None)
    for job in jobs:
        all_data_baseline() if job is None else repetition(*job)
    log(f"lane {number}: done")


def start_lanes(p: Profile, workers: int, work: Path, generator_cache: str, seed_results: Path,
                threads: int) -> list:
    """Start `workers - 1` helper processes of this script; each writes its log into `work`."""
    import subprocess

    procs = []
    for number in range(1, workers):
        log_path = work / f"lane_{number}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--profile", p.name, "--work_dir", str(work),
               "--generator_cache", str(generator_cache), "--threads", str(threads), "--lane", str(number),
               "--seed_results", str(seed_results)]
        with open(log_path, "w") as out:
            procs.append((number, log_path, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)))
        log(f"lane {number}: pid {procs[-1][2].pid}, log {log_path}")
    return procs


def finish_lanes(procs: list) -> list[dict]:
    """Wait for the helper processes; what each did, for the results file. One that failed has
    left nothing the main process relied on (it made whatever it found missing itself)."""
    out = []
    for number, log_path, proc in procs:
        rc = proc.wait()
        if rc != 0:
            log(f"lane {number} exited with status {rc}; see {log_path}")
        out.append({"lane": number, "returncode": rc, "log": str(log_path)})
    return out


# --------------------------------------------------------------------------------------------
# goals and report


def _num(v):
    return v if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else None


def goals(metrics: dict, aug: dict, aug_baseline: dict | None = None) -> list[dict]:
    """The protocol's targets, each with its measured value and whether it is met."""
    two, one = metrics["two_stage"], metrics["baseline"]
    rows = []

    def add(goal, value, target, met, detail=""):
        rows.append({"goal": goal, "value": value, "target": target, "met": met, "detail": detail})

    for kind, m in (("two-stage", two), ("single-stage", one)):
        ratio = _num(m["identity"]["A_gen_over_A_real"])
        add(f"A_gen >= 0.95 A_real ({kind})", ratio, ">= 0.95", ratio is not None and ratio >= 0.95,
            f"A_gen {m['identity']['A_gen']:.3f}, A_real {m['identity']['A_real']:.3f}")
        # the floor at the generated set's size and user balance (results from before it existed: all train)
        fid, all_train = _num(m["fid"]["gen_vs_test"]), _num(m["fid"]["train_vs_test"])
        floor = _num(m["fid"].get("train_vs_test_matched")) or all_train
        rel = fid / floor if fid is not None and floor else None
        add(f"FID <= 1.5 x floor ({kind})", rel, "<= 1.5", rel is not None and rel <= 1.5,
            f"FID {_f(fid)}, size-matched floor {_f(m['fid'].get('train_vs_test_matched'))}, "
            f"all-train floor {_f(all_train)}" + (f" ({fid / all_train:.1f}x)" if fid is not None and all_train else ""))
        worst, errs, floors, limits = kinematic_ratios(m)
        add(f"kinematic errors < 10 % ({kind})", worst, "< 1 (worst error / max(0.10, its floor))",
            worst is not None and all(v is not None and v < limits[k] for k, v in errs.items()),
            ", ".join(f"{k} {_f(v)} (floor {_f(floors.get(k))})" for k, v in errs.items()))
    gain = aug["gain_points"]["mean"]
    add(f"augmentation gain >= +5 points at K={aug['k']}", gain, ">= +5", gain >= 5.0,
        f"{aug['acc_real']['mean']:.3f} -> {aug['acc_aug']['mean']:.3f} over seeds {aug['seeds']}")
    a2, a1 = two["identity"]["A_gen"], one["identity"]["A_gen"]
    add("two-stage >= single-stage on A_gen", a2 - a1, ">= 0", a2 >= a1, f"two-stage {a2:.3f}, single-stage {a1:.3f}")
    if aug_baseline:
        seeds = aug_baseline["seeds"]
        g2 = float(sum(r["gain_points"] for r in aug["per_seed"] if r["seed"] in seeds) / len(seeds))
        g1 = aug_baseline["gain_points"]["mean"]
        add(f"two-stage >= single-stage on gain at K={aug['k']}", g2 - g1, ">= 0", g2 >= g1,
            f"seeds {seeds}: two-stage {g2:+.1f}, single-stage {g1:+.1f} points")
    return rows


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_model": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_end": list(load) if load else None}


def _f(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ms(d, scale=1.0, digits=3):
    std = d.get("std")
    s = f"{scale * d['mean']:.{digits}f}"
    return s + (f" ± {scale * std:.{digits}f}" if std is not None and math.isfinite(std) else "")


def write_page(result: dict, path: Path, eval_dir: Path) -> None:
    """docs/results.md: every number, the settings, the date, the machine and the wall time."""
    p, mc, ms, aug = result["profile"], result["machine"], result["metrics"], result["augmentation"]
    rel = os.path.relpath(eval_dir, path.parent)
    cols = ("two_stage", "baseline")
    lines = [
        "# dalle2-md quality protocol: results",
        "",
        f"Written by `benchmarks/quality.py --profile {p['name']}` on {result['date']}; "
        f"wall time {result['wall_seconds'] / 60:.1f} min for everything.",
        "",
        f"Machine: {mc['cores']} cores, {mc['cpu_model']}; torch {mc['torch']} with {mc['torch_threads']} thread(s); "
        f"GPU: {mc['gpu'] or 'none'}. The machine was shared with other jobs (load average at the end "
        f"{', '.join(f'{x:.1f}' for x in mc['load_average_at_end'] or [])}), so wall times are upper bounds.",
        "",
        f"Data: simulator profile {p['simulator']}, {p['num_users']} users, {p['per_user']} recordings per user at "
        f"{p['image_size']} x {p['image_size']} (jet, learned as one channel); the last {p['num_test']} recordings "
        f"of each user are the test split (train {result['counts']['train']}, test {result['counts']['test']}); "
        f"data seed {p['data_seed']}, training seed {p['train_seed']}, sampling seed {p['sample_seed']}.",
    ]
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "## Goals (reported, not asserted)", "", "| goal | measured | target | met | detail |", "|---|---|---|---|---|"]
    for g in result["goals"]:
        lines.append(f"| {g['goal']} | {_f(g['value'])} | {g['target']} | {'yes' if g['met'] else '**no**'} | {g['detail']} |")

    def row(name, fn, digits=3):
        return f"| {name} | " + " | ".join(_f(fn(ms[c]), digits) for c in cols) + " |"

    lines += [
        "", "## Two-stage vs single-stage", "",
        f"Both generators trained on the real train split with the same decoder (shape and {p['budget']['decoder_train_steps']} "
        f"steps of batch {p['budget']['decoder_batch_size']}); the two-stage model also trains its embedding model "
        f"({p['budget']['clip_train_steps']} steps) and prior ({p['budget']['prior_train_steps']} steps). "
        f"{p['samples_per_user']} samples per user, {p['budget']['sampling']['decoder_steps']} decoder sampling steps "
        f"({p['budget']['sampling']['prior_steps']} prior steps), guidance scale {p['budget']['sampling']['cond_scale']}"
        + (" applied only at sampling times {:g} <= t / T <= {:g}".format(*p['budget']['sampling']['guidance_interval'])
           if p['budget']['sampling'].get('guidance_interval') else "") + ".",
        "", "| measure | two-stage | single-stage |", "|---|---|---|",
        row("recogniser accuracy on real test, A_real", lambda m: m["identity"]["A_real"]),
        row("identity accuracy of samples, A_gen", lambda m: m["identity"]["A_gen"]),
        row("A_gen / A_real", lambda m: m["identity"]["A_gen_over_A_real"]),
        row("domain FID, generated vs real test", lambda m: m["fid"]["gen_vs_test"], 2),
        row("domain FID floor, real train vs real test", lambda m: m["fid"]["train_vs_test"], 2),
        row("domain FID floor, as many real train images per user as generated",
            lambda m: m["fid"].get("train_vs_test_matched"), 2),
        row("diversity (recogniser features), generated", lambda m: m["diversity"]["features"]["gen_mean"]),
        row("diversity (recogniser features), real test", lambda m: m["diversity"]["features"]["real_mean"]),
        row("diversity (pixels), generated", lambda m: m["diversity"]["pixels"]["gen_mean"]),
        row("diversity (pixels), real test", lambda m: m["diversity"]["pixels"]["real_mean"]),
        row("likely copies, pixels (fresh data ~0.05)", lambda m: m["memorisation"]["pixels"]["copy_fraction"]),
        row("likely copies, features (fresh data ~0.05)", lambda m: m["memorisation"]["features"]["copy_fraction"]),
        row("NN-distance ratio to train, pixels (~1 fresh, <<1 copying)", lambda m: m["memorisation"]["pixels"]["nn_ratio"]),
        row("NN-distance ratio to train, features", lambda m: m["memorisation"]["features"]["nn_ratio"]),
    ]
    for k in ("torso", "max_envelope", "cadence"):
        lines.append(row(f"kinematic rel. error, {k}", lambda m, k=k: m["kinematics"]["gen"]["mean_rel_error"][k]))
    for k in ("torso", "max_envelope", "cadence"):
        lines.append(row(f"kinematic rel. error floor (real test vs train), {k}",
                         lambda m, k=k: m["kinematics"]["floor"]["mean_rel_error"][k]))
    t = result["timings"]
    lines.append(f"| training seconds | {t['train_two_stage']:.0f} | {t['train_baseline']:.0f} |")
    lines.append(f"| sampling seconds | {t['sample_two_stage']:.0f} | {t['sample_baseline']:.0f} |")
    lines += ["", "Per user (A_gen):", "", "| user | A_real | two-stage A_gen | single-stage A_gen |", "|---|---|---|---|"]
    two = ms["two_stage"]["identity"]
    for u in sorted(two["per_user_real"], key=int):
        lines.append(f"| {ms['two_stage']['user_names'].get(u, u)} | {_f(two['per_user_real'][u])} | "
                     f"{_f(two['per_user_gen'].get(u))} | {_f(ms['baseline']['identity']['per_user_gen'].get(u))} |")
    ab = aug["budget"]
    recipe = next(iter(aug["recipes"].values()))["recipe"]
    source = recipe["source"] + (f" {recipe['strength']:g}, conditioned on the "
                                 f"{recipe.get('condition', 'own')} embedding" if recipe["source"] == "sdedit" else "")
    headroom = 100.0 * (1.0 - aug["acc_real"]["mean"])
    lines += [
        "", f"## Augmentation gain (K = {aug['k']} real, M = {aug['m']} generated per user)", "",
        f"For each seed {aug['seeds']}: K real images per user drawn from the real train split; a two-stage generator "
        f"trained on those K only (embedding {ab['clip_train_steps']}, decoder {ab['decoder_train_steps']}, prior "
        f"{ab['prior_train_steps']} steps; {ab['sampling']['decoder_steps']} sampling steps); M images per user drawn by the recipe "
        f"'{recipe['name']}' (source {source}, decoder guidance {recipe['cond_scale']:g}, eta {recipe['eta']:g}, "
        f"filter {recipe['filter']}, mixing {recipe['mixing']}); recognisers ({aug['recogniser_train']['steps']} steps "
        f"each, no validation set) trained on K real vs K real + M generated, both tested on the {aug['num_test']} real "
        f"test images. Mean ± sample std over seeds.",
        "", "| recogniser trained on | real-test accuracy |", "|---|---|",
        f"| K real | {_ms(aug['acc_real'])} |",
        f"| K real + M generated | {_ms(aug['acc_aug'])} |",
        f"| gain (points) | {_ms(aug['gain_points'], digits=1)} |",
        f"| A_gen of the samples under the K-real recogniser | {_ms(aug['a_gen_kshot_recogniser'])} |",
        "", f"Headroom: with K real images alone the recogniser already reaches {aug['acc_real']['mean']:.3f}, so "
        f"no augmentation can add more than {headroom:.1f} points on this data set.",
        "", "| seed | K real | K real + M generated | gain (points) | seconds |", "|---|---|---|---|---|",
    ]
    for r in aug["per_seed"]:
        lines.append(f"| {r['seed']} | {r['acc_real']:.3f} | {r['acc_aug']:.3f} | {r['gain_points']:+.1f} | "
                     f"{sum(r['seconds'].values()):.0f} |")
    base = result.get("augmentation_baseline")
    if base:
        per = ", ".join(f"{r['gain_points']:+.1f}" for r in base["per_seed"])
        lines += ["", f"The single-stage generator (the same decoder conditioned on the user label, samples drawn from "
                      f"user labels at guidance {next(iter(base['recipes'].values()))['recipe']['cond_scale']:g}) on seeds "
                      f"{base['seeds']}: gain {_ms(base['gain_points'], digits=1)} points (per seed {per}), real-only "
                      f"{_ms(base['acc_real'])}."]
    lines += [
        "", "## Timings (seconds)", "", "| phase | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in t.items()],
        "", "## Pictures", "",
        f"Real (left) next to generated (right) per user: [two-stage]({rel}/two_stage/samples_grid.png), "
        f"[single-stage]({rel}/baseline/samples_grid.png). Per-user accuracy and kinematics plots and a "
        f"report.md per generator are in the same folders.",
        "", "## Settings", "", "```json", json.dumps(p, indent=1), "```", "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def train_kshot_generators(p: Profile, data: dict, work: Path, generator_cache: str, seeds) -> None:
    """The augmentation phase's two-stage generators, one per seed, into `generator_cache`
    (through `dalle2_md.augmentation.harness.kshot_generator`, as the phase itself, so it then finds them there)."""
    for seed in seeds:
        _, _, gen = kshot_generator(*data["sets"]["train"], k=p.k, seed=seed, kind="two_stage", budget=p.aug_budget,
                                    num_users=p.num_users, work_dir=work / "augment_two_stage",
                                    generator_cache=generator_cache, label_map=data["label_map"])
        log(f"K-shot generator, seed {seed}: in {generator_cache} "
            f"({', '.join(f'{k} {v:.0f}s' for k, v in gen.seconds.items()) or 'found'})")


# --------------------------------------------------------------------------------------------


def reused_augmentation(p: Profile, path: Path) -> tuple[dict, dict | None, str]:
    """The augmentation sections and date of an earlier results file whose K-shot settings are
    this run's (the all-data generators do not enter them, so a run that changes only those can
    reuse them)."""
    old = json.loads(Path(path).read_text())
    mine = json.loads(json.dumps(asdict(p), default=list))
    keys = ("simulator", "num_users", "image_size", "per_user", "num_test", "data_seed", "recogniser",
            "recogniser_train", "k", "m", "aug_seeds", "baseline_aug_seeds", "aug_budget")

    def view(k, d):
        if k != "aug_budget" or not isinstance(d, dict):
            return d
        # a field that is None is the one a file written before it existed did not name
        d = {f: v for f, v in d.items() if v is not None}
        # a pixel budget's VQGAN fields train nothing (the generator cache ignores them too)
        return d if d.get("vqgan_train_steps") else {f: v for f, v in d.items() if f not in ("vqgan_lr", "vqgan")}

    differ = [k for k in keys if view(k, old["profile"].get(k)) != view(k, mine[k])]
    if differ:
        raise SystemExit(f"--reuse_augmentation {path}: its K-shot settings differ from this profile's in "
                         f"{', '.join(differ)}; run the augmentation phase instead.")
    return old["augmentation"], old.get("augmentation_baseline"), old["date"]


def run(p: Profile, *, work: Path, out_json: Path, page: Path, eval_dir: Path, notes: list[str],
        generator_cache: str | None = None, reuse_augmentation: Path | None = None, workers: int = 1,
        threads: int = 1) -> dict:
    started = time.perf_counter()
    seed_results, lanes = None, []
    if workers > 1:
        generator_cache = generator_cache or str(work / "generator_cache")
        # this run's own folder: a finished repetition is found again only within the run
        seed_results = work / "seed_results" / time.strftime("%Y%m%d-%H%M%S")
        work.mkdir(parents=True, exist_ok=True)
        lanes = start_lanes(p, workers, work, generator_cache, seed_results, threads)
        notes = notes + [f"{workers} processes of {threads} torch thread(s) each: the main one and "
                         f"{workers - 1} helper(s) (--workers {workers}) that ran whole K-shot repetitions from the "
                         "last seed back and trained the single-stage generator after the first."]
    try:
        result = _run(p, work=work, eval_dir=eval_dir, notes=notes, generator_cache=generator_cache,
                      reuse_augmentation=reuse_augmentation, seed_results=seed_results)
    except BaseException:
        for _, _, proc in lanes:
            proc.terminate()
        raise
    if lanes:
        result["lanes"] = finish_lanes(lanes)
    result["goals"] = goals(result["metrics"], result["augmentation"], result["augmentation_baseline"])
    result["wall_seconds"] = time.perf_counter() - started
    result = plain_json(result)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    write_page(result, page, eval_dir)
    log(f"wrote {out_json} and {page} ({result['wall_seconds'] / 60:.1f} min)")
    for g in result["goals"]:
        log(f"goal {'MET ' if g['met'] else 'NOT MET'}: {g['goal']}: {_f(g['value'])} (target {g['target']}; {g['detail']})")
    return result


def _run(p: Profile, *, work: Path, eval_dir: Path, notes: list[str], generator_cache: str | None,
         reuse_augmentation: Path | None, seed_results: Path | None) -> dict:
    """Every phase in order; the results file's content, less goals and wall time."""
    timings = {}

    def timed(name, fn):
        t = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - t
        return value

    work.mkdir(parents=True, exist_ok=True)
    data = timed("data", lambda: phase_data(p))
    recogniser = timed("recogniser", lambda: phase_recogniser(p, data, work))
    generators, samples = {}, {}
    for kind in ("two_stage", "baseline"):
        generators.update(phase_generators(p, data, work, generator_cache, kinds=(kind,)))
        timings[f"train_{kind}"] = sum(generators[kind].seconds.values())
        samples.update(phase_samples(p, {kind: generators[kind]}))
        timings[f"sample_{kind}"] = samples[kind]["seconds"]
        if kind == "two_stage" and seed_results and not reuse_augmentation:
            # while a helper trains the single-stage generator: the K-shot repetitions nobody has taken
            timed("augmentation_first_pass", lambda: phase_augmentation(
                p, data, work, generator_cache, seed_results=seed_results, skip_busy_seeds=True))
    metrics = timed("evaluate", lambda: phase_evaluate(p, data, recogniser, samples, eval_dir))
    if reuse_augmentation:
        aug, aug_baseline, dated = reused_augmentation(p, reuse_augmentation)
        notes = notes + [f"The augmentation gains are reused from {reuse_augmentation} (dated {dated}): same K-shot "
                         "settings and generator budget; only the all-data generators were trained (or taken from "
                         "the generator cache)."]
    else:
        aug = timed("augmentation", lambda: phase_augmentation(p, data, work, generator_cache,
                                                               seed_results=seed_results))
        aug_baseline = None
    if p.baseline_aug_seeds and not reuse_augmentation:
        aug_baseline = timed("augmentation_baseline", lambda: phase_augmentation(p, data, work, generator_cache, "baseline",
                                                                                 seed_results=seed_results))
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "profile": json.loads(json.dumps(asdict(p), default=list)),
        "machine": machine(),
        "counts": {s: len(x) for s, (x, _) in data["sets"].items()},
        "recogniser": {"config": asdict(recogniser.config), "meta": {k: v for k, v in recogniser.meta.items() if k != "history"}},
        "generators": {k: {"seconds": g.seconds, "final_losses": g.final_losses, "num_train_images": g.num_train_images}
                       for k, g in generators.items()},
        "metrics": {k: {kk: vv for kk, vv in m.items() if kk != "kinematics"} | {"kinematics": {
            part: {kk: vv for kk, vv in m["kinematics"][part].items() if kk != "values"} for part in ("gen", "floor")}}
            for k, m in metrics.items()},
        "augmentation": aug,
        "augmentation_baseline": aug_baseline,
        "timings": timings,
        "notes": notes,
    }
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_const", const="smoke", dest="profile", help="tiny end-to-end check")
    group.add_argument("--gpu", action="store_const", const="gpu", dest="profile", help="256 x 256 profile for a GPU")
    group.add_argument("--profile", choices=PROFILE_NAMES + CASCADE_PROFILE_NAMES, dest="profile")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    ap.add_argument("--work_dir", default=None, help="scratch folder (data, runs, recogniser cache)")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--page", default=None, help="markdown results page")
    ap.add_argument("--eval_dir", default=None, help="folder for the per-generator evaluation reports and plots")
    ap.add_argument("--page_only", action="store_true", help="only rebuild the page from an existing JSON results file")
    ap.add_argument("--reuse_augmentation", type=Path, default=None,
                    help="take the augmentation gains from this earlier results JSON (same K-shot settings) "
                         "instead of rerunning them")
    ap.add_argument("--train_only", choices=("two_stage", "baseline", "kshot"), default=None,
                    help="train (or find) this all-data generator, or with 'kshot' the K-shot two-stage generators "
                         "of --kshot_seeds, in --generator_cache and stop: run one per process to train them at "
                         "once, then the protocol finds them there")
    ap.add_argument("--kshot_seeds", type=int, nargs="+", default=None,
                    help="with --train_only kshot: the augmentation seeds to train generators for (default the "
                         "profile's), in this order")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes to run the protocol in (default 1; 2 for the cascade profiles); with 2 on a 2-core machine a helper trains "
                         "the single-stage generator and K-shot repetitions beside the main process "
                         "(the generator cache defaults to WORK_DIR/generator_cache)")
    ap.add_argument("--lane", type=int, default=None, help=argparse.SUPPRESS)  # a helper process of --workers
    ap.add_argument("--seed_results", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--generator_cache", default=None,
                    help="folder of trained K-shot generators (augment_ablation.py's) reused by the augmentation phase")
    ap.add_argument("--budget", type=json.loads, default=None,
                    help='JSON of GeneratorBudget fields that replace the all-data generators\' ones, e.g. '
                         '\'{"decoder_lr_schedule": "cosine"}\' (the K-shot generators keep theirs)')
    args = ap.parse_args()
    name = args.profile or "full"
    if name in CASCADE_PROFILE_NAMES:  # the 256 px cascade comparison has its own runner
        import subprocess

        extra = [f for flag, v in (("--work_dir", args.work_dir), ("--out", args.out)) if v for f in (flag, str(v))]
        cmd = [sys.executable, str(ROOT / "benchmarks/cascade256.py"), "--profile", name, "--workers",
               str(args.workers or 2), *extra]
        raise SystemExit(subprocess.run(cmd).returncode)
    p = profiles()[name]
    if args.budget:
        p = replace(p, budget=replace(p.budget, **args.budget))
    torch.set_num_threads(args.threads)
    if name == "full":
        # docs/results.md quotes this page's figures; it is not overwritten
        defaults = (ROOT / "benchmarks/results/quality.json", ROOT / "benchmarks/results/quality.md",
                    ROOT / "benchmarks/results/quality")
    elif name in ("full128", "gpu", "gpu256_latent"):
        suffix = {"full128": "128", "gpu": "gpu", "gpu256_latent": "gpu256_latent"}[name]
        defaults = (ROOT / f"benchmarks/results/quality_{suffix}.json", ROOT / f"benchmarks/results/quality_{suffix}.md",
                    ROOT / f"benchmarks/results/quality_{suffix}")
    else:  # the smoke profile proves the script runs; it must not overwrite real results
        base = Path(f"/tmp/dalle2md_quality_{name}")
        defaults = (base / "quality.json", base / "results.md", base / "eval")
    out_json, page, eval_dir = (Path(a) if a else d for a, d in zip((args.out, args.page, args.eval_dir), defaults))
    if args.page_only:
        result = json.loads(out_json.read_text())
        result["goals"] = goals(result["metrics"], result["augmentation"], result.get("augmentation_baseline"))
        write_page(result, page, eval_dir)
        log(f"rebuilt {page} from {out_json}")
        return
    work = Path(args.work_dir or f"/tmp/dalle2md_quality_{name}_work")
    notes = []
    if name == "full":
        notes.append("32 x 32: a 64 px pixel decoder step costs about 4x a 32 px one, and the protocol trains two "
                     "full-data generators and six K-shot ones; the 64 px gain is measured by "
                     "augment_ablation.py --image_size 64 (docs/results.md).")
    if p.budget.vqgan_train_steps:
        notes.append(f"{p.image_size} x {p.image_size} through the latent path: each generator trains a VQGAN "
                     f"({p.budget.vqgan_train_steps} steps for the all-data ones, {p.aug_budget.vqgan_train_steps} for the K-shot "
                     "ones) and its decoder diffuses over the VQGAN's continuous latent; the single-stage baseline "
                     "trains its own VQGAN the same way.")
    log(f"profile {name}: {p.num_users} users, {p.image_size}px, work dir {work}")
    if args.train_only:
        if not args.generator_cache:
            raise SystemExit("--train_only needs --generator_cache: that is where the protocol finds the generator.")
        data = phase_data(p)
        images, ids = data["sets"]["train"]
        if args.train_only == "kshot":
            train_kshot_generators(p, data, work, args.generator_cache, args.kshot_seeds or p.aug_seeds)
            return
        gen = cached_generator(images, ids, cache_dir=args.generator_cache, num_users=p.num_users, kind=args.train_only,
                               budget=p.budget, seed=p.train_seed, run_dir=work / "runs" / args.train_only,
                               label_map=data["label_map"], colormap="jet")
        log(f"{args.train_only}: in {args.generator_cache} ({', '.join(f'{k} {v:.0f}s' for k, v in gen.seconds.items())})")
        gen.model.save(work / f"{args.train_only}.pt")  # where experiments/protocol_sampling.py looks for it
        return
    if args.lane:
        return lane(p, work, args.generator_cache, args.seed_results, args.lane)
    args.workers = args.workers or 1
    if args.workers < 1:
        raise SystemExit(f"--workers {args.workers}: give 1 or more processes.")
    if args.workers > 1 and args.reuse_augmentation:
        raise SystemExit("--reuse_augmentation runs no K-shot repetitions for helper processes to share; leave out "
                         "--workers (--train_only baseline in a second process trains the single-stage generator "
                         "beside it).")
    run(p, work=work, out_json=out_json, page=page, eval_dir=eval_dir, notes=notes, generator_cache=args.generator_cache,
        reuse_augmentation=args.reuse_augmentation, workers=args.workers, threads=args.threads)


if __name__ == "__main__":
    main()
