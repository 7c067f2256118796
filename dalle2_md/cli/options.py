"""How the commands spell and share their options.

Owns: `opt` and `flag_pair`, the one way a command declares an option (the seed's underscore
spelling `--data_root`, shown in --help; the hyphen spelling `--data-root` still parses but is
not shown); `join_variadic` (argparse-style `--user_ids 0 1 2`); `field_default` (an option's
default read from the dataclass it fills, never restated); and the option groups of the
train-* commands (`data_options`, `train_options`, `clip_options`, `upsampler_options`) with
`pop_run_args`, which turns their values into `DataOptions` + `TrainConfig`.

No torch here: `dalle2-md --help` imports this module, and only torch-free dataclasses
(`defaults.SamplingDefaults`, `DataOptions`, `AugmentRecipe`) can give defaults at import
time. The defaults that mirror torch-bound dataclasses (`TrainConfig`, `DecoderConfig`,
`PriorConfig`, `ClipConfig`, `UpsamplerConfig`, `GeneratorBudget`) are literals, pinned to those
dataclasses by tests/cli/test_cli_layout.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from dalle2_md.training.options import DEFAULT_COLORMAP, DataOptions

# argparse-style list flags (`--user_ids 0 1 2`) are joined into one value before click parses
VARIADIC_FLAGS = ("--user_ids", "--user-ids", "--dim_mults", "--dim-mults", "--clip_widths", "--clip-widths",
                  "--upsampler_dim_mults", "--upsampler-dim-mults")

# `--user_ids` (the seed's flag) takes original labels; the commands call them `user_labels`
USER_LABELS_HELP = ("Users by original label as on disk (ID_5, user_5 or 5; not the 0..N-1 index), "
                    "e.g. --user_ids 0 1 2 [default: all users].")

COLORMAPS = (DEFAULT_COLORMAP, "none")


def field_default(cls, name: str):
    """The default of dataclass `cls`'s field `name`, so an option does not restate it.

    Args:
        cls: a dataclass (torch-free: this runs when --help is built).
        name: one of its fields.
    """
    f = cls.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{cls.__name__}.{name} has no default")


SPLIT_SEED = field_default(DataOptions, "split_seed")


def _underscored(spelling: str) -> str:
    return spelling[:2] + spelling[2:].replace("-", "_")


class UnderscoreOption(click.Option):
    """An option whose --help line and error messages show only its underscore spellings
    (`--data_root`); a hyphen spelling declared beside one (`--data-root`) still parses.
    `hidden_secondary`: more off-spellings of an on/off flag (`--no-progress`)."""

    def __init__(self, *args, hidden_secondary=(), **kw):
        super().__init__(*args, **kw)
        self.secondary_opts = [*self.secondary_opts, *hidden_secondary]

    def _shown(self, spellings):
        declared = set(self.opts) | set(self.secondary_opts)
        unique = list(dict.fromkeys(spellings))
        return [s for s in unique if _underscored(s) == s or _underscored(s) not in declared] or unique

    def get_help_record(self, ctx):
        opts, secondary = self.opts, self.secondary_opts
        self.opts, self.secondary_opts = self._shown(opts), self._shown(secondary)
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts = opts, secondary

    def get_error_hint(self, ctx):
        return " / ".join(f"'{s}'" for s in self._shown(self.opts))


def opt(name: str, *, dest: str | None = None, **kw):
    """The option `--name` (underscores, the seed's spelling; `--name-with-hyphens` also
    parses), its default shown in --help.

    Args:
        name: the flag without dashes, e.g. "data_root".
        dest: the command's parameter, when the flag's name says less (`--user_ids` ->
            `user_labels`); default `name`.
        kw: click.option's keywords (type, default, help, ...).
    """
    dashed = "--" + name.replace("_", "-")
    spellings = [f"--{name}"] + ([dashed] if dashed != f"--{name}" else [])
    kw.setdefault("show_default", True)
    return click.option(*spellings, dest or name, cls=UnderscoreOption, **kw)


def flag_pair(name: str, *, default: bool, help: str):
    """The on/off flag `--name/--no_name` (`--no-name` and `--name-with-hyphens` also parse)."""
    dashed = name.replace("_", "-")
    if dashed != name:
        decls, more = [f"--{name}/--no_{name}", f"--{dashed}/--no-{dashed}"], ()
    else:  # --progress: only its off-spelling has a hyphen form
        decls, more = [f"--{name}/--no_{name}"], (f"--no-{dashed}",)
    return click.option(*decls, name, cls=UnderscoreOption, hidden_secondary=more, default=default, show_default=True,
                        help=help)


def progress_option(help: str = "Show progress bars."):
    return flag_pair("progress", default=True, help=help)


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


def all_of(*decorators):
    """One decorator applying `decorators` in order (options listed top to bottom in --help)."""

    def wrap(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


def int_tuple(ctx, param, value):
    """click callback: '1 2 4 8' or '1,2,4,8' -> (1, 2, 4, 8)."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in str(value).replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected integers such as '1 2 4 8' or 1,2,4,8, got {value!r}") from None


def float_tuple(ctx, param, value):
    """click callback: '0.3 0.5' or '0.3,0.5' -> (0.3, 0.5); empty -> ()."""
    if value is None:
        return ()
    try:
        return tuple(float(v) for v in str(value).replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected numbers such as 0.3,0.5,0.7, got {value!r}") from None


def str_list(ctx, param, value):
    """click callback: '0 1 2' or '0,1,2' -> ['0', '1', '2']."""
    if value is None:
        return None
    return [v for v in str(value).replace(",", " ").split() if v]


def tuple_text(values) -> str:
    """(32, 64, 128) -> '32,64,128', a tuple default as an option's text."""
    return ",".join(str(v) for v in values)


# ------------------------------------------------------------------------------------------
# the train-* commands' shared options

IMAGE_SIZE_HELP = ("Side of the square images the models see (data is resized) [default: as recorded in the "
                   "embedding model the run builds on (--clip_path, or this run's on --resume), else 64].")


def data_options_for(image_size_help: str = IMAGE_SIZE_HELP):
    """The data options of a train-* command, with its own words for what --image_size is."""
    return all_of(
        opt("data_root", required=True, type=click.Path(path_type=str),
            help="Folder of user folders (user_0/, ID_1/, ...) or images/ + metadata.json."),
        opt("num_users", type=int, default=None,
            help="Expected number of users, checked against the data (default: as found)."),
        opt("image_size", type=int, default=None, help=image_size_help),
        opt("colormap", type=click.Choice(COLORMAPS), default=None,
            help="Invert this colormap into one channel; 'none' trains on RGB "
                 "[default: as for --image_size, else jet]."),
        opt("flat_structure", is_flag=True, default=False, help="Require the flat layout (images/ + metadata.json)."),
        opt("split_seed", type=int, default=SPLIT_SEED, help="Seed of the per-user train/val/test split (80/10/10)."),
        opt("cache_dir", type=click.Path(path_type=str), default=None,
            help="Cache of decoded images and embeddings [default: <output_dir>/.cache]."),
    )


data_options = data_options_for()


def train_options(*, output_dir: str | None, experiment_name: str | None, batch_size: int, folder_note: str = ""):
    """The run and `TrainConfig` options of a train-* command (its own folder names and batch;
    `folder_note` ends the two folder options' help when the command fills them itself). Defaults
    mirror `TrainConfig`'s except --epochs, --checkpoint_every and --sample_every, the command
    line's own."""
    return all_of(
        opt("output_dir", type=click.Path(path_type=str), default=output_dir,
            help="Parent folder of the run folder." + folder_note),
        opt("experiment_name", default=experiment_name,
            help="Run folder name: outputs go to <output_dir>/<experiment_name>/." + folder_note),
        opt("batch_size", type=int, default=batch_size, help="Samples per process and micro-step."),
        opt("epochs", type=int, default=100, help="Passes over the training split."),
        opt("max_steps", type=int, default=None, help="Optimizer steps; overrides --epochs."),
        opt("lr", type=float, default=3e-4, help="Peak learning rate (AdamW)."),
        opt("warmup_steps", type=int, default=0, help="Linear learning-rate warmup steps."),
        opt("max_grad_norm", type=float, default=1.0, help="Gradient clipping norm; 0 turns clipping off."),
        opt("ema_decay", type=float, default=0.995, help="EMA decay of the weights used for sampling and saved."),
        opt("mixed_precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", help="Mixed precision (accelerate)."),
        opt("compile", is_flag=True, default=False,
            help="torch.compile the training step (needs a C++ compiler on CPU; the first step compiles for minutes, "
                 "later steps run faster; a failed compilation trains on without it)."),
        opt("gradient_accumulation_steps", type=int, default=1, help="Micro-steps per optimizer step."),
        opt("seed", type=int, default=0, help="Seeds weights, data order and noise."),
        opt("log_every", type=int, default=10, help="TensorBoard scalars every N steps."),
        opt("checkpoint_every", type=int, default=1000, help="Checkpoint every N steps (0: only at the end)."),
        opt("sample_every", type=int, default=1000, help="Sample grid every N steps (0: only at the end)."),
        opt("keep_last", type=int, default=3, help="Checkpoints kept per stage (0: all)."),
        opt("num_workers", type=int, default=0, help="DataLoader workers (data is held in memory; 0 is usually best)."),
        opt("resume", default=None, help="Continue training: 'latest' or a checkpoint path."),
        opt("overwrite", is_flag=True, default=False, help="Replace existing *_final.pt files of this run."),
        progress_option(),
    )


# the embedding model's sizes; defaults mirror ClipConfig (dim_latent, encoder_widths, dim_image)
clip_options = all_of(
    opt("clip_dim", type=int, default=64, help="Embedding size of the embedding model (the prior's width)."),
    opt("clip_widths", default=tuple_text((32, 64, 128, 128)), callback=int_tuple,
        help="Channels of the embedding model's conv stages, e.g. 32 64 128 128."),
    opt("clip_dim_image", type=int, default=128, help="Width of the embedding model's image tokens."),
)


def clip_sizes(kw: dict) -> dict:
    """Pop the `clip_options` values as `ClipConfig` keywords."""
    widths, dim, dim_image = kw.pop("clip_widths"), kw.pop("clip_dim"), kw.pop("clip_dim_image")
    return dict(dim_latent=dim, dim_text=dim, dim_image=dim_image, encoder_widths=widths)


# the upsampler's sizes (train-decoder --upsample_to, train-upsampler); defaults mirror UpsamplerConfig
upsampler_options = all_of(
    opt("upsampler_dim", type=int, default=32, help="Upsampler U-Net base width."),
    opt("upsampler_dim_mults", default=tuple_text((1, 2, 4, 8)), callback=int_tuple,
        help="Upsampler U-Net width multipliers; self-attention only at the last (lowest) resolution."),
    opt("upsampler_num_resnet_blocks", type=int, default=1, help="Upsampler residual blocks per U-Net stage."),
    opt("upsampler_timesteps", type=int, default=1000, help="Upsampler diffusion timesteps in training."),
    opt("upsampler_sample_timesteps", type=int, default=8, help="Upsampler network evaluations when sampling."),
    opt("crop_size", type=int, default=None,
        help="Side of the random crops the upsampler trains on [default: the base decoder's image size]."),
    flag_pair("lowres_noise", default=True,
              help="Noise the upsampler's low-res input at a random level in training and at --lowres_noise_level "
                   "when sampling (Imagen's noise conditioning)."),
    opt("lowres_noise_level", type=float, default=0.2, help="That sampling noise level, a fraction of its schedule."),
    flag_pair("blur", default=True, help="Blur the upsampler's low-res input half of the time in training."),
    flag_pair("upsampler_residual", default=True,
              help="Diffuse only the detail bicubic enlargement misses (image minus bicubic), with v-prediction; "
                   "--no_upsampler_residual diffuses the image itself (eps)."),
)

_UPSAMPLER_FIELDS = {"upsampler_dim": "dim", "upsampler_dim_mults": "dim_mults",
                     "upsampler_num_resnet_blocks": "num_resnet_blocks", "upsampler_timesteps": "timesteps",
                     "upsampler_sample_timesteps": "sample_timesteps", "crop_size": "crop_size",
                     "lowres_noise": "lowres_noise", "lowres_noise_level": "lowres_noise_level", "blur": "blur"}


def upsampler_sizes(kw: dict) -> dict:
    """Pop the `upsampler_options` values as `UpsamplerConfig` keywords."""
    sizes = {field: kw.pop(option) for option, field in _UPSAMPLER_FIELDS.items()}
    residual = kw.pop("upsampler_residual")
    return {**sizes, "residual": residual, "prediction": "v" if residual else "eps"}


def pop_run_args(kw: dict) -> dict:
    """Pop the `data_options` and `train_options` values as the keywords every
    `training.stages.run_train_*` takes: data, run_dir, config, resume, overwrite, progress."""
    from dalle2_md.training.loop import TrainConfig

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
