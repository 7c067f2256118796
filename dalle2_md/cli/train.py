"""Training commands: `train-clip` (the embedding model alone), `train-decoder` (stage 1:
embedding model, optional VQGAN, decoder, optional upsampler), `train-upsampler` (the upsampler
for an existing decoder) and `train-prior` (stage 2). Each turns its options into sizes +
`DataOptions` + `TrainConfig` and calls `training.stages.run_train_*`.

Size defaults mirror `DecoderConfig` / `PriorConfig` (pinned by tests/cli/test_cli_layout.py), except
--sample_timesteps (`defaults.DEFAULTS`), --user_conditioning (on here, off in `DecoderConfig`)
and the VQGAN's, which are the CPU sizes of `presets.cpu_vqgan_sizes`.
"""

from __future__ import annotations

import click

from dalle2_md.cli.options import (clip_options, clip_sizes, data_options, data_options_for, flag_pair, int_tuple, opt,
                                   pop_run_args, train_options, tuple_text, upsampler_options, upsampler_sizes)
from dalle2_md.defaults import DECODER_PREDICTIONS, LOSS_WEIGHTINGS, SAMPLE_TIMESTEPS
from dalle2_md.utils import say


@click.command("train-clip")
@data_options
@train_options(output_dir="./outputs/clip", experiment_name="clip_v1", batch_size=32)
@clip_options
def train_clip_cmd(**kw):
    """Train the embedding model (x-clip: spectrogram <-> user token) alone; writes
    <output_dir>/<experiment_name>/clip_final.pt. train-decoder does this itself unless given --clip_path."""
    from dalle2_md.training.stages import run_train_clip

    sizes = clip_sizes(kw)
    done = run_train_clip(sizes=sizes, **pop_run_args(kw))
    say(f"embedding model: {done.final}")


DECODER_SIZES = ("dim", "dim_mults", "num_resnet_blocks", "attn_heads", "attn_dim_head", "timesteps", "sample_timesteps",
                 "cond_drop_prob", "backbone", "dit_depth", "dit_patch_size", "user_conditioning", "prediction",
                 "zero_terminal_snr", "loss_weighting", "min_snr_gamma", "p2_loss_weight_gamma")


@click.command("train-decoder")
@data_options
@train_options(output_dir="./outputs/decoder", experiment_name="decoder_v1", batch_size=16)
@opt("dim", type=int, default=128, help="Base U-Net width.")
@opt("dim_mults", default=tuple_text((1, 2, 4, 8)), callback=int_tuple, help="U-Net width multipliers, e.g. 1 2 4 8.")
@opt("num_resnet_blocks", type=int, default=2, help="Residual blocks per U-Net stage.")
@opt("attn_heads", type=int, default=16, help="U-Net attention heads.")
@opt("attn_dim_head", type=int, default=32, help="U-Net attention head width.")
@opt("timesteps", type=int, default=1000, help="Diffusion timesteps in training.")
@opt("sample_timesteps", type=int, default=SAMPLE_TIMESTEPS,
     help="Network evaluations when sampling (training grids and default for generate).")
@opt("cond_drop_prob", type=float, default=0.1, help="Embedding dropout, enables classifier-free guidance.")
@flag_pair("user_conditioning", default=True,
           help="Also condition the decoder on a learned user-ID token beside the image embedding, as DALL-E 2's "
                "decoder keeps its caption (off: the image embedding alone, as before).")
@opt("backbone", type=click.Choice(["unet", "dit"]), default="unet",
     help="Denoising network: the U-Net, or a DiT (patch transformer; width --dim, heads --attn_heads), meant for latents.")
@opt("dit_depth", type=int, default=4, help="DiT transformer blocks (with --backbone dit).")
@opt("dit_patch_size", type=int, default=2, help="DiT patch side (with --backbone dit).")
@opt("prediction", type=click.Choice(DECODER_PREDICTIONS), default=None,
     help="What the decoder predicts: the noise (eps), v, or edm (the EDM formulation: preconditioning, log-normal "
          "noise levels, its loss weights; Karras et al. 2022) [default: v].")
@flag_pair("zero_terminal_snr", default=None,
           help="Rescale the noise schedule to zero terminal SNR and sample from its last step (Lin et al. 2024); "
                "needs --prediction v [default: on with v, off otherwise].")
@opt("loss_weighting", type=click.Choice(LOSS_WEIGHTINGS), default=None,
     help="Loss weights over noise levels: P2 (--p2_loss_weight_gamma) or min-SNR (--min_snr_gamma, Hang et al. 2023) "
          "[default: min_snr with v, p2 otherwise].")
@opt("min_snr_gamma", type=float, default=5.0, help="SNR cap of --loss_weighting min_snr.")
@opt("p2_loss_weight_gamma", type=float, default=1.0, help="P2 loss weighting exponent (0 = uniform).")
@opt("use_vqgan", is_flag=True, default=False, help="Diffuse over a VQGAN latent (trains the VQGAN first unless --vqgan_path).")
@opt("vqgan_path", type=click.Path(path_type=str), default=None, help="A trained vqgan_final.pt to use with --use_vqgan.")
@opt("vqgan_factor", type=int, default=4,
     help="VQGAN downsampling factor f (4 or 8): latents are image_size / f on a side (256 px -> 64 or 32).")
@opt("vqgan_dim", type=int, default=16, help="VQGAN width (every stage; the latent's channels).")
@opt("vqgan_layers", type=int, default=None, help="VQGAN downsamplings, instead of --vqgan_factor (f = 2**layers).")
@opt("vqgan_codebook_size", type=int, default=256, help="VQGAN codebook entries.")
@opt("vqgan_epochs", type=int, default=20, help="VQGAN training epochs (--max_steps applies to it too).")
@opt("vqgan_max_steps", type=int, default=None, help="VQGAN training steps; overrides the other lengths.")
@opt("vqgan_lr", type=float, default=1e-3,
     help="VQGAN learning rate (at 3e-4, 400 steps kept fewer limb arcs: benchmarks/bench_vqgan.py).")
@opt("vqgan_quantize", is_flag=True, default=False,
     help="Decode through the VQGAN's codebook. Off by default: a codebook trained on a CPU erases the thin "
          "limb arcs, so the decoder reads the encoder's continuous latent.")
@opt("clip_path", type=click.Path(path_type=str), default=None,
     help="Use this trained embedding model instead of training one into <run>/clip_final.pt.")
@opt("clip_epochs", type=int, default=20, help="Embedding-model epochs (--max_steps applies to it too).")
@opt("clip_max_steps", type=int, default=None, help="Embedding-model steps; overrides the other lengths.")
@clip_options
@opt("upsample_to", type=int, default=None,
     help="Then train an upsampler from --image_size to this size (e.g. 256, the data's own) on random crops of the "
          "full-size images; generation then writes images of this size.")
@opt("upsampler_max_steps", type=int, default=None, help="Upsampler training steps [default: as long as the decoder].")
@upsampler_options
def train_decoder_cmd(**kw):
    """Stage 1: train the embedding model (unless --clip_path), the VQGAN (with --use_vqgan), the
    decoder and (with --upsample_to) the upsampler; writes clip_final.pt, decoder_final.pt [and
    upsampler_final.pt] in <output_dir>/<experiment_name>/."""
    from dalle2_md.models.schedules import formulation_fields
    from dalle2_md.training.presets import cpu_vqgan_sizes
    from dalle2_md.training.stages import run_train_decoder

    clip = clip_sizes(kw)
    sizes = {k: kw.pop(k) for k in DECODER_SIZES}
    sizes.update(formulation_fields(sizes["prediction"], sizes["zero_terminal_snr"], sizes["loss_weighting"]))
    factor, layers, dim = kw.pop("vqgan_factor"), kw.pop("vqgan_layers"), kw.pop("vqgan_dim")
    vqgan_sizes = cpu_vqgan_sizes(2**layers if layers is not None else factor, dim=dim,
                                  codebook_size=kw.pop("vqgan_codebook_size"), resnet_groups=8 if dim % 8 == 0 else 1,
                                  quantize=kw.pop("vqgan_quantize"))
    paths = run_train_decoder(
        sizes=sizes, clip_path=kw.pop("clip_path"), clip_sizes=clip, clip_max_steps=kw.pop("clip_max_steps"),
        clip_epochs=kw.pop("clip_epochs"), use_vqgan=kw.pop("use_vqgan"), vqgan_path=kw.pop("vqgan_path"),
        vqgan_sizes=vqgan_sizes, vqgan_max_steps=kw.pop("vqgan_max_steps"), vqgan_epochs=kw.pop("vqgan_epochs"),
        vqgan_lr=kw.pop("vqgan_lr"), upsample_to=kw.pop("upsample_to"), upsampler_sizes=upsampler_sizes(kw),
        upsampler_max_steps=kw.pop("upsampler_max_steps"), **pop_run_args(kw),
    )
    for name, path in paths.items():
        say(f"{name}: {path}")


@click.command("train-upsampler")
@data_options_for("The same as --upsample_to: the upsampler reads the data at the size it makes.")
@train_options(output_dir=None, experiment_name=None, batch_size=16,
               folder_note=" [default: that of --decoder_path's run folder, else ./outputs/upsampler/upsampler_v1]")
@opt("decoder_path", type=click.Path(path_type=str), default=None,
     help="The base decoder (decoder_final.pt): the upsampler starts from its image size and colormap, and is "
          "written into its run folder, where generation finds it.")
@opt("lowres_size", type=int, default=None, help="The base image size, instead of --decoder_path.")
@opt("upsample_to", type=int, default=None, help="Side of the images it makes [default: the data's own size on disk].")
@upsampler_options
def train_upsampler_cmd(**kw):
    """Train an upsampler (a diffusion U-Net conditioned on the low-res image alone) from the base
    decoder's size to the data's own; writes upsampler_final.pt, which generation applies after
    the decoder beside it."""
    from pathlib import Path

    from dalle2_md.training.stages import run_train_upsampler

    decoder_path = kw.pop("decoder_path")
    if kw["output_dir"] is None and kw["experiment_name"] is None and decoder_path is not None:
        kw["output_dir"], kw["experiment_name"] = str(Path(decoder_path).parent.parent), Path(decoder_path).parent.name
    kw["output_dir"] = kw["output_dir"] or "./outputs/upsampler"
    kw["experiment_name"] = kw["experiment_name"] or "upsampler_v1"
    done = run_train_upsampler(decoder_path=decoder_path, lowres_size=kw.pop("lowres_size"),
                               upsample_to=kw.pop("upsample_to"), sizes=upsampler_sizes(kw), **pop_run_args(kw))
    say(f"upsampler: {done['upsampler']}")


@click.command("train-prior")
@data_options
@train_options(output_dir="./outputs/prior", experiment_name="prior_v1", batch_size=32)
@opt("clip_path", type=click.Path(path_type=str), default=None,
     help="The embedding model the decoder was trained with (<decoder run>/clip_final.pt) "
          "[default: <output_dir>/<experiment_name>/clip_final.pt if present].")
@opt("dim", type=int, default=512, help="Width of the prior's transformer; embeddings of another size are projected in and out.")
@opt("depth", type=int, default=6, help="Transformer depth.")
@opt("heads", type=int, default=8, help="Attention heads.")
@opt("dim_head", type=int, default=64, help="Attention head width.")
@opt("timesteps", type=int, default=1000, help="Diffusion timesteps in training.")
@opt("sample_timesteps", type=int, default=SAMPLE_TIMESTEPS, help="Network evaluations when sampling (default for generate).")
@opt("cond_drop_prob", type=float, default=0.2, help="User-ID dropout for classifier-free guidance.")
def train_prior_cmd(**kw):
    """Stage 2: train the user-conditioned diffusion prior on the embedding model's image
    embeddings; writes <output_dir>/<experiment_name>/prior_final.pt."""
    from dalle2_md.training.stages import run_train_prior

    sizes = {k: kw.pop(k) for k in ("dim", "depth", "heads", "dim_head", "timesteps", "sample_timesteps", "cond_drop_prob")}
    paths = run_train_prior(sizes=sizes, clip_path=kw.pop("clip_path"), **pop_run_args(kw))
    say(f"prior: {paths['prior']}")


COMMANDS = (train_clip_cmd, train_decoder_cmd, train_upsampler_cmd, train_prior_cmd)
