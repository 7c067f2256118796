"""What the K-shot generator's samples get wrong, per decoder variant and sampling setting.

One gait31 K-shot pick (32 px, data seed 1, the split of benchmarks/augment_ablation.py), one generator per
decoder variant trained on it (or taken from --generator_cache: benchmarks/augment_ablation.py writes the
same files), then for every setting: the background level of the samples (mean of the darker half
of each image, and the share above 0.4, which no real image reaches), A_gen by a recogniser trained
on ALL real train images and by one trained on the K-shot images, domain FID against the real
test images (features of the all-train recogniser) beside its floor (a random real train subset of
the same size against the same test images: FID grows as sets shrink, so the floor is matched in
size), and the kinematic errors (torso velocity, envelope, cadence per user, relative to the real
train images) beside theirs (real test against real train).

    python experiments/sample_defects.py --generator_cache /tmp/generators
    python experiments/sample_defects.py --variants eps --settings "g=1;g=3;g=3,iv=0.15:0.7;g=1,var"
    python experiments/sample_defects.py --variants eps --settings "g=3,st=1;g=3,st=0.99;g=3;g=3,st=0.925;g=3,st=0.9"
    python experiments/sample_defects.py --variants eps --settings "g=3;sd=0.5;sd=0.5,eta=1" --seed 1 \
        --generator_cache DIR --out benchmarks/results/synthetic_quality_k10_s1.json

A setting is comma-separated: g=<decoder guidance>, iv=<lo>:<hi> (guidance interval), eta=<DDIM
eta>, st=<fraction of the schedule where sampling from noise starts: DecoderConfig.sample_start,
default the decoder's>, sm=<sampler of both stages, ddim or dpmpp_2m; default the decoder's, an
EDM decoder's is Heun>, n=<network evaluations per stage, default --sample_steps>, var (decode the
K-shot images' own embeddings instead of prior samples), sd=<strength> (SDEdit of the K-shot
images, `--sdedit_per_image` each: the augmentation recipe's source). Prints a table, writes
benchmarks/results/sample_defects.json; with --grid_dir also one PNG grid of the
first 64 images per variant and setting (and of the real K-shot images).
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dalle2_md.defaults import SamplingConfig  # noqa: E402
from dalle2_md.training.presets import GeneratorBudget
from dalle2_md.augmentation.harness import cached_generator, kshot_indices
from dalle2_md.generation.samples import sample_tensors
from dalle2_md.evaluation.metrics import KINEMATIC_FIELDS, background_levels, domain_fid, kinematic_fidelity, to_scalar_images
from dalle2_md.evaluation.recogniser import accuracy
from dalle2_md.training.presets import CPU_DECODER_SIZES  # noqa: E402
from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, train_recogniser  # noqa: E402
from dalle2_md.data.simulator import get_profile  # noqa: E402
from dalle2_md.evaluation.protocol import KSHOT_RECOGNISER, simulated_sets  # noqa: E402
from dalle2_md.generation.variations import sdedit, variations_of  # noqa: E402
from dalle2_md.data.display import save_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # decoder fields on top of CPU_DECODER_SIZES
    "eps": {},
    "v": {"prediction": "v"},
    "v_no_p2": {"prediction": "v", "p2_loss_weight_gamma": 0.0},
    "eps_offset": {"offset_noise": 0.1},
    # Lin et al. 2024 (zero terminal SNR, v, sampling from the last step) with min-SNR-5 weights (Hang et al. 2023)
    "v_zsnr_minsnr": {"prediction": "v", "zero_terminal_snr": True, "loss_weighting": "min_snr", "min_snr_gamma": 5.0},
    "edm": {"prediction": "edm"},  # Karras et al. 2022 (models/edm.py)
}
BRIGHT = 0.4


def background(images: torch.Tensor) -> dict:
    """Mean background level (`evaluation.metrics.background_levels`) and the share of images above BRIGHT."""
    level = background_levels(images)
    return {"background": float(level.mean()), "bright_share": float((level > BRIGHT).float().mean())}


def parse(setting: str) -> dict:
    fields = dict(part.split("=") if "=" in part else (part, "1") for part in setting.split(","))
    interval = tuple(float(v) for v in fields.get("iv", "0:1").split(":"))
    return {"cond_scale": float(fields.get("g", 3)), "guidance_interval": interval, "variations": "var" in fields,
            "eta": float(fields.get("eta", 0)), "sample_start": float(fields["st"]) if "st" in fields else None,
            "sdedit": float(fields["sd"]) if "sd" in fields else None, "sampler": fields.get("sm"),
            "steps": int(fields["n"]) if "n" in fields else None}


def draw(model, setting: dict, shot, n: int, seed: int, steps: int, sdedit_per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    steps = setting["steps"] or steps
    common = dict(cond_scale=setting["cond_scale"], steps=steps, eta=setting["eta"])
    with model.decoder.sampling_config_for(guidance_interval=setting["guidance_interval"],
                                           sample_start=setting["sample_start"]):
        if setting["sdedit"] is not None:
            x = sdedit(model, shot[0], strength=setting["sdedit"], seed=seed, n=sdedit_per_image, user_indices=shot[1], **common)
            return x, shot[1].repeat_interleave(sdedit_per_image)
        if setting["variations"]:
            return variations_of(model, shot[0], 1, seed, user_indices=shot[1], **common), shot[1].clone()
        sampling = SamplingConfig(decoder_steps=steps, prior_steps=steps, cond_scale=setting["cond_scale"],
                                  eta=setting["eta"], sampler=setting["sampler"])
        return sample_tensors(model, sorted(set(shot[1].tolist())), n, seed=seed, sampling=sampling)


def fidelity(all_train, train, test, fake, seed: int) -> dict:
    """Domain FID and its size-matched floor; kinematic errors and their floor (mean over users)."""
    g = torch.Generator().manual_seed(seed)
    subset = train[0][torch.randperm(len(train[0]), generator=g)[: len(fake[0])]]
    s_train, s_test, s_fake = (to_scalar_images(x[0], None) for x in (train, test, fake))
    kin = kinematic_fidelity(s_train, train[1], s_fake, fake[1])["mean_rel_error"]
    kin_floor = kinematic_fidelity(s_train, train[1], s_test, test[1])["mean_rel_error"]
    return {"fid": domain_fid(all_train, test[0], fake[0]), "fid_floor": domain_fid(all_train, test[0], subset),
            "kinematic_error": kin, "kinematic_error_floor": kin_floor}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="eps,v,v_no_p2")
    ap.add_argument("--settings", default="g=1;g=3;g=3,iv=0.15:0.7;g=1,var;g=3,var")
    ap.add_argument("--samples_per_user", type=int, default=8)
    ap.add_argument("--sdedit_per_image", type=int, default=3, help="SDEdit outputs per K-shot image (M = 3 K)")
    ap.add_argument("--sample_steps", type=int, default=15)
    ap.add_argument("--decoder_train_steps", "--decoder_steps", type=int, default=GeneratorBudget.decoder_train_steps)
    ap.add_argument("--generator_cache", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sample_defects.json"))
    ap.add_argument("--grid_dir", default=None, help="also save a grid per variant and setting here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    profile = get_profile("gait31")
    sets = simulated_sets(profile.num_users, 100, 32, 1, 20)
    train, test = sets["train"], sets["test"]
    pick = kshot_indices(train[1], args.k, args.seed)
    shot = (train[0][pick].clone(), train[1][pick].clone())
    shape = RecogniserConfig(num_users=profile.num_users, channels=1, image_size=32, **{**KSHOT_RECOGNISER, "time_pool": 2})
    rec_train = replace(RecogniserTrainConfig(), seed=args.seed)
    all_train = train_recogniser(*train, num_users=profile.num_users, config=shape, train=rec_train)
    kshot = train_recogniser(*shot, num_users=profile.num_users, config=shape, train=rec_train)
    result = {"args": vars(args), "real": {"kshot": background(shot[0]), "test": background(test[0]),
                                           "test_accuracy_all_train": accuracy(all_train, *test)[0],
                                           "test_accuracy_kshot": accuracy(kshot, *test)[0]}, "rows": []}
    print(f"real K-shot {result['real']['kshot']}, test accuracy: all-train recogniser "
          f"{result['real']['test_accuracy_all_train']:.3f}, K-shot {result['real']['test_accuracy_kshot']:.3f}", flush=True)

    def grid(x: torch.Tensor, name: str) -> None:
        if args.grid_dir:
            save_grid((x[:64] + 1) / 2, Path(args.grid_dir) / f"{name}_s{args.seed}.png")

    grid(shot[0], "real_kshot")
    for variant in args.variants.split(","):
        budget = GeneratorBudget(decoder_train_steps=args.decoder_train_steps,
                                 decoder=dict(CPU_DECODER_SIZES) if not VARIANTS[variant] else {**CPU_DECODER_SIZES, **VARIANTS[variant]})
        gen = cached_generator(*shot, cache_dir=args.generator_cache, kind="two_stage", budget=budget, seed=args.seed,
                               num_users=profile.num_users, run_dir=Path(f"/tmp/sample_defects_{os.getpid()}") / variant,
                               colormap="jet")
        for setting in args.settings.split(";"):
            started = time.perf_counter()
            fake = draw(gen.model, parse(setting), shot, args.samples_per_user, args.seed, args.sample_steps,
                        args.sdedit_per_image)
            row = {"variant": variant, "setting": setting, "num_images": len(fake[0]), **background(fake[0]),
                   "a_gen_all_train": accuracy(all_train, *fake)[0], "a_gen_kshot": accuracy(kshot, *fake)[0],
                   **fidelity(all_train, train, test, fake, args.seed), "seconds": time.perf_counter() - started}
            result["rows"].append(row)
            grid(fake[0], f"{variant}_{setting.replace(',', '_').replace('=', '')}")
            kin = " ".join(f"{k} {row['kinematic_error'][k]:.3f} (floor {row['kinematic_error_floor'][k]:.3f})"
                           for k in KINEMATIC_FIELDS)
            print(f"{variant:8s} {setting:22s} background {row['background']:.3f} bright {row['bright_share']:.2f} | "
                  f"A_gen {row['a_gen_all_train']:.3f} (K-shot rec {row['a_gen_kshot']:.3f}) | "
                  f"FID {row['fid']:.1f} (floor {row['fid_floor']:.1f}) | kinematic error {kin}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
