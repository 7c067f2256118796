"""Evaluation commands: `evaluate` (generated spectrograms against the real held-out split:
identity, CAS, domain FID and KID, diversity, memorisation, background defects, kinematics,
identity stage by stage) and
`augment-eval` (the augmentation gain of a recipe). Defaults come from `defaults.DEFAULTS` and
`AugmentRecipe` (the recipe that won the ablation)."""

from __future__ import annotations

from pathlib import Path

import click

from dalle2_md.augmentation.recipe import CONDITIONS, GENERATOR_FREE_SOURCES, MIXING, RECIPE_FILTERS, SOURCES, AugmentRecipe
from dalle2_md.cli.options import SPLIT_SEED, float_tuple, opt, progress_option, upsampler_options, upsampler_sizes
from dalle2_md.defaults import (DECODER_PREDICTIONS, DEFAULT_SAMPLER, DEFAULTS, GENERATOR_DECODER_TRAIN_STEPS,
                                SAMPLE_TIMESTEPS, SAMPLERS)
from dalle2_md.training.options import DEFAULT_COLORMAP, DEFAULT_IMAGE_SIZE
from dalle2_md.utils import UserError, say

RECIPE = AugmentRecipe()  # the defaults of augment-eval


def _guidance_scales(text: str, flag: str) -> list[float]:
    """Comma-separated guidance scales (>= 1) of a flag; 'none' or '' gives none."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        scales = [float(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, e.g. 1,3 (got {text!r}), or 'none'.") from None
    if any(s < 1 for s in scales):
        raise UserError(f"{flag} scales must be >= 1 (1 = no guidance), got {text!r}.")
    return list(dict.fromkeys(scales))


def _evaluated_model(model_path, decoder_path, prior_path, clip_path):
    """The model `evaluate` samples: a 'dalle2' or baseline bundle, or the chained parts with the
    embedding model (--clip_path, else clip_final.pt beside the decoder when it fits both)."""
    from dalle2_md.models.chain import MicroDopplerDALLE2
    from dalle2_md.utils import BundleError

    if model_path is not None:
        from dalle2_md.models.single_stage import SingleStageBaseline, is_baseline_bundle

        return SingleStageBaseline.load(model_path) if is_baseline_bundle(model_path) else MicroDopplerDALLE2.load(model_path)
    near_clip = Path(decoder_path).parent / "clip_final.pt"
    if clip_path is None and near_clip.is_file():
        try:
            return MicroDopplerDALLE2.from_parts(prior_path=prior_path, decoder_path=decoder_path, clip_path=near_clip)
        except BundleError as e:  # a stray embedding model beside the decoder: evaluate without it
            say(f"not using {near_clip} ({e})")
    return MicroDopplerDALLE2.from_parts(prior_path=prior_path, decoder_path=decoder_path, clip_path=clip_path)


def _stage_identity_of(model, recogniser, sets, scales, *, num_samples_per_user, **sampling) -> dict:
    """`stage_identity_accuracies` of a chained model on the split, or {"note": why not} for a
    model without a prior or an embedding model. The decoder stage decodes at most as many real test
    embeddings per scale as the A_gen samples (num_samples_per_user per user)."""
    from dalle2_md.evaluation.stages import stage_identity_accuracies

    if getattr(model, "prior", None) is None:
        return {"note": "not computed: a single-stage model has no prior and no embedding"}
    if getattr(model, "clip", None) is None:
        return {"note": "not computed: the model has no embedding model; give a 'dalle2' bundle that holds one, "
                        "or --clip_path with --decoder_path"}
    num_users = len(sets["train"].label_map)
    return stage_identity_accuracies(model, recogniser, sets["train"].tensors(), sets["test"].tensors(),
                                     guidance_scales=scales, num_samples_per_user=num_samples_per_user,
                                     max_decoded=num_samples_per_user * num_users, **sampling)


def _draw_for_evaluation(model, num_samples_per_user: int, train_ids, num_users: int, *, seed: int, sampling):
    """(the `num_samples_per_user` per user every measure judges, the draw CAS trains on: per user
    as many as real train has, or more when `num_samples_per_user` is larger). Sample j of a user
    is the same image in both (keyed noise), so the first set is the start of the second."""
    import torch

    from dalle2_md.generation.samples import sample_tensors

    counts = torch.bincount(train_ids, minlength=num_users).tolist()
    drawn = [sample_tensors(model, [u], max(num_samples_per_user, c), seed=seed, sampling=sampling) for u, c in enumerate(counts)]
    images, ids = torch.cat([x for x, _ in drawn]), torch.cat([i for _, i in drawn])
    rank = torch.cat([torch.arange(len(i)) for _, i in drawn])
    keep = rank < num_samples_per_user
    return (images[keep], ids[keep]), (images, ids)


def _reading_of(model, model_path, decoder_path, generated_dir, image_size, colormap, split_file):
    """(image_size, colormap, split_file) the real data is read with: the model's own (and the
    split.json beside it), or for a folder of PNGs the first PNG's side."""
    if model is not None:
        image_size = image_size or model.decoder.config.image_size
        # a scalar model's data is read under a colormap even when its samples are shown grey
        colormap = "jet" if model.colormap == "none" and model.decoder.config.channels == 1 else model.colormap
        near = Path(model_path or decoder_path).parent / "split.json"
        return image_size, colormap, split_file or (str(near) if near.is_file() else None)
    if image_size is None:
        from PIL import Image

        pngs = sorted(Path(generated_dir).rglob("*.png")) if Path(generated_dir).is_dir() else []
        if not pngs:
            raise UserError(f"{generated_dir} holds no PNGs named <label>_<nnn>.png; pass the folder the generate command wrote.")
        with Image.open(pngs[0]) as im:
            image_size = im.size[0]
    return image_size, colormap, split_file


def _say_evaluation(m: dict, stages: dict | None, split_file, split_seed, out: Path) -> None:
    ident, fid = m["identity"], m["fid"]
    say(f"split: {split_file or f'recomputed (seed {split_seed})'}")
    say(f"A_real {ident['A_real']:.3f}  A_gen {ident['A_gen']:.3f}  FID {fid['gen_vs_test']}  floor {fid['train_vs_test']}")
    kid, cas, bg = m["kid"], m.get("cas", {}), m["background"]
    ratio = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    if "CAS" in cas:
        say(f"CAS {cas['CAS']:.3f} (trained on {cas['num_train_images']} generated)  CAS / A_real {ratio(cas['CAS_over_A_real'])}")
    if kid["gen_vs_test"] is not None:
        say(f"KID {kid['gen_vs_test']['mean']:.4g} ± {kid['gen_vs_test']['std']:.2g}  "
            f"floor {kid['train_vs_test_matched']['mean']:.4g}  KID / floor {ratio(kid['ratio'])}")
    say(f"background defects: generated {bg['gen']['rate']:.3f}  real test {bg['real_test']['rate']:.3f}")
    if stages is not None and "embedding" in stages:
        prior = "  ".join(f"g{g:g} {a:.3f}" for g, a in stages["prior"].items())
        decoder = "  ".join(f"g{g:g} {a:.3f}" for g, a in stages["decoder"].items())
        spread = "  ".join(f"g{g:g} {r:.2f}" for g, r in stages.get("prior_spread", {}).items())
        say(f"stages: embedding {stages['embedding']:.3f}  prior {prior} (spread / real {spread})  "
            f"decoder on true embeddings {decoder}")
    say(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and plots")


@click.command("evaluate")
@opt("data_root", required=True, type=click.Path(path_type=str), help="Real data the generator was trained on.")
@opt("split_file", type=click.Path(path_type=str), default=None,
     help="The training run's split.json [default: split.json beside the model, else the recomputed default split].")
@opt("split_seed", type=int, default=SPLIT_SEED, help="Seed of a recomputed split.")
@opt("model_path", type=click.Path(path_type=str), default=None, help="Chained 'dalle2' bundle, or a single-stage baseline bundle.")
@opt("decoder_path", type=click.Path(path_type=str), default=None, help="decoder_final.pt (with --prior_path).")
@opt("prior_path", type=click.Path(path_type=str), default=None, help="prior_final.pt (with --decoder_path).")
@opt("clip_path", type=click.Path(path_type=str), default=None,
     help="clip_final.pt of the decoder run, for the stage-by-stage identity (with --decoder_path) "
          "[default: clip_final.pt beside --decoder_path if present].")
@opt("generated_dir", type=click.Path(path_type=str), default=None,
     help="Folder of generated PNGs named <label>_<nnn>.png, instead of a model.")
@opt("output_dir", type=click.Path(path_type=str), default="./evaluation",
     help="Folder for metrics.json, report.md, plots and the cached recogniser.")
@opt("image_size", type=int, default=None, help="Image side [default: the model's, or the first generated PNG's].")
@opt("colormap", default=DEFAULT_COLORMAP, help="Colormap of the data ('none' for RGB models).")
@opt("num_samples_per_user", type=int, default=32, help="Samples per user drawn from the model.")
@opt("sample_steps", type=int, default=DEFAULTS.decoder_steps, help="Decoder network evaluations [default: the decoder's].")
@opt("prior_steps", type=int, default=DEFAULTS.prior_steps, help="Prior network evaluations [default: the prior's].")
@opt("cond_scale", type=float, default=DEFAULTS.cond_scale, help="Decoder guidance (1 = none).")
@opt("prior_cond_scale", type=float, default=DEFAULTS.prior_cond_scale, help="Prior guidance (1 = none).")
@opt("sampler", type=click.Choice(SAMPLERS), default=None, help=f"Sampler [default: {DEFAULT_SAMPLER}; ddim when --eta > 0].")
@opt("eta", type=float, default=DEFAULTS.eta, help="DDIM eta (0 = deterministic).")
@opt("seed", type=int, default=0, help="Sampling seed.")
@opt("recogniser_steps", type=int, default=300, help="Recogniser training steps.")
@opt("stage_guidance", default=f"1,{DEFAULTS.cond_scale:g}",
     help="Guidance scales of the stage-by-stage identity (with a model): the prior's accuracy and the "
          "decoder's on true embeddings of real test images, per scale; 'none' skips it.")
def evaluate_cmd(data_root, split_file, split_seed, model_path, decoder_path, prior_path, clip_path, generated_dir, output_dir,
                 image_size, colormap, num_samples_per_user, sample_steps, prior_steps, cond_scale, prior_cond_scale,
                 sampler, eta, seed, recogniser_steps, stage_guidance):
    """Judge generated spectrograms against the real held-out split: identity accuracy, CAS
    (a recogniser trained on generated images only), domain FID and KID, diversity,
    memorisation, background defects, kinematic fidelity (metrics.json, report.md, plots); with
    a model also identity stage by stage: prior samples and decoded true embeddings, per
    --stage_guidance scale. With a model, CAS trains on as many samples per user as real train
    has (drawn beyond --num_samples_per_user when needed)."""
    from dalle2_md.data.dataset import load_splits
    from dalle2_md.defaults import SamplingConfig
    from dalle2_md.evaluation.recogniser import RecogniserTrainConfig, cached_recogniser
    from dalle2_md.evaluation.report import evaluate_samples, load_generated_folder

    sources = [model_path is not None, decoder_path is not None or prior_path is not None, generated_dir is not None]
    if sum(sources) != 1 or (sources[1] and (decoder_path is None or prior_path is None)):
        raise UserError("give exactly one of --model_path, --decoder_path with --prior_path, or --generated_dir.")
    if clip_path is not None and decoder_path is None:
        raise UserError("--clip_path goes with --decoder_path and --prior_path (a 'dalle2' bundle holds its own).")
    stage_scales = _guidance_scales(stage_guidance, "--stage_guidance")
    model = _evaluated_model(model_path, decoder_path, prior_path, clip_path) if generated_dir is None else None
    image_size, colormap, split_file = _reading_of(model, model_path, decoder_path, generated_dir, image_size, colormap,
                                                   split_file)
    sets = load_splits(data_root, image_size=image_size, colormap=colormap, split_file=split_file,
                       split_seed=split_seed, label_map=getattr(model, "label_map", None), must_exist=True)
    lm = sets["train"].label_map
    out = Path(output_dir)
    recogniser = cached_recogniser(out / "recogniser.pt", *sets["train"].tensors(), num_users=len(lm),
                                   train=RecogniserTrainConfig(steps=recogniser_steps),
                                   val=sets["val"].tensors() if sets["val"] is not None else None, label_map=lm.to_dict())
    if model is not None:
        sampling = SamplingConfig(decoder_steps=sample_steps, prior_steps=prior_steps, cond_scale=cond_scale,
                                  prior_cond_scale=prior_cond_scale, sampler=sampler, eta=eta)
        generated, cas_generated = _draw_for_evaluation(model, num_samples_per_user, sets["train"].tensors()[1], len(lm),
                                                        seed=seed, sampling=sampling)
    else:
        generated = cas_generated = load_generated_folder(generated_dir, lm, image_size, colormap)[:2]
    stages = None
    if model is not None and stage_scales:
        stages = _stage_identity_of(model, recogniser, sets, stage_scales, num_samples_per_user=num_samples_per_user,
                                    decoder_steps=sample_steps, prior_steps=prior_steps, seed=seed, sampler=sampler, eta=eta)
    m = evaluate_samples(sets["train"].tensors(), sets["test"].tensors(), generated, recogniser=recogniser,
                         out_dir=out, label_map=lm, colormap=colormap, stages=stages, cas_generated=cas_generated)
    _say_evaluation(m, stages, split_file, split_seed, out)


def _seed_list(seeds: str) -> list[int]:
    try:
        return [int(s) for s in seeds.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, e.g. 0,1,2 (got {seeds!r}).") from None


@click.command("augment-eval")
@opt("data_root", required=True, type=click.Path(path_type=str), help="Real data set.")
@opt("split_file", type=click.Path(path_type=str), default=None,
     help="Split JSON (reused if it exists, written if not) [default: recomputed from --split_seed].")
@opt("split_seed", type=int, default=SPLIT_SEED, help="Seed of a new split.")
@opt("image_size", type=int, default=DEFAULT_IMAGE_SIZE, help="Image side.")
@opt("colormap", default=DEFAULT_COLORMAP, help="Colormap of the data ('none' keeps RGB).")
@opt("k", type=int, default=10, help="Real train images per user (the generator sees only these).")
@opt("m", type=int, default=None, help="Generated images per user added to the K real [default: --m_per_k x K].")
@opt("m_per_k", type=float, default=RECIPE.m_per_k, help="Generated images per real one (M/K).")
@opt("source", type=click.Choice(SOURCES), default=None,
     help="Generated images from the prior (user -> embedding), as variations of the K real images, or "
          "SDEdit of the K real images (noised --strength of the way, denoised with their own embedding); or "
          "respeckle: the K real images with their background speckle redrawn (no generator is trained) "
          f"[default: {RECIPE.source}; prior with --generator baseline, which has no embeddings].")
@opt("strength", type=float, default=RECIPE.strength, help="SDEdit noise level of --source sdedit (0..1].")
@opt("strengths", default=None, callback=float_tuple,
     help="Several SDEdit noise levels instead of --strength, an equal share of the images each (e.g. 0.3,0.5,0.7).")
@opt("condition", type=click.Choice(CONDITIONS), default=RECIPE.condition,
     help="What --source sdedit conditions on: each image's own embedding, its embedding moved part of the way "
          "towards another of the user's K images, or a prior sample for the user.")
@opt("filter", dest="filter_", type=click.Choice(RECIPE_FILTERS), default=RECIPE.filter,
     help="Keep samples that a recogniser trained on the same K real images gives their user (recogniser), whose "
          "torso speed, limb envelope and cadence lie in their user's range on those images (kinematic), or both.")
@opt("min_confidence", type=float, default=RECIPE.min_confidence, help="Confidence threshold of --filter recogniser.")
@opt("kinematic_margin", type=float, default=RECIPE.kinematic_margin,
     help="Widening of each user's kinematic range for --filter kinematic, a fraction of each quantity's spread.")
@opt("mixing", type=click.Choice(MIXING), default=RECIPE.mixing,
     help="Real and synthetic batches apart (weighted), pooled, or synthetic pre-training then real fine-tuning.")
@opt("synthetic_weight", type=float, default=RECIPE.synthetic_weight,
     help="Loss weight of the synthetic batch with --mixing separate.")
@opt("respeckle_per_k", type=float, default=RECIPE.respeckle_per_k,
     help="Also add this many re-speckled copies of each real image to the synthetic set (the generator-free "
          "control inside the recipe).")
@opt("cond_scale", type=float, default=RECIPE.cond_scale, help="Decoder guidance when generating.")
@opt("prior_cond_scale", type=float, default=RECIPE.prior_cond_scale, help="Prior guidance when generating.")
@opt("guidance_interval", default=None,
     help="lo,hi: decoder guidance only at noise levels t/T in [lo, hi] [default: as the decoder stores].")
@opt("seeds", default="0,1,2", help="Comma-separated seeds, one repetition each (>= 3 for a std).")
@opt("generator", type=click.Choice(["two_stage", "baseline"]), default="two_stage", help="Which generator to train.")
@opt("clip_train_steps", type=int, default=300, help="Embedding-model optimiser steps.")
@opt("decoder_train_steps", type=int, default=GENERATOR_DECODER_TRAIN_STEPS, help="Decoder optimiser steps.")
@opt("prediction", type=click.Choice(DECODER_PREDICTIONS), default=None,
     help="What the K-shot decoder predicts: v (on a zero-terminal-SNR schedule, min-SNR-5 weights: fewer washed-out "
          "backgrounds and higher A_gen than eps + P2 on three K = 10 seeds, docs/results.md) or eps (+ P2 weights, "
          "the formulation before) [default: v, as train-decoder].")
@opt("prior_train_steps", type=int, default=1000, help="Prior optimiser steps.")
@opt("sample_steps", type=int, default=SAMPLE_TIMESTEPS, help="Decoder network evaluations when generating.")
@opt("sampler", type=click.Choice(SAMPLERS), default=None, help=f"Sampler [default: {DEFAULT_SAMPLER}; ddim when --eta > 0].")
@opt("eta", type=float, default=RECIPE.eta, help="DDIM eta when generating (0 = deterministic).")
@opt("recogniser_steps", type=int, default=None, help="Steps of each recogniser [default: the strong baseline's].")
@opt("baseline", type=click.Choice(["physics", "strong"]), default="physics",
     help="The real-only recogniser: the strong defaults plus the physics-aware augmentation that validated best "
          "(benchmarks/search_augment.py), or the strong defaults alone.")
@opt("base_size", type=int, default=None,
     help="Train the generator at this smaller size (e.g. 64 for 256 px data) and enlarge its samples to --image_size "
          "by --enlarge; the recognisers work at --image_size [default: the generator works at --image_size].")
@opt("enlarge", type=click.Choice(["upsampler", "bicubic"]), default="upsampler",
     help="With --base_size: a diffusion upsampler trained on the same K real images (random crops), or bicubic.")
@opt("upsampler_train_steps", type=int, default=900, help="Steps of that upsampler.")
@upsampler_options
@opt("cas", is_flag=True, default=False,
     help="Also the Classification Accuracy Score: a recogniser trained on K generated images per user alone.")
@opt("output_dir", type=click.Path(path_type=str), default="./augment_eval",
     help="Folder for augment.json, augment.md and the generators' runs.")
@progress_option()
def augment_eval_cmd(data_root, split_file, split_seed, image_size, colormap, k, m, m_per_k, source, strength, strengths,
                     condition, filter_, min_confidence, kinematic_margin, mixing, synthetic_weight, respeckle_per_k,
                     cond_scale, prior_cond_scale, guidance_interval, seeds, generator, clip_train_steps,
                     decoder_train_steps, prediction, prior_train_steps, sample_steps, sampler, eta, recogniser_steps,
                     baseline, base_size, enlarge, upsampler_train_steps, cas, output_dir, progress, **upsampler_kw):
    """Augmentation gain: recognisers trained on K real images per user vs K real + M generated
    (generator trained on those K only), both tested on real test; mean ± std over seeds.
    The defaults are the recipe that won the ablation in docs/results.md."""
    import json
    from dataclasses import replace

    from dalle2_md.augmentation.harness import augmentation_gain, write_augment_report
    from dalle2_md.data.dataset import load_splits
    from dalle2_md.augmentation.recipe import default_source
    from dalle2_md.evaluation.protocol import RECOGNISER_ARMS
    from dalle2_md.utils import plain_json
    from dalle2_md.models.guidance import check_guidance_interval
    from dalle2_md.models.schedules import formulation_fields
    from dalle2_md.training.presets import GeneratorBudget

    source = source or default_source(generator)
    if source in GENERATOR_FREE_SOURCES:
        generator = "none"
    interval = check_guidance_interval(guidance_interval) if guidance_interval else None
    recipe = AugmentRecipe(name="cli", source=source, strength=strength, strengths=strengths, condition=condition,
                           m_per_k=m_per_k, cond_scale=cond_scale, prior_cond_scale=prior_cond_scale,
                           guidance_interval=interval, eta=eta, filter=filter_, min_confidence=min_confidence,
                           kinematic_margin=kinematic_margin, mixing=mixing, synthetic_weight=synthetic_weight,
                           respeckle_per_k=respeckle_per_k)
    if source != "prior" and generator == "baseline":
        raise UserError(f"--source {source} needs --generator two_stage (it decodes embeddings of the real images).")
    seed_list = _seed_list(seeds)
    sets = load_splits(data_root, image_size=image_size, colormap=colormap, split_file=split_file, split_seed=split_seed)
    train, test = sets["train"], sets["test"]
    budget = GeneratorBudget(clip_train_steps=clip_train_steps, decoder_train_steps=decoder_train_steps,
                             prior_train_steps=prior_train_steps)
    budget = replace(budget, decoder={**budget.decoder, **formulation_fields(prediction)})
    budget = replace(budget, sampling=replace(budget.sampling, decoder_steps=sample_steps, sampler=sampler, eta=eta))
    out = Path(output_dir)
    enlargement = _enlargement(base_size, image_size, train.tensors()[0].shape[1], enlarge, upsampler_train_steps,
                               upsampler_sizes(upsampler_kw))
    result = augmentation_gain(
        train.tensors(), test.tensors(), num_users=len(train.label_map), work_dir=out / "runs", k=k, m=m,
        seeds=seed_list, generator=generator, budget=budget, recipes=[recipe],
        recogniser_train=replace(RECOGNISER_ARMS[baseline], **({"steps": recogniser_steps} if recogniser_steps else {})),
        train_files=[train.index.relpath(f) for f in train.files], test_files=[test.index.relpath(f) for f in test.files],
        label_map=train.label_map.to_dict(), colormap=train.colormap or "none", log=say, progress=progress,
        enlargement=enlargement, cas=cas)
    out.mkdir(parents=True, exist_ok=True)
    (out / "augment.json").write_text(json.dumps(plain_json(result), indent=1))
    report = write_augment_report(result, out / "augment.md")
    g = result["gain_points"]
    say(f"gain {g['mean']:+.1f} ± {g['std']:.1f} points at K={k}, M={result['m']}; wrote {out / 'augment.json'} and {report}")


def _enlargement(base_size, image_size, channels, enlarge, steps, sizes):
    """augment-eval's `cascade.Enlargement` (None without --base_size)."""
    from dalle2_md.augmentation.cascade import Enlargement, upsampler_schedule
    from dalle2_md.models.upsampler import UpsamplerConfig

    if base_size is None:
        return None
    if not 1 <= base_size < image_size:
        raise UserError(f"--base_size {base_size} must be below --image_size {image_size} (the data's size).")
    upsampler = None if enlarge == "bicubic" else UpsamplerConfig(
        lowres_size=base_size, output_size=image_size, channels=channels, **sizes)
    return Enlargement(base_size=base_size, upsampler=upsampler, upsampler_train=upsampler_schedule(steps))


COMMANDS = (evaluate_cmd, augment_eval_cmd)
