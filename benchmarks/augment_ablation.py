"""Augmentation recipes, ablated on the gait31 simulator profile: which way of drawing, filtering
and mixing generated spectrograms helps a strong real-only recogniser trained on K real images per
user. One generator per seed is shared by every recipe (they differ only in sampling, filtering
and mixing); the real-only arm is the strong recogniser (`RecogniserTrainConfig` defaults).

    python benchmarks/augment_ablation.py --k 10 --seeds 0 1 2                     # every recipe
    python benchmarks/augment_ablation.py --k 5 --recipes default,old --seeds 0 1 2
    # one seed per process on a multi-core machine, then merged:
    python benchmarks/augment_ablation.py --k 10 --seeds 0 --out /tmp/s0.json & ...
    python benchmarks/augment_ablation.py --merge /tmp/s0.json /tmp/s1.json /tmp/s2.json
    # the cascade: a 32 px generator, its samples enlarged to 64 px by a K-shot upsampler (or bicubic)
    python benchmarks/augment_ablation.py --k 10 --image_size 64 --base_size 32 --enlarge upsampler --baseline physics

Prints one line per (seed, recipe) and a table; writes benchmarks/results/augment_ablation_k<K>.json
and .md. One torch thread per process. Data: gait31 (data seed 1, the seed the recogniser's
defaults were not picked on), the last `--num_test` recordings of each user held out as test
(`dalle2_md.evaluation.protocol.simulate` and `split`); recogniser shape `protocol.KSHOT_RECOGNISER`.
`--data digits` runs the same on the held-out second data set (scikit-learn's digits, 10 classes,
never tuned on; needs the `bench` extra), with the recipes that need no spectrogram kinematics.
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.augmentation.cascade import Enlargement, upsampler_schedule  # noqa: E402
from dalle2_md.augmentation.harness import mean_std, augmentation_gain, summarise_seeds  # noqa: E402
from dalle2_md.augmentation.recipe import AugmentRecipe  # noqa: E402
from dalle2_md.data.simulator import get_profile  # noqa: E402
from dalle2_md.evaluation.protocol import KSHOT_RECOGNISER, RECOGNISER_ARMS, digits, simulated_sets, split  # noqa: E402
from dalle2_md.defaults import SamplingConfig  # noqa: E402
from dalle2_md.utils import plain_json  # noqa: E402
from dalle2_md.models.upsampler import UpsamplerConfig  # noqa: E402
from dalle2_md.training.presets import GeneratorBudget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the base of the ablation run in docs/results.md: the recogniser filter on (the default then)
DEFAULT = AugmentRecipe(name="default", source="prior", filter="recogniser")
RECIPES = {
    "default": DEFAULT,
    # the harness before recipes: guidance 1, no filter, M = 10 K pooled with the real images
    "old": replace(DEFAULT, name="old", cond_scale=1.0, filter="none", m_per_k=10.0, mixing="concat"),
    "no_filter": replace(DEFAULT, name="no_filter", filter="none"),
    "guidance1": replace(DEFAULT, name="guidance1", cond_scale=1.0),
    "concat": replace(DEFAULT, name="concat", mixing="concat"),
    "pretrain": replace(DEFAULT, name="pretrain", mixing="pretrain"),
    "weight1": replace(DEFAULT, name="weight1", synthetic_weight=1.0),
    "mk1": replace(DEFAULT, name="mk1", m_per_k=1.0),
    "mk10": replace(DEFAULT, name="mk10", m_per_k=10.0),
    "eta1": replace(DEFAULT, name="eta1", eta=1.0),
    "variations": replace(DEFAULT, name="variations", source="variations"),
    # rows added after the filter lost: the no-filter base and the real-image sources
    "variations_nf": replace(DEFAULT, name="variations_nf", source="variations", filter="none"),
    "sdedit_nf": replace(DEFAULT, name="sdedit_nf", source="sdedit", strength=0.5, filter="none"),
    "sdedit07_nf": replace(DEFAULT, name="sdedit07_nf", source="sdedit", strength=0.7, filter="none"),
    # the generator-free control of sdedit_nf: the same M, mixing and weight, the K images re-speckled
    "respeckle": replace(DEFAULT, name="respeckle", source="respeckle", filter="none"),
    "eta1_nf": replace(DEFAULT, name="eta1_nf", eta=1.0, filter="none"),
    "mk10_nf": replace(DEFAULT, name="mk10_nf", m_per_k=10.0, filter="none"),
    # decoder guidance only at middle noise levels (DecoderConfig.guidance_interval)
    "interval_nf": replace(DEFAULT, name="interval_nf", filter="none", guidance_interval=(0.15, 0.7)),
    "g1_nf": replace(DEFAULT, name="g1_nf", filter="none", cond_scale=1.0),
    # guidance 2, after the decoder's sampling start moved to 0.96 (DecoderConfig.sample_start)
    "g2_nf": replace(DEFAULT, name="g2_nf", filter="none", cond_scale=2.0),
    "sdedit_g2_nf": replace(DEFAULT, name="sdedit_g2_nf", source="sdedit", strength=0.5, filter="none", cond_scale=2.0),
    # SDEdit around the winner of the 2400-step run: noise level, amount and weight of synthetic data
    "sdedit03_nf": replace(DEFAULT, name="sdedit03_nf", source="sdedit", strength=0.3, filter="none"),
    "sdedit_mk10_nf": replace(DEFAULT, name="sdedit_mk10_nf", source="sdedit", strength=0.5, filter="none", m_per_k=10.0),
    "sdedit_w1_nf": replace(DEFAULT, name="sdedit_w1_nf", source="sdedit", strength=0.5, filter="none",
                            synthetic_weight=1.0),
    "variations_interval_nf": replace(DEFAULT, name="variations_interval_nf", source="variations", filter="none",
                                      guidance_interval=(0.15, 0.7)),
    # ancestral (eta 1) SDEdit: the K = 20 grid showed a real image's deterministic SDEdit copies
    # differ little from one another; fresh noise at every step should spread them further
    "sdedit_eta1_nf": replace(DEFAULT, name="sdedit_eta1_nf", source="sdedit", strength=0.5, filter="none", eta=1.0),
    "sdedit03_eta1_nf": replace(DEFAULT, name="sdedit03_eta1_nf", source="sdedit", strength=0.3, filter="none",
                                eta=1.0),
    # SDEdit conditioned on another embedding than the source image's own: between two of the user's
    # K-shot walks, or a prior sample (the two-stage chain's own new embeddings on a real layout)
    "sdedit_partner_nf": replace(DEFAULT, name="sdedit_partner_nf", source="sdedit", strength=0.5, filter="none",
                                 condition="partner"),
    "sdedit_prior_nf": replace(DEFAULT, name="sdedit_prior_nf", source="sdedit", strength=0.5, filter="none",
                               condition="prior"),
    # against the best baseline: a mix of SDEdit strengths (DisCL's spectrum), and the kinematic
    # sifting of Erol, Gurbuz & Amin 2020 on each generator source
    "sdedit_mix_nf": replace(DEFAULT, name="sdedit_mix_nf", source="sdedit", strengths=(0.3, 0.5, 0.7), filter="none"),
    "prior_kin": replace(DEFAULT, name="prior_kin", source="prior", filter="kinematic"),
    "variations_kin": replace(DEFAULT, name="variations_kin", source="variations", filter="kinematic"),
    "sdedit_kin": replace(DEFAULT, name="sdedit_kin", source="sdedit", strength=0.5, filter="kinematic"),
    "sdedit_mix_kin": replace(DEFAULT, name="sdedit_mix_kin", source="sdedit", strengths=(0.3, 0.5, 0.7),
                              filter="kinematic"),
    # what the generator adds to the best generator-free control: its samples on top of the
    # re-speckled copies, against as many re-speckled copies alone
    "sdedit_rs": replace(DEFAULT, name="sdedit_rs", source="sdedit", strength=0.5, filter="none", respeckle_per_k=3.0),
    "prior_rs": replace(DEFAULT, name="prior_rs", filter="none", respeckle_per_k=3.0),
    "respeckle_mk6": replace(DEFAULT, name="respeckle_mk6", source="respeckle", filter="none", m_per_k=6.0),
}


# users of each data set this script runs on
NUM_USERS = {"gait31": get_profile("gait31").num_users, "digits": 10}


def labelled_sets(data: str, per_user: int, image_size: int, data_seed: int, num_test: int) -> tuple[dict, int]:
    """({"train": (images, ids), "test": (images, ids)}, number of users) of gait31 or the held-out
    digits, each user's last `num_test` images the test set."""
    if data == "digits":
        images, ids = digits(per_user, image_size, data_seed)
        parts = split(ids, per_user, num_test, 0)
        return {name: (images[parts[name]], ids[parts[name]]) for name in ("train", "test")}, NUM_USERS[data]
    return simulated_sets(NUM_USERS[data], per_user, image_size, data_seed, num_test), NUM_USERS[data]


def markdown(result: dict, args) -> str:
    lines = [
        f"K = {result['k']} real images per user, {getattr(args, 'data', 'gait31')} at {args.image_size} px"
        + (f" (generator at {args.base_size} px, samples enlarged by {args.enlarge})" if args.base_size else "")
        + f", seeds {result['seeds']}; "
        f"real-only ({args.baseline} recogniser): {100 * result['acc_real']['mean']:.1f} ± {100 * result['acc_real']['std']:.1f} %.",
        "",
        "| recipe | source | guidance | eta | filter | M/K | mixing | kept / drawn | A_gen (K-shot recogniser) | real + synthetic (%) | gain (points) | background defects | CAS / real-only |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if "real_test_background_defects" in result:  # absent from results written before the measure
        lines.insert(1, f"Background defects: share of a recipe's drawn images (not its added re-speckled copies) whose "
                        f"noise floor lies outside the K real images' 1-99 % range; real test images: "
                        f"{result['real_test_background_defects']['mean']:.3f}.")
    for name, r in result["recipes"].items():
        rc = r["recipe"]
        interval = rc.get("guidance_interval")
        guidance = f"{rc['cond_scale']:g}" + (f" in t/T {interval[0]:g}-{interval[1]:g}" if interval else "")
        acc, gain = r["acc_aug"], r["gain_points"]
        mixing = rc["mixing"] + (f" (w {rc['synthetic_weight']:g})" if rc["mixing"] == "separate" else "")
        source = rc["source"]
        if source == "sdedit":
            condition = rc.get("condition", "own")
            strengths = rc.get("strengths") or [rc.get("strength", 0.5)]
            source += " " + "/".join(f"{v:g}" for v in strengths) + ("" if condition == "own" else f", {condition} embedding")
        extra = rc.get("respeckle_per_k", 0.0)  # absent from results written before the field
        respeckled = f" + {extra:g} re-speckled" if extra else ""
        defects = f"{r['background_defects']['mean']:.3f}" if "background_defects" in r else ""
        cas = f"{100 * r['cas']['mean']:.1f} % / {r['cas']['mean'] / result['acc_real']['mean']:.3f}" if "cas" in r else ""
        lines.append(
            f"| {name} | {source} | {guidance} | {rc['eta']:g} | {rc['filter']} | {rc['m_per_k']:g}{respeckled} | "
            f"{mixing} | "
            f"{r['acceptance']['mean']:.2f} | {r['a_gen_kshot_recogniser']['mean']:.3f} | "
            f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} | {gain['mean']:+.1f} ± {gain['std']:.1f} | {defects} | {cas} |")
    return "\n".join(lines) + "\n"


def write(result: dict, args, out: str | None) -> None:
    out = Path(out or ROOT / "benchmarks" / "results" / f"augment_ablation_k{result['k']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plain_json(result), indent=1))
    table = markdown(result, args)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def merge(paths: list[str], out: str | None) -> None:
    """One table from runs of single seeds and recipe sets: a seed's rows from several files are
    joined (their real-only arms must agree), and the recipes run for every seed are kept."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    by_seed = {}
    for part in parts:
        for row in part["per_seed"]:
            seen = by_seed.setdefault(row["seed"], {**row, "recipes": {}})
            if abs(seen["acc_real"] - row["acc_real"]) > 1e-9:
                sys.exit(f"seed {row['seed']}: the real-only arms differ between the files; were they run with other settings?")
            seen["recipes"].update(row["recipes"])
    defs = {name: r["recipe"] for part in parts for name, r in part["recipes"].items()}
    common = [name for name in defs if all(name in row["recipes"] for row in by_seed.values())]
    if dropped := sorted(set(defs) - set(common)):
        print(f"left out (not run for every seed): {', '.join(dropped)}")
    recipes = [AugmentRecipe(**defs[name]) for name in common]
    per_seed = [by_seed[seed] for seed in sorted(by_seed)]
    num_users = NUM_USERS[first["args"].get("data", "gait31")]
    result = {**first, **summarise_seeds(per_seed, recipes, num_users=num_users)}
    result["wall_seconds"] = max(part["wall_seconds"] for part in parts)
    result["merged_from"] = [str(p) for p in paths]
    write(result, argparse.Namespace(**first["args"]), out)


LOG_LINE = re.compile(r"\[augment\] seed (?P<seed>\d+) (?P<name>\S+): K real (?P<real>[\d.]+), \+ generated "
                      r"(?P<aug>[\d.]+) \(gain (?P<gain>[-+\d.]+) points, kept (?P<kept>\d+)/(?P<drawn>\d+)\)")


def from_logs(paths: list[str], k: int, image_size: int, out: str | None) -> dict:
    """The table of runs stopped before they wrote their JSON, from their logs' per-recipe lines
    (accuracies to 3 decimals; no A_gen). Only recipes finished for every seed are reported."""
    rows = [m.groupdict() for p in paths for m in LOG_LINE.finditer(Path(p).read_text())]
    seeds = sorted({int(r["seed"]) for r in rows})
    names = list(dict.fromkeys(r["name"] for r in rows))
    lines = [f"K = {k} real images per user, gait31 at {image_size} px, seeds {seeds} (from the runs' logs: "
             f"{', '.join(Path(p).name for p in paths)}).", "",
             "| recipe | seeds | real-only (%) | real + synthetic (%) | gain (points) | kept / drawn |",
             "|---|---|---|---|---|---|"]
    result = {"k": k, "image_size": image_size, "seeds": seeds, "logs": [str(p) for p in paths], "recipes": {}}
    for name in names:
        mine = [r for r in rows if r["name"] == name]
        if sorted(int(r["seed"]) for r in mine) != seeds:
            continue
        real, aug = [100 * float(r["real"]) for r in mine], [100 * float(r["aug"]) for r in mine]
        gain = [a - b for a, b in zip(aug, real)]
        stats = {key: mean_std(v) for key, v in (("acc_real", real), ("acc_aug", aug), ("gain_points", gain))}
        stats["kept_over_drawn"] = sum(int(r["kept"]) for r in mine) / max(1, sum(int(r["drawn"]) for r in mine))
        result["recipes"][name] = stats
        lines.append(f"| {name} | {len(mine)} | {stats['acc_real']['mean']:.1f} ± {stats['acc_real']['std']:.1f} | "
                     f"{stats['acc_aug']['mean']:.1f} ± {stats['acc_aug']['std']:.1f} | "
                     f"{stats['gain_points']['mean']:+.1f} ± {stats['gain_points']['std']:.1f} | "
                     f"{stats['kept_over_drawn']:.2f} |")
    out = Path(out or ROOT / "benchmarks" / "results" / f"augment_ablation_k{k}_logs.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--data", choices=sorted(NUM_USERS), default="gait31",
                    help="gait31 (simulated) or digits (held out: scikit-learn's digits, never tuned on)")
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--per_user", type=int, default=100)
    ap.add_argument("--num_test", type=int, default=20)
    ap.add_argument("--data_seed", type=int, default=1)
    ap.add_argument("--clip_train_steps", "--clip_steps", type=int, default=GeneratorBudget.clip_train_steps)
    ap.add_argument("--decoder_train_steps", "--decoder_steps", type=int, default=GeneratorBudget.decoder_train_steps)
    ap.add_argument("--prior_train_steps", "--prior_steps", type=int, default=GeneratorBudget.prior_train_steps)
    ap.add_argument("--sample_steps", type=int, default=15)
    ap.add_argument("--decoder_config", default=None, type=json.loads,
                    help='DecoderConfig fields over the CPU sizes, as JSON (e.g. \'{"embed_noise_std": 0.6}\')')
    ap.add_argument("--recogniser_steps", type=int, default=None)
    ap.add_argument("--baseline", choices=sorted(RECOGNISER_ARMS), default="strong",
                    help="the real-only recogniser's training (and the augmented one's): protocol.RECOGNISER_ARMS")
    ap.add_argument("--time_pool", type=int, default=None,
                    help="recogniser time pooling [default: image_size / 16, the K-shot benchmark's 64 px / 4]")
    ap.add_argument("--generator", choices=("two_stage", "baseline", "none"), default="two_stage",
                    help="the DALLE2-style chain, the single-stage label-conditioned decoder (prior-source recipes "
                         "only), or none (generator-free recipes only: respeckle)")
    ap.add_argument("--base_size", type=int, default=None,
                    help="train the K-shot generator at this smaller size and enlarge its samples to --image_size "
                         "(augmentation/cascade.py) by --enlarge")
    ap.add_argument("--enlarge", choices=("upsampler", "bicubic"), default="upsampler",
                    help="with --base_size: a diffusion upsampler trained on the K real images, or bicubic")
    ap.add_argument("--upsampler_train_steps", type=int, default=900)
    ap.add_argument("--upsampler_dim", type=int, default=16)
    ap.add_argument("--cas", action="store_true",
                    help="also the CAS of each generator recipe: a recogniser trained on K of its images per user alone")
    ap.add_argument("--generator_cache", default=None,
                    help="folder of trained generators reused by later runs with the same K-shot pick, seed and budget")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, help="merge the JSONs of single-seed runs of the same settings")
    ap.add_argument("--from_logs", nargs="+", default=None,
                    help="build the table from the logs of single-seed runs (for runs stopped before writing JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.merge:
        return merge(args.merge, args.out)
    if args.from_logs:
        return from_logs(args.from_logs, args.k, args.image_size, args.out)
    args.time_pool = args.time_pool or max(1, args.image_size // 16)

    unknown = [name for name in args.recipes.split(",") if name not in RECIPES]
    if unknown:
        sys.exit(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    recipes = [RECIPES[name] for name in args.recipes.split(",")]
    if args.data != "gait31" and (kin := [r.name for r in recipes if r.filter == "kinematic"]):
        sys.exit(f"--data {args.data}: {', '.join(kin)} filter by spectrogram kinematics, which these images lack")
    sets, num_users = labelled_sets(args.data, args.per_user, args.image_size, args.data_seed, args.num_test)
    train, test = sets["train"], sets["test"]
    budget = GeneratorBudget(clip_train_steps=args.clip_train_steps, decoder_train_steps=args.decoder_train_steps,
                             prior_train_steps=args.prior_train_steps,
                             sampling=SamplingConfig(decoder_steps=args.sample_steps, prior_steps=args.sample_steps))
    if args.decoder_config:
        budget = replace(budget, decoder={**budget.decoder, **args.decoder_config})
    rec_train = RECOGNISER_ARMS[args.baseline]
    if args.recogniser_steps:
        rec_train = replace(rec_train, steps=args.recogniser_steps)
    print(f"{args.data} {args.image_size} px: {num_users} users, train {len(train[0])}, test {len(test[0])}; K={args.k}; "
          f"recipes {[r.name for r in recipes]}", flush=True)
    enlargement = None
    if args.base_size:
        ups = None if args.enlarge == "bicubic" else UpsamplerConfig(
            lowres_size=args.base_size, output_size=args.image_size, dim=args.upsampler_dim,
            dim_mults=(1, 2, 4) if args.image_size <= 64 else (1, 2, 4, 8))
        enlargement = Enlargement(base_size=args.base_size, upsampler=ups,
                                  upsampler_train=upsampler_schedule(args.upsampler_train_steps))
    started = time.time()
    work = Path(f"/tmp/augment_ablation_k{args.k}_{os.getpid()}")
    result = augmentation_gain(train, test, num_users=num_users, work_dir=work, k=args.k, seeds=args.seeds,
                               generator=args.generator, budget=budget, recipes=recipes, recogniser_train=rec_train, colormap="jet",
                               recogniser_shape={**KSHOT_RECOGNISER, "time_pool": args.time_pool},
                               log=lambda line: print(line, flush=True), generator_cache=args.generator_cache,
                               enlargement=enlargement, cas=args.cas)
    result["args"] = vars(args)
    result["wall_seconds"] = time.time() - started
    write(result, args, args.out)
    print(f"{result['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
