"""Generation commands: `generate` (per-user images, an interpolation strip, or with --filter /
--layout a curated data set), `generate-dataset` (the curated data set), `interpolate` and
`variations` (of real spectrograms). Sampling defaults come from `defaults.DEFAULTS`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dalle2_md.cli.options import COLORMAPS, SPLIT_SEED, USER_LABELS_HELP, all_of, opt, progress_option, str_list
from dalle2_md.defaults import DEFAULT_SAMPLER, DEFAULTS, SAMPLERS
from dalle2_md.utils import UserError, say

upsampling_options = (
    opt("upsampler_path", type=click.Path(path_type=str), default=None,
        help="An upsampler (upsampler_final.pt) applied after the decoder [default: the one beside --decoder_path "
             "if present]; 'none' writes the decoder's own size."),
    opt("output_size", type=click.IntRange(min=1), default=None,
        help="Side of the images written; the final image is resized (bicubic) when it differs [default: the "
             "upsampler's output size, else the decoder's image size]."),
)

model_options = all_of(
    opt("decoder_path", type=click.Path(path_type=str), default=None, help="decoder_final.pt of a decoder run."),
    opt("prior_path", type=click.Path(path_type=str), default=None, help="prior_final.pt of a prior run."),
    opt("clip_path", type=click.Path(path_type=str), default=None, help="Optional: the embedding model, checked against both."),
    opt("model_path", type=click.Path(path_type=str), default=None, help="A chained 'dalle2' bundle instead of the parts."),
    opt("output_dir", type=click.Path(path_type=str), default="./generated_images", help="Folder to write images into."),
    opt("cond_scale", type=float, default=DEFAULTS.cond_scale, help="Decoder guidance on the embedding (1 = none)."),
    opt("prior_cond_scale", type=float, default=DEFAULTS.prior_cond_scale, help="Prior guidance on the user (1 = none)."),
    opt("guidance_interval", default=None,
        help="lo,hi: apply decoder guidance only at noise levels t/T in [lo, hi] [default: as stored in the decoder]."),
    opt("sampler", type=click.Choice(SAMPLERS), default=None,
        help=f"Sampler of both stages [default: {DEFAULT_SAMPLER}; ddim when --eta > 0]."),
    opt("sample_steps", type=int, default=DEFAULTS.decoder_steps,
        help="Decoder network evaluations [default: the decoder's sample_timesteps]."),
    opt("prior_steps", type=int, default=DEFAULTS.prior_steps,
        help="Prior network evaluations [default: the prior's sample_timesteps]."),
    opt("seed", type=int, default=0, help="Same seed, same images."),
    opt("device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)."),
    opt("colormap", type=click.Choice(COLORMAPS), default=None,
        help="Colour of the PNGs: 'jet', or 'none' for grey [default: the training data's own, as recorded "
             "in the decoder: grey for greyscale data, jet for jet images]."),
    *upsampling_options,
)


def load_model(kw):
    """Pop the `model_options` that pick and load the model; the loaded chain."""
    from dalle2_md.generation.samples import load_generator

    model = load_generator(model_path=kw.pop("model_path"), prior_path=kw.pop("prior_path"),
                           decoder_path=kw.pop("decoder_path"), clip_path=kw.pop("clip_path"), device=kw.pop("device"),
                           upsampler_path=kw.pop("upsampler_path"), output_size=kw.pop("output_size"))
    colormap = kw.pop("colormap")
    if colormap is not None:
        model.colormap = colormap  # only re-colours scalar models; RGB models are shown as they are
    interval = kw.pop("guidance_interval", None)
    if interval is not None:
        model.decoder.set_guidance_interval(interval)
    return model


def pop_sampling(kw):
    """Pop the sampling options every sampling call takes."""
    return {k: kw.pop(k) for k in ("cond_scale", "prior_cond_scale", "sample_steps", "prior_steps", "seed", "sampler")}


def pop_fast_paths(kw):
    """Pop --bf16, --channels_last and --compile as `FastPaths`."""
    from dalle2_md.generation.fastpath import FastPaths

    return FastPaths(bf16=kw.pop("bf16"), channels_last=kw.pop("channels_last"), compile=kw.pop("compile"))


curation_options = all_of(
    opt("filter", type=click.Choice(["none", "recogniser", "kinematic", "both"]), default=None,
        help="Write a curated data set (see generate-dataset): keep samples the recogniser gives their user with "
             "--min_confidence, and/or whose kinematics lie in the user's real range."),
    opt("layout", type=click.Choice(["kaggle", "hierarchical", "flat"]), default=None,
        help="Write a data set in this layout with manifest.json (see generate-dataset) [default: the input's layout]."),
    opt("data_root", type=click.Path(path_type=str), default=None,
        help="Real data the generator was trained on; its train split fits the filters."),
    opt("split_file", type=click.Path(path_type=str), default=None,
        help="The training run's split.json [default: split.json beside the model, else recomputed from --split_seed]."),
    opt("split_seed", type=int, default=SPLIT_SEED, help="Seed of a recomputed split."),
    opt("min_confidence", type=float, default=0.5, help="Recogniser probability of the intended user needed to keep a sample."),
    opt("kinematic_margin", type=float, default=0.1,
        help="Widening of each user's real kinematic range at each end, as a fraction of the quantity's spread over all users."),
    opt("recogniser_steps", type=int, default=300, help="Training steps of the filter's recogniser."),
    opt("max_draws_per_user", type=int, default=None, help="Cap on samples drawn per user [default: 10 x --num_samples_per_user]."),
    opt("overwrite", is_flag=True, default=False, help="Delete an earlier curated set in --output_dir and start again."),
)


def write_dataset(kw, batch_size):
    """The curated-set path of `generate` and `generate-dataset`."""
    from dalle2_md.defaults import SamplingConfig
    from dalle2_md.generation.curate import generate_dataset

    paths = {k: kw.get(k) for k in ("model_path", "decoder_path", "prior_path", "clip_path")}
    model = load_model(kw)
    near = Path(paths["model_path"] or paths["decoder_path"]).parent / "split.json"
    split_file = kw["split_file"] or (str(near) if kw["data_root"] and near.is_file() else None)
    sampling = SamplingConfig(cond_scale=kw["cond_scale"], prior_cond_scale=kw["prior_cond_scale"], eta=kw["eta"],
                              sampler=kw["sampler"], decoder_steps=kw["sample_steps"], prior_steps=kw["prior_steps"])
    model_id = {**{k: str(Path(v).resolve()) for k, v in paths.items() if v},
                "clip_fingerprint": (getattr(model.decoder, "meta", None) or {}).get("clip_fingerprint")}
    if model.image_size != model.decoder.config.image_size or model.upsampler_path is not None:
        # older curated sets, at the decoder's size without an upsampler, keep their settings
        model_id |= {"upsampler_path": str(Path(model.upsampler_path).resolve()) if model.upsampler_path else None,
                     "image_size": model.image_size}
    done = generate_dataset(
        model, kw["output_dir"], user_labels=kw["user_labels"], num_samples_per_user=kw["num_samples_per_user"],
        filter=kw["filter"] or "none", data_root=kw["data_root"], split_file=split_file, split_seed=kw["split_seed"],
        min_confidence=kw["min_confidence"], kinematic_margin=kw["kinematic_margin"], recogniser_steps=kw["recogniser_steps"],
        layout=kw["layout"], sampling=sampling, seed=kw["seed"], batch_size=batch_size,
        max_draws_per_user=kw["max_draws_per_user"], model_id=model_id, overwrite=kw["overwrite"],
        progress=kw.get("progress", True), log=lambda m: say(f"warning: {m}"))
    kept = sum(u["kept"] for u in done.users.values())
    drawn = sum(u["drawn"] for u in done.users.values())
    say(f"kept {kept} of {drawn} drawn ({kept / max(1, drawn):.1%}) for {len(done.users)} users; "
        f"wrote {done.output_dir} and {done.manifest}")
    if done.short:
        sys.exit(1)


@click.command("generate-dataset")
@model_options
@opt("user_ids", dest="user_labels", default=None, callback=str_list, help=USER_LABELS_HELP)
@opt("num_samples_per_user", type=int, default=100, help="Kept images per user.")
@opt("batch_size", type=int, default=32, help="Samples drawn at once (memory holds one batch).")
@opt("eta", type=float, default=DEFAULTS.eta, help="DDIM eta of both stages (0 = deterministic; > 0 uses --sampler ddim).")
@curation_options
@progress_option("Show a progress bar.")
def generate_dataset_cmd(**kw):
    """Draw samples per user until --num_samples_per_user pass --filter, and write them as a data
    set in the input's layout (original labels) with manifest.json (every draw: file, user, sample
    index, seed, guidance, eta, filter scores, kept or dropped). Re-running continues an
    interrupted run; exits 1 when a user's acceptance is too low to reach the target."""
    write_dataset(kw, kw.pop("batch_size"))


@click.command("generate")
@model_options
@opt("user_ids", dest="user_labels", default=None, callback=str_list, help=USER_LABELS_HELP)
@opt("num_samples_per_user", type=int, default=4, help="Images per user.")
@opt("batch_size", type=int, default=None,
     help="Most images sampled at once (users and samples mixed; bounds memory) [default: 64 up to 128 px, 32 at 256].")
@opt("eta", type=float, default=DEFAULTS.eta, help="DDIM eta of both stages (0 = deterministic; > 0 uses --sampler ddim).")
@opt("bf16", is_flag=True, default=False, help="bf16 autocast while sampling (CUDA; falls back to fp32 elsewhere).")
@opt("channels_last", is_flag=True, default=False, help="channels_last U-Net (CUDA; ignored elsewhere).")
@opt("compile", is_flag=True, default=False, help="torch.compile the networks (CUDA; ignored elsewhere).")
@progress_option("Show a progress bar.")
@opt("save_npy", is_flag=True, default=False, help="Also save each scalar spectrogram as .npy (values in [0, 1]).")
@opt("interpolate", is_flag=True, default=False, help="Also (or, without --user_ids, only) write an interpolation strip.")
@opt("interp_user_1", dest="user_label_a", default=None,
     help="First user of the interpolation, by original label (ID_5, user_5 or 5; not its 0..N-1 index).")
@opt("interp_user_2", dest="user_label_b", default=None,
     help="Second user of the interpolation, by original label.")
@opt("interp_steps", type=int, default=8, help="Interpolation frames, ends included.")
@curation_options
def generate_cmd(**kw):
    """Generate spectrograms per user (PNG per sample named with the user's label, grid.png with
    one row per user) and optionally a user-to-user interpolation strip. With --filter or
    --layout: a curated data set instead (what generate-dataset does)."""
    from dalle2_md.generation.samples import write_interpolation, write_samples

    if kw["filter"] is not None or kw["layout"] is not None:
        if kw["interpolate"] or kw["save_npy"]:
            raise UserError("--filter/--layout write a data set; leave out --interpolate and --save_npy there.")
        return write_dataset(kw, 32 if kw["batch_size"] is None else kw["batch_size"])
    for k in ("filter", "layout", "data_root", "split_file", "split_seed", "min_confidence", "kinematic_margin",
              "recogniser_steps", "max_draws_per_user", "overwrite"):
        kw.pop(k)

    interp = {k: kw.pop(k) for k in ("interpolate", "user_label_a", "user_label_b", "interp_steps")}
    if interp["interpolate"] and not (interp["user_label_a"] and interp["user_label_b"]):
        raise UserError("--interpolate needs --interp_user_1 and --interp_user_2 (original labels, e.g. 0 and 5).")
    model, out, sampling = load_model(kw), kw.pop("output_dir"), pop_sampling(kw)
    if kw["user_labels"] or not interp["interpolate"]:
        made = write_samples(model, out, user_labels=kw["user_labels"], num_samples_per_user=kw["num_samples_per_user"],
                             batch_size=kw["batch_size"], save_npy=kw["save_npy"], eta=kw["eta"], fast=pop_fast_paths(kw),
                             progress=kw["progress"], **sampling)
        say(f"wrote {len(made['images'])} images and {made['grid']} ({made['images_per_s']:.2f} images/s)")
    if interp["interpolate"]:
        made = write_interpolation(model, out, user_label_a=interp["user_label_a"], user_label_b=interp["user_label_b"],
                                   steps=interp["interp_steps"], **sampling)
        say(f"wrote {made['strip']} and {len(made['frames'])} frames")


@click.command("variations")
@opt("image", dest="image_paths", multiple=True, required=True, type=click.Path(path_type=str),
     help="A real spectrogram PNG (repeat the flag for several).")
@opt("n", type=int, default=8, help="Variations per image.")
@opt("strength", type=float, default=None,
     help="SDEdit: noise the image this far into the schedule (0..1) and denoise from there [default: plain variations].")
@opt("model_path", type=click.Path(path_type=str), default=None, help="A chained 'dalle2' bundle (carries the embedding model).")
@opt("decoder_path", type=click.Path(path_type=str), default=None, help="decoder_final.pt (with --clip_path).")
@opt("clip_path", type=click.Path(path_type=str), default=None, help="clip_final.pt of the decoder run.")
@opt("output_dir", type=click.Path(path_type=str), default="./variations", help="Folder to write into.")
@opt("cond_scale", type=float, default=DEFAULTS.cond_scale, help="Decoder guidance on the embedding (1 = none).")
@opt("sample_steps", type=int, default=DEFAULTS.decoder_steps,
     help="Decoder network evaluations [default: the decoder's sample_timesteps]; SDEdit runs the part below --strength.")
@opt("sampler", type=click.Choice(SAMPLERS), default=None,
     help=f"Sampler of the variations [default: {DEFAULT_SAMPLER}; ddim when --eta > 0]; SDEdit always runs DDIM.")
@opt("eta", type=float, default=DEFAULTS.eta, help="DDIM eta (0 = deterministic).")
@opt("seed", type=int, default=0, help="Same seed, same images.")
@opt("resize", is_flag=True, default=False, help="Resize images of another size to the model's, as training data is.")
@opt("device", default="auto", help="cpu, cuda, cuda:N, or auto.")
@all_of(*upsampling_options)
def variations_cmd(image_paths, n, strength, model_path, decoder_path, clip_path, output_dir, cond_scale, sample_steps,
                   sampler, eta, seed, resize, device, upsampler_path, output_size):
    """Variations of real spectrograms (DALL-E 2's feature): embed each image with the embedding
    model and decode that embedding from --n noises; with --strength, SDEdit from the noised image.
    Writes <stem>_variation_NNN.png (or _sdedit_) and <stem>_grid.png (input first)."""
    from dalle2_md.generation.variations import load_embedding_decoder, write_variations

    model = load_embedding_decoder(model_path=model_path, decoder_path=decoder_path, clip_path=clip_path, device=device,
                                   upsampler_path=upsampler_path, output_size=output_size)
    made = write_variations(model, image_paths, output_dir, n=n, seed=seed, strength=strength, cond_scale=cond_scale,
                            steps=sample_steps, eta=eta, sampler=sampler, resize=resize)
    say(f"wrote {len(made['images'])} images and {', '.join(str(g) for g in made['grids'])}")


@click.command("interpolate")
@model_options
@opt("interp_user_1", dest="user_label_a", required=True,
     help="First user, by original label (ID_5, user_5 or 5; not its 0..N-1 index).")
@opt("interp_user_2", dest="user_label_b", required=True, help="Second user, by original label.")
@opt("interp_steps", type=int, default=8, help="Frames, ends included.")
def interpolate_cmd(**kw):
    """Write interpolation_<a>_<b>.png: frames between two users' sampled embeddings, decoded
    from the same noise (and each frame in interpolation_<a>_<b>/)."""
    from dalle2_md.generation.samples import write_interpolation

    model, out, sampling = load_model(kw), kw.pop("output_dir"), pop_sampling(kw)
    made = write_interpolation(model, out, user_label_a=kw["user_label_a"], user_label_b=kw["user_label_b"],
                               steps=kw["interp_steps"], **sampling)
    say(f"wrote {made['strip']} and {len(made['frames'])} frames")


COMMANDS = (generate_cmd, generate_dataset_cmd, interpolate_cmd, variations_cmd)
