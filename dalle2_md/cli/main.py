"""The `dalle2-md` command line: one click group whose subcommands hold every workflow.

Commands stay thin (options -> config -> build -> run); heavy imports happen inside them so
`--help` is instant. A `UserError` anywhere prints one line and exits 2, never a traceback.
Results and progress lines go through `utils.say` like every other message; only that `Error:`
line goes to stderr (through click), so a failed command's reason stands apart from its output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dalle2_md.defaults import DEFAULT_SAMPLER, DEFAULTS, GENERATOR_DECODER_TRAIN_STEPS, SAMPLE_TIMESTEPS, SAMPLERS
from dalle2_md.augmentation.recipe import CONDITIONS, MIXING, RECIPE_FILTERS, SOURCES, AugmentRecipe

RECIPE = AugmentRecipe()  # the defaults of augment-eval
from dalle2_md.utils import UserError, say


class Dalle2MDGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)


@click.group(cls=Dalle2MDGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="dalle2-md")
def cli():
    """Generate radar micro-Doppler gait spectrograms for chosen users (DALLE2-style)."""


@cli.command("inspect-data")
@click.argument("data_root", type=click.Path(path_type=str))
@click.option("--image-size", default=64, help="Side of the square images the data is decoded to.")
@click.option("--colormap", default="jet", help="Colormap to invert into one channel, or 'none' to keep RGB.")
@click.option("--num-users", type=int, default=None, help="Expected number of users (checked).")
@click.option("--split-file", type=click.Path(path_type=str), default=None, help="Show this split's sizes (created if missing).")
@click.option("--split-seed", default=0, help="Seed for a new split.")
def inspect_data(data_root, image_size, colormap, num_users, split_file, split_seed):
    """Decode a data set and print its layout, users, images per user, labels and skipped files.

    DATA_ROOT holds one folder per user (user_0/, ID_1/, ...) or images/ + metadata.json.
    """
    import warnings

    from dalle2_md.data.dataset import MicroDopplerDataset
    from dalle2_md.data.splits import resolve_split

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = MicroDopplerDataset(data_root, image_size=image_size, colormap=colormap, num_users=num_users)
        split = None
        if split_file is not None:
            split = resolve_split(ds.index, split_file, split_seed)
    lm = ds.label_map
    say(f"data root: {ds.root}")
    say(f"layout:    {ds.layout}")
    say(f"images:    {len(ds)} decoded to {ds.channels}x{ds.image_size}x{ds.image_size} (colormap: {ds.colormap or 'none'})")
    if ds.residual is not None:
        say(f"colormap residual: {ds.residual:.2f}/255 (mean over colour images; ~0 for true {ds.colormap} images)")
    say(f"users:     {len(lm)}")
    counts = ds.counts()
    in_split = {}
    if split is not None:
        rel_index = {ds.index.relpath(f): int(u) for f, u in zip(ds.files, ds.user_indices)}
        for k in ("train", "val", "test"):
            in_split[k] = [0] * len(lm)
            for rel in split[k]:
                if rel in rel_index:
                    in_split[k][rel_index[rel]] += 1
        say(f"split:     {split_file} (seed {split.get('seed')}, fractions {split.get('fractions')})")
    say("index  label  images" + ("  train/val/test" if split is not None else "") + "  file stem")
    for i, name in enumerate(lm.names):
        extra = f"  {in_split['train'][i]}/{in_split['val'][i]}/{in_split['test'][i]}" if split is not None else ""
        say(f"{i:>5}  {name:<6} {counts[i]:>6}{extra}  {lm.file_stem(i)}")
    say(f"skipped:   {len(ds.skipped)}")
    for path, why in ds.skipped:
        say(f"  {path}: {why}")
    others = [str(w.message) for w in caught if not str(w.message).startswith("skipped ")]
    for msg in others:
        say(f"warning: {msg}")


@cli.command("synth")
@click.option(
    "--profile",
    type=click.Choice(["default", "gait31"]),
    default="default",
    help="default: 8 easy users (8 x 20, hierarchical); gait31: 31 users ID_1..ID_31 (31 x 100, kaggle) "
    "with recording-to-recording variation (speed, aspect, towards/away, range SNR, clutter, carried arm).",
)
@click.option("--num_users", "--num-users", "num_users", default=None, type=int, help="Number of simulated walkers (default: 8, gait31: 31).")
@click.option("--images_per_user", "--images-per-user", "images_per_user", default=None, type=int,
              help="Spectrograms per walker (default: 20, gait31: 100).")
@click.option("--image_size", "--image-size", "image_size", default=64, type=int, help="Side of the square images in pixels.")
@click.option(
    "--layout",
    type=click.Choice(["hierarchical", "kaggle", "flat"]),
    default=None,
    help="user_0/..., ID_1/..., or images/ + metadata.json (default: hierarchical, gait31: kaggle).",
)
@click.option("--out", default="./data/synthetic", type=click.Path(path_type=str), help="Folder to write into.")
@click.option("--seed", default=0, type=int, help="Same seed, byte-identical data set.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def synth(profile, num_users, images_per_user, image_size, layout, out, seed, progress):
    """Simulate per-user gait micro-Doppler spectrograms (jet PNGs) with their ground truth."""
    from dalle2_md.data.synthesize import synthesize_dataset

    s = synthesize_dataset(
        out,
        num_users=num_users,
        images_per_user=images_per_user,
        image_size=image_size,
        layout=layout,
        seed=seed,
        progress=progress,
        profile=profile,
    )
    say(f"wrote {s['num_images']} images ({s['num_users']} users, {image_size}px, {s['layout']}, profile {profile}) "
        f"to {s['out_dir']} in {s['seconds']:.1f}s")
    if s["metadata"]:
        say(f"metadata:      {s['metadata']}")
    say(f"ground truth:  {s['ground_truth']}")
    say(f"contact sheet: {s['contact_sheet']}")


# ------------------------------------------------------------------------------------------
# training, generation, demo and self-check commands (thin: options -> stages / generation / demo / selfcheck)

# `--user_ids` (the seed's flag) takes original labels; the commands call them `user_labels`
USER_LABELS_HELP = ("Users by original label as on disk (ID_5, user_5 or 5; not the 0..N-1 index), "
                    "e.g. --user_ids 0 1 2 [default: all users].")

# argparse-style list flags (`--user_ids 0 1 2`) are joined into one value before click parses
VARIADIC_FLAGS = ("--user_ids", "--user-ids", "--dim_mults", "--dim-mults", "--clip_widths", "--clip-widths")


def join_variadic(argv):
    """Rewrite `--user_ids 0 1 2` as `--user_ids 0,1,2` (click takes one value per option).

    Args:
        argv: command-line words after the program name.
    """
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        word = argv[i]
        out.append(word)
        i += 1
        if word in VARIADIC_FLAGS:
            values = []
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            if values:
                out.append(",".join(values))
    return out


def _opt(name, *, dest=None, **kw):
    """An option spelled `--data_root` (the seed's) and `--data-root`, default shown in --help;
    `dest` names the command's parameter when the flag's name says less (`--user_ids` ->
    `user_labels`)."""
    dashed = "--" + name.replace("_", "-")
    spellings = [f"--{name}"] + ([dashed] if dashed != f"--{name}" else [])
    kw.setdefault("show_default", True)
    return click.option(*spellings, dest or name, **kw)


def _apply(*decorators):
    def wrap(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


def _int_tuple(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in str(value).replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected integers such as '1 2 4 8' or 1,2,4,8, got {value!r}") from None


def _str_list(ctx, param, value):
    if value is None:
        return None
    return [v for v in str(value).replace(",", " ").split() if v]


_data_options = _apply(
    _opt("data_root", required=True, type=click.Path(path_type=str),
         help="Folder of user folders (user_0/, ID_1/, ...) or images/ + metadata.json."),
    _opt("num_users", type=int, default=None, help="Expected number of users, checked against the data (default: as found)."),
    _opt("image_size", type=int, default=None,
         help="Side of the square images the models see (data is resized) [default: as recorded in the "
              "embedding model the run builds on (--clip_path, or this run's on --resume), else 64]."),
    _opt("colormap", type=click.Choice(["jet", "none"]), default=None,
         help="Invert this colormap into one channel; 'none' trains on RGB [default: as for --image_size, else jet]."),
    _opt("flat_structure", is_flag=True, default=False, help="Require the flat layout (images/ + metadata.json)."),
    _opt("split_seed", type=int, default=0, help="Seed of the per-user train/val/test split (80/10/10)."),
    _opt("cache_dir", type=click.Path(path_type=str), default=None,
         help="Cache of decoded images and embeddings [default: <output_dir>/.cache]."),
)


def _train_options(*, output_dir, experiment_name, batch_size):
    return _apply(
        _opt("output_dir", type=click.Path(path_type=str), default=output_dir, help="Parent folder of the run folder."),
        _opt("experiment_name", default=experiment_name, help="Run folder name: outputs go to <output_dir>/<experiment_name>/."),
        _opt("batch_size", type=int, default=batch_size, help="Samples per process and micro-step."),
        _opt("epochs", type=int, default=100, help="Passes over the training split."),
        _opt("max_steps", type=int, default=None, help="Optimizer steps; overrides --epochs."),
        _opt("lr", type=float, default=3e-4, help="Peak learning rate (AdamW)."),
        _opt("warmup_steps", type=int, default=0, help="Linear learning-rate warmup steps."),
        _opt("max_grad_norm", type=float, default=1.0, help="Gradient clipping norm; 0 turns clipping off."),
        _opt("ema_decay", type=float, default=0.995, help="EMA decay of the weights used for sampling and saved."),
        _opt("mixed_precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", help="Mixed precision (accelerate)."),
        _opt("compile", is_flag=True, default=False,
             help="torch.compile the training step (needs a C++ compiler on CPU; the first step compiles for minutes, "
                  "later steps run faster; a failed compilation trains on without it)."),
        _opt("gradient_accumulation_steps", type=int, default=1, help="Micro-steps per optimizer step."),
        _opt("seed", type=int, default=0, help="Seeds weights, data order and noise."),
        _opt("log_every", type=int, default=10, help="TensorBoard scalars every N steps."),
        _opt("checkpoint_every", type=int, default=1000, help="Checkpoint every N steps (0: only at the end)."),
        _opt("sample_every", type=int, default=1000, help="Sample grid every N steps (0: only at the end)."),
        _opt("keep_last", type=int, default=3, help="Checkpoints kept per stage (0: all)."),
        _opt("num_workers", type=int, default=0, help="DataLoader workers (data is held in memory; 0 is usually best)."),
        _opt("resume", default=None, help="Continue training: 'latest' or a checkpoint path."),
        _opt("overwrite", is_flag=True, default=False, help="Replace existing *_final.pt files of this run."),
        click.option("--progress/--no-progress", "progress", default=True, show_default=True, help="Show progress bars."),
    )


_clip_options = _apply(
    _opt("clip_dim", type=int, default=64, help="Embedding size of the embedding model (the prior's width)."),
    _opt("clip_widths", default="32,64,128,128", callback=_int_tuple,
         help="Channels of the embedding model's conv stages, e.g. 32 64 128 128."),
    _opt("clip_dim_image", type=int, default=128, help="Width of the embedding model's image tokens."),
)


def _clip_sizes(kw):
    widths, dim, dim_image = kw.pop("clip_widths"), kw.pop("clip_dim"), kw.pop("clip_dim_image")
    return dict(dim_latent=dim, dim_text=dim, dim_image=dim_image, encoder_widths=widths)


def _common(kw):
    """Pop the data and training options shared by the train-* commands."""
    from dalle2_md.training.loop import TrainConfig
    from dalle2_md.training.options import DataOptions

    run_dir = Path(kw.pop("output_dir")) / kw.pop("experiment_name")
    cache_dir = kw.pop("cache_dir") or str(run_dir.parent / ".cache")
    data = DataOptions(data_root=kw.pop("data_root"), num_users=kw.pop("num_users"), image_size=kw.pop("image_size"),
                       colormap=kw.pop("colormap"), flat_structure=kw.pop("flat_structure"),
                       split_seed=kw.pop("split_seed"), cache_dir=cache_dir)
    epochs, max_steps, grad = kw.pop("epochs"), kw.pop("max_steps"), kw.pop("max_grad_norm")
    config = TrainConfig(
        max_steps=max_steps, epochs=None if max_steps is not None else epochs, batch_size=kw.pop("batch_size"), lr=kw.pop("lr"),
        warmup_steps=kw.pop("warmup_steps"), max_grad_norm=grad if grad and grad > 0 else None,
        ema_decay=kw.pop("ema_decay"), mixed_precision=kw.pop("mixed_precision"), compile=kw.pop("compile"),
        gradient_accumulation_steps=kw.pop("gradient_accumulation_steps"), seed=kw.pop("seed"),
        log_every=kw.pop("log_every"), checkpoint_every=kw.pop("checkpoint_every"),
        sample_every=kw.pop("sample_every"), keep_last=kw.pop("keep_last"), num_workers=kw.pop("num_workers"),
    )
    run = dict(resume=kw.pop("resume"), overwrite=kw.pop("overwrite"), progress=kw.pop("progress"))
    return dict(data=data, run_dir=run_dir, config=config, **run)


@cli.command("train-clip")
@_data_options
@_train_options(output_dir="./outputs/clip", experiment_name="clip_v1", batch_size=32)
@_clip_options
def train_clip_cmd(**kw):
    """Train the embedding model (x-clip: spectrogram <-> user token) alone; writes
    <output_dir>/<experiment_name>/clip_final.pt. train-decoder does this itself unless given --clip_path."""
    from dalle2_md.training.stages import run_train_clip

    sizes = _clip_sizes(kw)
    done = run_train_clip(sizes=sizes, **_common(kw))
    say(f"embedding model: {done.final}")


@cli.command("train-decoder")
@_data_options
@_train_options(output_dir="./outputs/decoder", experiment_name="decoder_v1", batch_size=16)
@_opt("dim", type=int, default=128, help="Base U-Net width.")
@_opt("dim_mults", default="1,2,4,8", callback=_int_tuple, help="U-Net width multipliers, e.g. 1 2 4 8.")
@_opt("num_resnet_blocks", type=int, default=2, help="Residual blocks per U-Net stage.")
@_opt("attn_heads", type=int, default=16, help="U-Net attention heads.")
@_opt("attn_dim_head", type=int, default=32, help="U-Net attention head width.")
@_opt("timesteps", type=int, default=1000, help="Diffusion timesteps in training.")
@_opt("sample_timesteps", type=int, default=SAMPLE_TIMESTEPS,
      help="Network evaluations when sampling (training grids and default for generate).")
@_opt("cond_drop_prob", type=float, default=0.1, help="Embedding dropout, enables classifier-free guidance.")
@click.option("--user_conditioning/--no_user_conditioning", "--user-conditioning/--no-user-conditioning", "user_conditioning",
              default=True, show_default=True,
              help="Also condition the decoder on a learned user-ID token beside the image embedding, as DALL-E 2's "
                   "decoder keeps its caption (off: the image embedding alone, as before).")
@_opt("backbone", type=click.Choice(["unet", "dit"]), default="unet",
      help="Denoising network: the U-Net, or a DiT (patch transformer; width --dim, heads --attn_heads), meant for latents.")
@_opt("dit_depth", type=int, default=4, help="DiT transformer blocks (with --backbone dit).")
@_opt("dit_patch_size", type=int, default=2, help="DiT patch side (with --backbone dit).")
@_opt("use_vqgan", is_flag=True, default=False, help="Diffuse over a VQGAN latent (trains the VQGAN first unless --vqgan_path).")
@_opt("vqgan_path", type=click.Path(path_type=str), default=None, help="A trained vqgan_final.pt to use with --use_vqgan.")
@_opt("vqgan_factor", type=int, default=4,
      help="VQGAN downsampling factor f (4 or 8): latents are image_size / f on a side (256 px -> 64 or 32).")
@_opt("vqgan_dim", type=int, default=16, help="VQGAN width (every stage; the latent's channels).")
@_opt("vqgan_layers", type=int, default=None,
      help="VQGAN downsamplings, instead of --vqgan_factor (f = 2**layers).")
@_opt("vqgan_codebook_size", type=int, default=256, help="VQGAN codebook entries.")
@_opt("vqgan_epochs", type=int, default=20, help="VQGAN training epochs (--max_steps applies to it too).")
@_opt("vqgan_max_steps", type=int, default=None, help="VQGAN training steps; overrides the other lengths.")
@_opt("vqgan_lr", type=float, default=1e-3,
      help="VQGAN learning rate (at 3e-4, 400 steps kept fewer limb arcs: benchmarks/bench_vqgan.py).")
@_opt("vqgan_quantize", is_flag=True, default=False,
      help="Decode through the VQGAN's codebook. Off by default: a codebook trained on a CPU erases the thin "
           "limb arcs, so the decoder reads the encoder's continuous latent.")
@_opt("clip_path", type=click.Path(path_type=str), default=None,
      help="Use this trained embedding model instead of training one into <run>/clip_final.pt.")
@_opt("clip_epochs", type=int, default=20, help="Embedding-model epochs (--max_steps applies to it too).")
@_opt("clip_max_steps", type=int, default=None, help="Embedding-model steps; overrides the other lengths.")
@_clip_options
def train_decoder_cmd(**kw):
    """Stage 1: train the embedding model (unless --clip_path), the VQGAN (with --use_vqgan) and
    the decoder; writes clip_final.pt and decoder_final.pt in <output_dir>/<experiment_name>/."""
    from dalle2_md.training.stages import run_train_decoder

    clip_sizes = _clip_sizes(kw)
    sizes = {k: kw.pop(k) for k in ("dim", "dim_mults", "num_resnet_blocks", "attn_heads", "attn_dim_head",
                                    "timesteps", "sample_timesteps", "cond_drop_prob", "backbone", "dit_depth",
                                    "dit_patch_size", "user_conditioning")}
    from dalle2_md.training.presets import cpu_vqgan_sizes

    factor, layers, dim = kw.pop("vqgan_factor"), kw.pop("vqgan_layers"), kw.pop("vqgan_dim")
    vqgan_sizes = cpu_vqgan_sizes(2**layers if layers is not None else factor, dim=dim,
                                  codebook_size=kw.pop("vqgan_codebook_size"), resnet_groups=8 if dim % 8 == 0 else 1,
                                  quantize=kw.pop("vqgan_quantize"))
    paths = run_train_decoder(
        sizes=sizes, clip_path=kw.pop("clip_path"), clip_sizes=clip_sizes, clip_max_steps=kw.pop("clip_max_steps"),
        clip_epochs=kw.pop("clip_epochs"), use_vqgan=kw.pop("use_vqgan"), vqgan_path=kw.pop("vqgan_path"),
        vqgan_sizes=vqgan_sizes, vqgan_max_steps=kw.pop("vqgan_max_steps"), vqgan_epochs=kw.pop("vqgan_epochs"),
        vqgan_lr=kw.pop("vqgan_lr"), **_common(kw),
    )
    for name, path in paths.items():
        say(f"{name}: {path}")


@cli.command("train-prior")
@_data_options
@_train_options(output_dir="./outputs/prior", experiment_name="prior_v1", batch_size=32)
@_opt("clip_path", type=click.Path(path_type=str), default=None,
      help="The embedding model the decoder was trained with (<decoder run>/clip_final.pt) "
           "[default: <output_dir>/<experiment_name>/clip_final.pt if present].")
@_opt("dim", type=int, default=512,
      help="Width of the prior's transformer; embeddings of another size are projected in and out.")
@_opt("depth", type=int, default=6, help="Transformer depth.")
@_opt("heads", type=int, default=8, help="Attention heads.")
@_opt("dim_head", type=int, default=64, help="Attention head width.")
@_opt("timesteps", type=int, default=1000, help="Diffusion timesteps in training.")
@_opt("sample_timesteps", type=int, default=SAMPLE_TIMESTEPS, help="Network evaluations when sampling (default for generate).")
@_opt("cond_drop_prob", type=float, default=0.2, help="User-ID dropout for classifier-free guidance.")
def train_prior_cmd(**kw):
    """Stage 2: train the user-conditioned diffusion prior on the embedding model's image
    embeddings; writes <output_dir>/<experiment_name>/prior_final.pt."""
    from dalle2_md.training.stages import run_train_prior

    sizes = {k: kw.pop(k) for k in ("dim", "depth", "heads", "dim_head", "timesteps", "sample_timesteps",
                                    "cond_drop_prob")}
    paths = run_train_prior(sizes=sizes, clip_path=kw.pop("clip_path"), **_common(kw))
    say(f"prior: {paths['prior']}")


_model_options = _apply(
    _opt("decoder_path", type=click.Path(path_type=str), default=None, help="decoder_final.pt of a decoder run."),
    _opt("prior_path", type=click.Path(path_type=str), default=None, help="prior_final.pt of a prior run."),
    _opt("clip_path", type=click.Path(path_type=str), default=None, help="Optional: the embedding model, checked against both."),
    _opt("model_path", type=click.Path(path_type=str), default=None, help="A chained 'dalle2' bundle instead of the parts."),
    _opt("output_dir", type=click.Path(path_type=str), default="./generated_images", help="Folder to write images into."),
    _opt("cond_scale", type=float, default=DEFAULTS.cond_scale, help="Decoder guidance on the embedding (1 = none)."),
    _opt("prior_cond_scale", type=float, default=DEFAULTS.prior_cond_scale, help="Prior guidance on the user (1 = none)."),
    _opt("guidance_interval", default=None,
         help="lo,hi: apply decoder guidance only at noise levels t/T in [lo, hi] [default: as stored in the decoder]."),
    _opt("sampler", type=click.Choice(SAMPLERS), default=None,
         help=f"Sampler of both stages [default: {DEFAULT_SAMPLER}; ddim when --eta > 0]."),
    _opt("sample_steps", type=int, default=DEFAULTS.decoder_steps,
         help="Decoder network evaluations [default: the decoder's sample_timesteps]."),
    _opt("prior_steps", type=int, default=DEFAULTS.prior_steps,
         help="Prior network evaluations [default: the prior's sample_timesteps]."),
    _opt("seed", type=int, default=0, help="Same seed, same images."),
    _opt("device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)."),
    _opt("colormap", type=click.Choice(["jet", "none"]), default=None,
         help="Colour of the PNGs: 'jet', or 'none' for grey [default: the training data's own, as recorded "
              "in the decoder: grey for greyscale data, jet for jet images]."),
)


def _load_model(kw):
    from dalle2_md.generation.samples import load_generator

    model = load_generator(model_path=kw.pop("model_path"), prior_path=kw.pop("prior_path"),
                           decoder_path=kw.pop("decoder_path"), clip_path=kw.pop("clip_path"), device=kw.pop("device"))
    colormap = kw.pop("colormap")
    if colormap is not None:
        model.colormap = colormap  # only re-colours scalar models; RGB models are shown as they are
    interval = kw.pop("guidance_interval", None)
    if interval is not None:
        model.decoder.set_guidance_interval(interval)
    return model


def _sampling(kw):
    return {k: kw.pop(k) for k in ("cond_scale", "prior_cond_scale", "sample_steps", "prior_steps", "seed", "sampler")}


def _fast_paths(kw):
    from dalle2_md.generation.fastpath import FastPaths

    return FastPaths(bf16=kw.pop("bf16"), channels_last=kw.pop("channels_last"), compile=kw.pop("compile"))


_curation_options = _apply(
    _opt("filter", type=click.Choice(["none", "recogniser", "kinematic", "both"]), default=None,
         help="Write a curated data set (see generate-dataset): keep samples the recogniser gives their user with "
              "--min_confidence, and/or whose kinematics lie in the user's real range."),
    _opt("layout", type=click.Choice(["kaggle", "hierarchical", "flat"]), default=None,
         help="Write a data set in this layout with manifest.json (see generate-dataset) [default: the input's layout]."),
    _opt("data_root", type=click.Path(path_type=str), default=None,
         help="Real data the generator was trained on; its train split fits the filters."),
    _opt("split_file", type=click.Path(path_type=str), default=None,
         help="The training run's split.json [default: split.json beside the model, else recomputed from --split_seed]."),
    _opt("split_seed", type=int, default=0, help="Seed of a recomputed split."),
    _opt("min_confidence", type=float, default=0.5, help="Recogniser probability of the intended user needed to keep a sample."),
    _opt("kinematic_margin", type=float, default=0.1,
         help="Widening of each user's real kinematic range at each end, as a fraction of the quantity's spread over all users."),
    _opt("recogniser_steps", type=int, default=300, help="Training steps of the filter's recogniser."),
    _opt("max_draws_per_user", type=int, default=None, help="Cap on samples drawn per user [default: 10 x --num_samples_per_user]."),
    _opt("overwrite", is_flag=True, default=False, help="Delete an earlier curated set in --output_dir and start again."),
)


def _generate_dataset(kw, batch_size):
    """The curated-set path of `generate` and `generate-dataset`."""
    from dalle2_md.defaults import SamplingConfig
    from dalle2_md.generation.curate import generate_dataset

    paths = {k: kw.get(k) for k in ("model_path", "decoder_path", "prior_path", "clip_path")}
    model = _load_model(kw)
    near = Path(paths["model_path"] or paths["decoder_path"]).parent / "split.json"
    split_file = kw["split_file"] or (str(near) if kw["data_root"] and near.is_file() else None)
    sampling = SamplingConfig(cond_scale=kw["cond_scale"], prior_cond_scale=kw["prior_cond_scale"], eta=kw["eta"],
                              sampler=kw["sampler"], decoder_steps=kw["sample_steps"], prior_steps=kw["prior_steps"])
    model_id = {**{k: str(Path(v).resolve()) for k, v in paths.items() if v},
                "clip_fingerprint": (getattr(model.decoder, "meta", None) or {}).get("clip_fingerprint")}
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


@cli.command("generate-dataset")
@_model_options
@_opt("user_ids", dest="user_labels", default=None, callback=_str_list, help=USER_LABELS_HELP)
@_opt("num_samples_per_user", type=int, default=100, help="Kept images per user.")
@_opt("batch_size", type=int, default=32, help="Samples drawn at once (memory holds one batch).")
@_opt("eta", type=float, default=DEFAULTS.eta, help="DDIM eta of both stages (0 = deterministic; > 0 uses --sampler ddim).")
@_curation_options
@click.option("--progress/--no-progress", "progress", default=True, show_default=True, help="Show a progress bar.")
def generate_dataset_cmd(**kw):
    """Draw samples per user until --num_samples_per_user pass --filter, and write them as a data
    set in the input's layout (original labels) with manifest.json (every draw: file, user, sample
    index, seed, guidance, eta, filter scores, kept or dropped). Re-running continues an
    interrupted run; exits 1 when a user's acceptance is too low to reach the target."""
    _generate_dataset(kw, kw.pop("batch_size"))


@cli.command("generate")
@_model_options
@_opt("user_ids", dest="user_labels", default=None, callback=_str_list, help=USER_LABELS_HELP)
@_opt("num_samples_per_user", type=int, default=4, help="Images per user.")
@_opt("batch_size", type=int, default=64, help="Most images sampled at once (users and samples mixed; bounds memory).")
@_opt("eta", type=float, default=DEFAULTS.eta, help="DDIM eta of both stages (0 = deterministic; > 0 uses --sampler ddim).")
@_opt("bf16", is_flag=True, default=False, help="bf16 autocast while sampling (CUDA; falls back to fp32 elsewhere).")
@_opt("channels_last", is_flag=True, default=False, help="channels_last U-Net (CUDA; ignored elsewhere).")
@_opt("compile", is_flag=True, default=False, help="torch.compile the networks (CUDA; ignored elsewhere).")
@click.option("--progress/--no-progress", "progress", default=True, show_default=True, help="Show a progress bar.")
@_opt("save_npy", is_flag=True, default=False, help="Also save each scalar spectrogram as .npy (values in [0, 1]).")
@_opt("interpolate", is_flag=True, default=False, help="Also (or, without --user_ids, only) write an interpolation strip.")
@_opt("interp_user_1", dest="user_label_a", default=None,
      help="First user of the interpolation, by original label (ID_5, user_5 or 5; not its 0..N-1 index).")
@_opt("interp_user_2", dest="user_label_b", default=None,
      help="Second user of the interpolation, by original label.")
@_opt("interp_steps", type=int, default=8, help="Interpolation frames, ends included.")
@_curation_options
def generate_cmd(**kw):
    """Generate spectrograms per user (PNG per sample named with the user's label, grid.png with
    one row per user) and optionally a user-to-user interpolation strip. With --filter or
    --layout: a curated data set instead (what generate-dataset does)."""
    from dalle2_md.generation.samples import write_interpolation, write_samples

    if kw["filter"] is not None or kw["layout"] is not None:
        if kw["interpolate"] or kw["save_npy"]:
            raise UserError("--filter/--layout write a data set; leave out --interpolate and --save_npy there.")
        return _generate_dataset(kw, kw["batch_size"])
    for k in ("filter", "layout", "data_root", "split_file", "split_seed", "min_confidence", "kinematic_margin",
              "recogniser_steps", "max_draws_per_user", "overwrite"):
        kw.pop(k)

    interp = {k: kw.pop(k) for k in ("interpolate", "user_label_a", "user_label_b", "interp_steps")}
    if interp["interpolate"] and not (interp["user_label_a"] and interp["user_label_b"]):
        raise UserError("--interpolate needs --interp_user_1 and --interp_user_2 (original labels, e.g. 0 and 5).")
    model, out, sampling = _load_model(kw), kw.pop("output_dir"), _sampling(kw)
    if kw["user_labels"] or not interp["interpolate"]:
        made = write_samples(model, out, user_labels=kw["user_labels"], num_samples_per_user=kw["num_samples_per_user"],
                             batch_size=kw["batch_size"], save_npy=kw["save_npy"], eta=kw["eta"], fast=_fast_paths(kw),
                             progress=kw["progress"], **sampling)
        say(f"wrote {len(made['images'])} images and {made['grid']} ({made['images_per_s']:.2f} images/s)")
    if interp["interpolate"]:
        made = write_interpolation(model, out, user_label_a=interp["user_label_a"], user_label_b=interp["user_label_b"],
                                   steps=interp["interp_steps"], **sampling)
        say(f"wrote {made['strip']} and {len(made['frames'])} frames")


@cli.command("variations")
@click.option("--image", "image_paths", multiple=True, required=True, type=click.Path(path_type=str),
              help="A real spectrogram PNG (repeat the flag for several).")
@_opt("n", type=int, default=8, help="Variations per image.")
@_opt("strength", type=float, default=None,
      help="SDEdit: noise the image this far into the schedule (0..1) and denoise from there [default: plain variations].")
@_opt("model_path", type=click.Path(path_type=str), default=None, help="A chained 'dalle2' bundle (carries the embedding model).")
@_opt("decoder_path", type=click.Path(path_type=str), default=None, help="decoder_final.pt (with --clip_path).")
@_opt("clip_path", type=click.Path(path_type=str), default=None, help="clip_final.pt of the decoder run.")
@_opt("output_dir", type=click.Path(path_type=str), default="./variations", help="Folder to write into.")
@_opt("cond_scale", type=float, default=DEFAULTS.cond_scale, help="Decoder guidance on the embedding (1 = none).")
@_opt("sample_steps", type=int, default=DEFAULTS.decoder_steps,
      help="Decoder network evaluations [default: the decoder's sample_timesteps]; SDEdit runs the part below --strength.")
@_opt("sampler", type=click.Choice(SAMPLERS), default=None,
      help=f"Sampler of the variations [default: {DEFAULT_SAMPLER}; ddim when --eta > 0]; SDEdit always runs DDIM.")
@_opt("eta", type=float, default=DEFAULTS.eta, help="DDIM eta (0 = deterministic).")
@_opt("seed", type=int, default=0, help="Same seed, same images.")
@_opt("resize", is_flag=True, default=False, help="Resize images of another size to the model's, as training data is.")
@_opt("device", default="auto", help="cpu, cuda, cuda:N, or auto.")
def variations_cmd(image_paths, n, strength, model_path, decoder_path, clip_path, output_dir, cond_scale, sample_steps,
                   sampler, eta, seed, resize, device):
    """Variations of real spectrograms (DALL-E 2's feature): embed each image with the embedding
    model and decode that embedding from --n noises; with --strength, SDEdit from the noised image.
    Writes <stem>_variation_NNN.png (or _sdedit_) and <stem>_grid.png (input first)."""
    from dalle2_md.generation.variations import load_embedding_decoder, write_variations

    model = load_embedding_decoder(model_path=model_path, decoder_path=decoder_path, clip_path=clip_path, device=device)
    made = write_variations(model, image_paths, output_dir, n=n, seed=seed, strength=strength, cond_scale=cond_scale,
                            steps=sample_steps, eta=eta, sampler=sampler, resize=resize)
    say(f"wrote {len(made['images'])} images and {', '.join(str(g) for g in made['grids'])}")


@cli.command("interpolate")
@_model_options
@_opt("interp_user_1", dest="user_label_a", required=True,
      help="First user, by original label (ID_5, user_5 or 5; not its 0..N-1 index).")
@_opt("interp_user_2", dest="user_label_b", required=True, help="Second user, by original label.")
@_opt("interp_steps", type=int, default=8, help="Frames, ends included.")
def interpolate_cmd(**kw):
    """Write interpolation_<a>_<b>.png: frames between two users' sampled embeddings, decoded
    from the same noise (and each frame in interpolation_<a>_<b>/)."""
    from dalle2_md.generation.samples import write_interpolation

    model, out, sampling = _load_model(kw), kw.pop("output_dir"), _sampling(kw)
    made = write_interpolation(model, out, user_label_a=kw["user_label_a"], user_label_b=kw["user_label_b"],
                               steps=kw["interp_steps"], **sampling)
    say(f"wrote {made['strip']} and {len(made['frames'])} frames")


@cli.command("demo")
@_opt("output_dir", type=click.Path(path_type=str), default="outputs/demo", help="Demo folder (its earlier outputs are replaced).")
@_opt("quick", is_flag=True, default=False, help="Tiny sizes for a smoke test (about a minute on 2 CPU cores).")
@_opt("seed", type=int, default=0, help="Seed of the data, training and samples.")
@_opt("image_size", type=int, default=None, help="Side of the simulated images [default: 64, --quick 16].")
@_opt("vqgan_steps", type=int, default=None,
      help="Train a VQGAN (f = 4) this many steps and diffuse over its latent; 0: over pixels "
           "[default: 400, --quick 0].")
@click.option("--progress/--no-progress", "progress", default=True, show_default=True, help="Show progress bars.")
def demo_cmd(output_dir, quick, seed, image_size, vqgan_steps, progress):
    """Simulate a small data set, train embedding -> [VQGAN] -> decoder -> prior, generate a per-user
    grid and an interpolation strip, and write <output_dir>/report.md with pictures, settings and
    timings."""
    from dataclasses import replace

    from dalle2_md.cli.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if quick else DemoConfig()
    changes = {k: v for k, v in (("image_size", image_size), ("vqgan_train_steps", vqgan_steps)) if v is not None}
    done = run_demo(output_dir, replace(config, **changes), seed=seed, progress=progress)
    for stage, seconds in done["timings"].items():
        say(f"{stage:<12} {seconds:7.1f}s")
    say(f"peak RSS {done['peak_rss_mb']:.0f} MiB; report: {done['report']}")


@cli.command("check")
@_opt("create_dummy", is_flag=True, default=False, help="Check on a simulated data set (not your data).")
@_opt("data_root", type=click.Path(path_type=str), default=None, help="Check your own data set instead.")
@_opt("num_users", type=int, default=5, help="Users to simulate, or the number expected in --data_root.")
@_opt("image_size", type=int, default=None, help="Image side for the check [default: 32 simulated, 64 own data].")
@_opt("flat_structure", is_flag=True, default=False, help="Require (or simulate) the flat layout.")
@_opt("steps", type=int, default=2, help="Training steps per stage.")
@_opt("work_dir", type=click.Path(path_type=str), default=None, help="Keep the check's files here [default: a temporary folder].")
def check_cmd(create_dummy, data_root, num_users, image_size, flat_structure, steps, work_dir):
    """Run every stage for a few steps and sample once; prints one PASS/FAIL line per check and
    exits 1 if any failed (what test_micro_doppler.py runs)."""
    import tempfile

    from dalle2_md.cli.check import run_checks

    if create_dummy == (data_root is not None):
        raise UserError("give either --create_dummy (simulated data) or --data_root PATH (your data).")
    with tempfile.TemporaryDirectory(prefix="dalle2md-check-") as tmp:
        checks = run_checks(work_dir or tmp, data_root=data_root, num_users=num_users, image_size=image_size,
                            steps=steps, flat_structure=flat_structure)
    say("")
    for c in checks:
        say(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    failed = sum(not c.ok for c in checks)
    say(f"{len(checks) - failed}/{len(checks)} checks passed")
    if failed:
        sys.exit(1)


def run_command(name, argv=None, prog_name=None):
    """Run one subcommand as a program of its own (the seed's top-level scripts).

    Args:
        name: subcommand name, e.g. "train-decoder".
        argv: words after the program name (default sys.argv[1:]).
        prog_name: name shown in usage lines.
    """
    command = cli.commands[name]
    try:
        command.main(args=join_variadic(sys.argv[1:] if argv is None else argv), prog_name=prog_name,
                     help_option_names=["-h", "--help"])
    except UserError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)


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


@cli.command("evaluate")
@click.option("--data_root", "--data-root", "data_root", required=True, type=click.Path(path_type=str), help="Real data the generator was trained on.")
@click.option("--split_file", "--split-file", "split_file", default=None, type=click.Path(path_type=str),
              help="The training run's split.json [default: split.json beside the model, else the recomputed default split].")
@click.option("--split_seed", "--split-seed", "split_seed", default=0, type=int, help="Seed of a recomputed split.")
@click.option("--model_path", "--model-path", "model_path", default=None, type=click.Path(path_type=str),
              help="Chained 'dalle2' bundle, or a single-stage baseline bundle.")
@click.option("--decoder_path", "--decoder-path", "decoder_path", default=None, type=click.Path(path_type=str), help="decoder_final.pt (with --prior_path).")
@click.option("--prior_path", "--prior-path", "prior_path", default=None, type=click.Path(path_type=str), help="prior_final.pt (with --decoder_path).")
@click.option("--clip_path", "--clip-path", "clip_path", default=None, type=click.Path(path_type=str),
              help="clip_final.pt of the decoder run, for the stage-by-stage identity (with --decoder_path) "
                   "[default: clip_final.pt beside --decoder_path if present].")
@click.option("--generated_dir", "--generated-dir", "generated_dir", default=None, type=click.Path(path_type=str),
              help="Folder of generated PNGs named <label>_<nnn>.png, instead of a model.")
@click.option("--output_dir", "--output-dir", "output_dir", default="./evaluation", type=click.Path(path_type=str),
              help="Folder for metrics.json, report.md, plots and the cached recogniser.")
@click.option("--image_size", "--image-size", "image_size", default=None, type=int,
              help="Image side [default: the model's, or the first generated PNG's].")
@click.option("--colormap", default="jet", help="Colormap of the data ('none' for RGB models).")
@click.option("--num_samples_per_user", "--num-samples-per-user", "num_samples_per_user", default=32, type=int,
              help="Samples per user drawn from the model.")
@click.option("--sample_steps", "--sample-steps", "sample_steps", default=DEFAULTS.decoder_steps, type=int, help="Decoder network evaluations [default: the decoder's].")
@click.option("--prior_steps", "--prior-steps", "prior_steps", default=DEFAULTS.prior_steps, type=int, help="Prior network evaluations [default: the prior's].")
@click.option("--cond_scale", "--cond-scale", "cond_scale", default=DEFAULTS.cond_scale, type=float, help="Decoder guidance (1 = none).")
@click.option("--prior_cond_scale", "--prior-cond-scale", "prior_cond_scale", default=DEFAULTS.prior_cond_scale, type=float, help="Prior guidance (1 = none).")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help=f"Sampler [default: {DEFAULT_SAMPLER}; ddim when --eta > 0].")
@click.option("--eta", default=DEFAULTS.eta, type=float, help="DDIM eta (0 = deterministic).")
@click.option("--seed", default=0, type=int, help="Sampling seed.")
@click.option("--recogniser_steps", "--recogniser-steps", "recogniser_steps", default=300, type=int, help="Recogniser training steps.")
@click.option("--stage_guidance", "--stage-guidance", "stage_guidance", default=f"1,{DEFAULTS.cond_scale:g}",
              help="Guidance scales of the stage-by-stage identity (with a model): the prior's accuracy and the "
                   "decoder's on true embeddings of real test images, per scale; 'none' skips it.")
def evaluate_cmd(data_root, split_file, split_seed, model_path, decoder_path, prior_path, clip_path, generated_dir, output_dir,
                 image_size, colormap, num_samples_per_user, sample_steps, prior_steps, cond_scale, prior_cond_scale,
                 sampler, eta, seed, recogniser_steps, stage_guidance):
    """Judge generated spectrograms against the real held-out split: identity accuracy, domain
    FID, diversity, memorisation, kinematic fidelity (metrics.json, report.md, plots); with a
    model also identity stage by stage: prior samples and decoded true embeddings, per
    --stage_guidance scale."""
    from dalle2_md.augmentation.harness import load_splits
    from dalle2_md.defaults import SamplingConfig
    from dalle2_md.generation.samples import sample_tensors
    from dalle2_md.evaluation.recogniser import RecogniserTrainConfig, cached_recogniser
    from dalle2_md.evaluation.report import evaluate_samples, load_generated_folder

    sources = [model_path is not None, decoder_path is not None or prior_path is not None, generated_dir is not None]
    if sum(sources) != 1 or (sources[1] and (decoder_path is None or prior_path is None)):
        raise UserError("give exactly one of --model_path, --decoder_path with --prior_path, or --generated_dir.")
    if clip_path is not None and decoder_path is None:
        raise UserError("--clip_path goes with --decoder_path and --prior_path (a 'dalle2' bundle holds its own).")
    stage_scales = _guidance_scales(stage_guidance, "--stage_guidance")
    model = _evaluated_model(model_path, decoder_path, prior_path, clip_path) if generated_dir is None else None
    if model is not None:
        image_size = image_size or model.decoder.config.image_size
        # the colormap the data is read with: a scalar model's data is read under a colormap even
        # when its samples are shown grey (greyscale data)
        colormap = "jet" if model.colormap == "none" and model.decoder.config.channels == 1 else model.colormap
        near = Path(model_path or decoder_path).parent / "split.json"
        split_file = split_file or (str(near) if near.is_file() else None)
    elif image_size is None:
        from PIL import Image

        pngs = sorted(Path(generated_dir).rglob("*.png")) if Path(generated_dir).is_dir() else []
        if not pngs:
            raise UserError(f"{generated_dir} holds no PNGs named <label>_<nnn>.png; pass the folder the generate command wrote.")
        with Image.open(pngs[0]) as im:
            image_size = im.size[0]
    label_map = getattr(model, "label_map", None)
    sets = load_splits(data_root, image_size=image_size, colormap=colormap, split_file=split_file,
                       split_seed=split_seed, label_map=label_map, must_exist=True)
    lm = sets["train"].label_map
    out = Path(output_dir)
    recogniser = cached_recogniser(out / "recogniser.pt", *sets["train"].tensors(), num_users=len(lm),
                                   train=RecogniserTrainConfig(steps=recogniser_steps),
                                   val=sets["val"].tensors() if sets["val"] is not None else None, label_map=lm.to_dict())
    if model is not None:
        sampling = SamplingConfig(decoder_steps=sample_steps, prior_steps=prior_steps, cond_scale=cond_scale,
                                  prior_cond_scale=prior_cond_scale, sampler=sampler, eta=eta)
        generated = sample_tensors(model, list(range(len(lm))), num_samples_per_user, seed=seed, sampling=sampling)
    else:
        generated = load_generated_folder(generated_dir, lm, image_size, colormap)[:2]
    stages = None
    if model is not None and stage_scales:
        stages = _stage_identity_of(model, recogniser, sets, stage_scales, num_samples_per_user=num_samples_per_user,
                                    decoder_steps=sample_steps, prior_steps=prior_steps, seed=seed, sampler=sampler, eta=eta)
    m = evaluate_samples(sets["train"].tensors(), sets["test"].tensors(), generated, recogniser=recogniser,
                         out_dir=out, label_map=lm, colormap=colormap, stages=stages)
    ident, fid = m["identity"], m["fid"]
    say(f"split: {split_file or f'recomputed (seed {split_seed})'}")
    say(f"A_real {ident['A_real']:.3f}  A_gen {ident['A_gen']:.3f}  FID {fid['gen_vs_test']}  floor {fid['train_vs_test']}")
    if stages is not None and "embedding" in stages:
        prior = "  ".join(f"g{g:g} {a:.3f}" for g, a in stages["prior"].items())
        decoder = "  ".join(f"g{g:g} {a:.3f}" for g, a in stages["decoder"].items())
        spread = "  ".join(f"g{g:g} {r:.2f}" for g, r in stages.get("prior_spread", {}).items())
        say(f"stages: embedding {stages['embedding']:.3f}  prior {prior} (spread / real {spread})  "
            f"decoder on true embeddings {decoder}")
    say(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and plots")


@cli.command("augment-eval")
@click.option("--data_root", "--data-root", "data_root", required=True, type=click.Path(path_type=str), help="Real data set.")
@click.option("--split_file", "--split-file", "split_file", default=None, type=click.Path(path_type=str),
              help="Split JSON (reused if it exists, written if not) [default: recomputed from --split_seed].")
@click.option("--split_seed", "--split-seed", "split_seed", default=0, type=int, help="Seed of a new split.")
@click.option("--image_size", "--image-size", "image_size", default=64, type=int, help="Image side.")
@click.option("--colormap", default="jet", help="Colormap of the data ('none' keeps RGB).")
@click.option("--k", "k", default=10, type=int, help="Real train images per user (the generator sees only these).")
@click.option("--m", "m", default=None, type=int, help="Generated images per user added to the K real [default: --m_per_k x K].")
@click.option("--m_per_k", "--m-per-k", "m_per_k", default=RECIPE.m_per_k, type=float, help="Generated images per real one (M/K).")
@click.option("--source", type=click.Choice(SOURCES), default=None,
              help="Generated images from the prior (user -> embedding), as variations of the K real images, or "
                   "SDEdit of the K real images (noised --strength of the way, denoised with their own embedding) "
                   f"[default: {RECIPE.source}; prior with --generator baseline, which has no embeddings].")
@click.option("--strength", default=RECIPE.strength, type=float, help="SDEdit noise level of --source sdedit (0..1].")
@click.option("--condition", type=click.Choice(CONDITIONS), default=RECIPE.condition,
              help="What --source sdedit conditions on: each image's own embedding, its embedding moved part of the way "
                   "towards another of the user's K images, or a prior sample for the user.")
@click.option("--filter", "filter_", type=click.Choice(RECIPE_FILTERS), default=RECIPE.filter,
              help="Keep samples that a recogniser trained on the same K real images gives their user.")
@click.option("--min_confidence", "--min-confidence", "min_confidence", default=RECIPE.min_confidence, type=float,
              help="Confidence threshold of --filter recogniser.")
@click.option("--mixing", type=click.Choice(MIXING), default=RECIPE.mixing,
              help="Real and synthetic batches apart (weighted), pooled, or synthetic pre-training then real fine-tuning.")
@click.option("--synthetic_weight", "--synthetic-weight", "synthetic_weight", default=RECIPE.synthetic_weight, type=float,
              help="Loss weight of the synthetic batch with --mixing separate.")
@click.option("--cond_scale", "--cond-scale", "cond_scale", default=RECIPE.cond_scale, type=float, help="Decoder guidance when generating.")
@click.option("--prior_cond_scale", "--prior-cond-scale", "prior_cond_scale", default=RECIPE.prior_cond_scale, type=float,
              help="Prior guidance when generating.")
@click.option("--guidance_interval", "--guidance-interval", "guidance_interval", default=None,
              help="lo,hi: decoder guidance only at noise levels t/T in [lo, hi] [default: as the decoder stores].")
@click.option("--seeds", default="0,1,2", help="Comma-separated seeds, one repetition each (>= 3 for a std).")
@click.option("--generator", type=click.Choice(["two_stage", "baseline"]), default="two_stage", help="Which generator to train.")
@click.option("--clip_steps", "--clip-steps", "clip_steps", default=300, type=int, help="Embedding-model steps.")
@click.option("--decoder_steps", "--decoder-steps", "decoder_steps", default=GENERATOR_DECODER_TRAIN_STEPS, type=int,
              help="Decoder steps.")
@click.option("--prior_steps", "--prior-steps", "prior_steps", default=1000, type=int, help="Prior steps.")
@click.option("--sample_steps", "--sample-steps", "sample_steps", default=25, type=int, help="Decoder network evaluations when generating.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help=f"Sampler [default: {DEFAULT_SAMPLER}; ddim when --eta > 0].")
@click.option("--eta", default=RECIPE.eta, type=float, help="DDIM eta when generating (0 = deterministic).")
@click.option("--recogniser_steps", "--recogniser-steps", "recogniser_steps", default=None, type=int,
              help="Steps of each recogniser [default: the strong baseline's].")
@click.option("--output_dir", "--output-dir", "output_dir", default="./augment_eval", type=click.Path(path_type=str),
              help="Folder for augment.json, augment.md and the generators' runs.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def augment_eval_cmd(data_root, split_file, split_seed, image_size, colormap, k, m, m_per_k, source, strength, condition, filter_,
                     min_confidence, mixing, synthetic_weight, cond_scale, prior_cond_scale, guidance_interval, seeds,
                     generator, clip_steps, decoder_steps, prior_steps, sample_steps, sampler, eta, recogniser_steps, output_dir, progress):
    """Augmentation gain: recognisers trained on K real images per user vs K real + M generated
    (generator trained on those K only), both tested on real test; mean ± std over seeds.
    The defaults are the recipe that won the ablation in docs/results.md."""
    import json
    from dataclasses import replace

    from dalle2_md.training.presets import GeneratorBudget
    from dalle2_md.augmentation.harness import augmentation_gain, load_splits, write_augment_report
    from dalle2_md.models.guidance import check_guidance_interval
    from dalle2_md.evaluation.recogniser import RecogniserTrainConfig
    from dalle2_md.utils import plain_json
    from dalle2_md.augmentation.recipe import AugmentRecipe, default_source

    source = source or default_source(generator)
    interval = check_guidance_interval(guidance_interval) if guidance_interval else None
    recipe = AugmentRecipe(name="cli", source=source, strength=strength, condition=condition, m_per_k=m_per_k,
                           cond_scale=cond_scale,
                           prior_cond_scale=prior_cond_scale, guidance_interval=interval, eta=eta, filter=filter_,
                           min_confidence=min_confidence, mixing=mixing, synthetic_weight=synthetic_weight)
    if source != "prior" and generator != "two_stage":
        raise UserError(f"--source {source} needs --generator two_stage (it decodes embeddings of the real images).")

    try:
        seed_list = [int(s) for s in seeds.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, e.g. 0,1,2 (got {seeds!r}).") from None
    sets = load_splits(data_root, image_size=image_size, colormap=colormap, split_file=split_file, split_seed=split_seed)
    train, test = sets["train"], sets["test"]
    budget = GeneratorBudget(clip_train_steps=clip_steps, decoder_train_steps=decoder_steps, prior_train_steps=prior_steps,
                             sampling=replace(GeneratorBudget().sampling, decoder_steps=sample_steps, sampler=sampler, eta=eta))
    out = Path(output_dir)
    result = augmentation_gain(
        train.tensors(), test.tensors(), num_users=len(train.label_map), work_dir=out / "runs", k=k, m=m,
        seeds=seed_list, generator=generator, budget=budget, recipes=[recipe],
        recogniser_train=replace(RecogniserTrainConfig(), **({"steps": recogniser_steps} if recogniser_steps else {})),
        train_files=[train.index.relpath(f) for f in train.files], test_files=[test.index.relpath(f) for f in test.files],
        label_map=train.label_map.to_dict(), colormap=train.colormap or "none", log=say, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "augment.json").write_text(json.dumps(plain_json(result), indent=1))
    report = write_augment_report(result, out / "augment.md")
    g = result["gain_points"]
    say(f"gain {g['mean']:+.1f} ± {g['std']:.1f} points at K={k}, M={result['m']}; wrote {out / 'augment.json'} and {report}")


def main(argv=None):
    cli.main(args=join_variadic(sys.argv[1:] if argv is None else argv), prog_name="dalle2-md")


if __name__ == "__main__":
    main()
