"""Training stages: options -> data set -> `training.fit` -> bundles.

Owns the bundle layer over the in-memory core (`training/fit.py`): the per-stage `train_*_stage`
functions that wrap one core part with overwrite checks (`check_can_write`), progress samples
and a bundle (`final_path`, `save_two_stage`); the embedding cache of a data set
(`embed_dataset`); and the `run_train_*` functions behind the training commands. The data
options live in `options.py`.

A training run lives in one folder, `<output_dir>/<experiment_name>/`:

    label_map.json  split.json                      the users and the per-user split trained on
    clip/  vqgan/  decoder/  upsampler/  prior/      per stage: checkpoints/ tensorboard/ samples/
    clip_final.pt  vqgan_final.pt  decoder_final.pt  upsampler_final.pt  prior_final.pt
                                                    the bundles (EMA weights)

Every stage trains on the train split only. The embedding model is trained first (by the decoder
run, or `train-clip`); the prior and decoder train on its image embeddings, computed once and
cached under the cache folder, and both bundles record its weight fingerprint so generation can
refuse a pair trained on different embedding models. The upsampler trains on the same train split
read at the output size; it sees images only, so it needs no embedding model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from dalle2_md.training.fit import TwoStageModels, clip_config_for, fit_clip, fit_decoder, fit_prior, fit_vqgan, prior_config_for, user_table_size
from dalle2_md.training.fit import fit_upsampler, unwrap_decoder
from dalle2_md.data.display import as_image_tensor, colourise
from dalle2_md.training.options import (DEFAULT_COLORMAP, DEFAULT_IMAGE_SIZE, DataOptions, display_colormap,  # noqa: F401
                      load_train_data, recorded_data_settings, skipped_summary, with_defaults, with_settings_from)
from dalle2_md.models.chain import decoder_users
from dalle2_md.training.loop import TrainConfig, TrainResult
from dalle2_md.utils import UserError, exists, say

STAGES = ("clip", "vqgan", "decoder", "upsampler", "prior")
log = say  # the old name of the one message channel (utils.say); kept for callers outside the package


def final_path(run_dir: str | Path, stage: str) -> Path:
    """`<run_dir>/<stage>_final.pt`, the bundle a stage leaves behind."""
    return Path(run_dir) / f"{stage}_final.pt"


def _dataset_key(ds) -> str:
    from dalle2_md.models.embedding import dataset_key_for

    return dataset_key_for(ds.files, ds.image_size, ds.colormap)


def embed_dataset(clip, ds, cache_dir: str | Path) -> torch.Tensor:
    """(N, dim_latent) image embeddings of a data set: computed once per (data, clip) pair and
    read from `cache_dir` afterwards."""
    from dalle2_md.models.embedding import cached_image_embeds

    return cached_image_embeds(clip, ds.images, cache_dir=cache_dir, dataset_key=_dataset_key(ds))


# --------------------------------------------------------------------------------------------
# shared stage plumbing


@dataclass
class StageResult:
    """What a stage left behind: its bundle, its EMA model, and the training record (None when
    an existing bundle was reused)."""

    final: Path
    model: nn.Module
    train: TrainResult | None = None


def check_can_write(path: Path, *, overwrite: bool, resume: str | None) -> None:
    """Refuse to replace a finished bundle `<run>/<stage>_final.pt`, or the checkpoints of an
    interrupted run in `<run>/<stage>/checkpoints/`, unless asked to (`--overwrite`, which then
    deletes that stage's old checkpoints so two runs never mix) or continuing (`--resume`)."""
    from dalle2_md.training.checkpoints import _list_checkpoints

    path = Path(path)
    if resume is not None:
        return
    if path.exists() and not overwrite:
        raise UserError(
            f"{path} already exists; pass --overwrite to replace it, --resume latest to continue its "
            "training, or pick another --output_dir / --experiment_name."
        )
    stage_dir = path.parent / path.name.removesuffix("_final.pt")
    old = _list_checkpoints(stage_dir)
    if old and not overwrite:
        raise UserError(
            f"{stage_dir / 'checkpoints'} holds the checkpoints of an earlier run (newest: {old[-1][1].name}); "
            "pass --resume latest to continue it, --overwrite to start again (deletes them), or pick another "
            "--output_dir / --experiment_name."
        )
    if old and overwrite:
        for _, ckpt in old:
            ckpt.unlink(missing_ok=True)
        (stage_dir / "checkpoints" / "latest.json").unlink(missing_ok=True)


def sub_schedule(config: TrainConfig, *, max_steps: int | None, epochs: int | None) -> TrainConfig:
    """Length of a helper stage (embedding, VQGAN) trained inside another stage's run: its own
    step count if given, else the run's `--max_steps` if given, else its own epoch count."""
    if exists(max_steps):
        return replace(config, max_steps=max_steps, epochs=None)
    if exists(config.max_steps) or not exists(epochs):
        return config
    return replace(config, max_steps=None, epochs=epochs)


def _sub_resume(resume: str | None) -> str | None:
    # a checkpoint path names the main stage's file; helper stages continue from their own newest
    return None if resume is None else "latest"


def _meta(ds, clip=None) -> dict:
    meta = {"colormap": ds.colormap or "none", "image_size": ds.image_size, "layout": ds.layout,
            "display_colormap": display_colormap(ds)}
    if exists(clip):
        meta["clip_fingerprint"] = clip.fingerprint
    return meta


def _is_main() -> bool:
    # under `accelerate launch` every process trains; only the first one writes the bundles
    from accelerate import PartialState

    return PartialState().is_main_process


def save_two_stage(run_dir: str | Path, models: TwoStageModels, ds) -> dict[str, Path]:
    """Write the bundles of `train_two_stage`'s models as the training commands would
    (clip_final.pt, [vqgan_final.pt,] decoder_final.pt, prior_final.pt in `run_dir`); returns
    their paths."""
    from dalle2_md.models.vqgan import save_vqgan

    stages = ("clip", "vqgan", "decoder", "prior") if exists(models.vqgan) else ("clip", "decoder", "prior")
    paths = {stage: final_path(run_dir, stage) for stage in stages}
    if _is_main():
        models.clip.save(paths["clip"], label_map=ds.label_map.to_dict(), meta=_meta(ds))
        if exists(models.vqgan):
            save_vqgan(paths["vqgan"], models.vqgan, models.decoder.config.vqgan, meta=_meta(ds))
        models.decoder.save(paths["decoder"], meta=_meta(ds, models.clip))
        models.prior.save(paths["prior"], label_map=ds.label_map.to_dict(), meta=_meta(ds, models.clip))
    return paths


# --------------------------------------------------------------------------------------------
# stages


def train_clip_stage(run_dir, ds, config: TrainConfig, *, sizes: dict | None = None, resume: str | None = None,
                     overwrite: bool = False, progress: bool = True) -> StageResult:
    """Train the embedding model (x-clip over spectrograms and user tokens); writes clip_final.pt.

    Args:
        run_dir: the run folder.
        ds: training data set (items: image, user index).
        config: training settings.
        sizes: `ClipConfig` fields other than num_users / image_size / channels.
        resume: None, "latest" or a checkpoint path.
        overwrite: replace an existing clip_final.pt.
        progress: show a progress bar.
    """
    run_dir, final = Path(run_dir), final_path(run_dir, "clip")
    check_can_write(final, overwrite=overwrite, resume=resume)
    if len(ds) < 2:
        raise UserError(f"the embedding model needs at least 2 training images; {ds.root} has {len(ds)}.")
    clip_config = clip_config_for(num_users=len(ds.label_map), channels=ds.channels, image_size=ds.image_size,
                                  sizes=sizes)
    clip, result = fit_clip(ds, clip_config, config, run_dir, resume=resume, progress=progress)
    if _is_main():
        clip.save(final, label_map=ds.label_map.to_dict(), meta=_meta(ds))
    say(f"[clip] wrote {final} (fingerprint {clip.fingerprint})")
    return StageResult(final=final, model=clip, train=result)


def train_vqgan_stage(run_dir, ds, config: TrainConfig, *, sizes: dict | None = None, resume: str | None = None,
                      overwrite: bool = False, progress: bool = True) -> StageResult:
    """Train the VQGAN autoencoder under the latent decoder; writes vqgan_final.pt.

    Args: as for `train_clip_stage`; `sizes` holds `VQGanConfig` fields.
    """
    from dalle2_md.models.vqgan import VQGanConfig, reconstruction_quality, save_vqgan
    from dalle2_md.training.presets import cpu_vqgan_sizes

    run_dir, final = Path(run_dir), final_path(run_dir, "vqgan")
    check_can_write(final, overwrite=overwrite, resume=resume)
    vq_config = VQGanConfig(image_size=ds.image_size, channels=ds.channels, **(sizes or cpu_vqgan_sizes()))
    vqgan, result = fit_vqgan(ds.images, vq_config, config, run_dir, resume=resume, progress=progress)
    # its own quality, on (up to 256 of) the images it trained on; benchmarks/bench_vqgan.py
    # measures held-out images and whether identity survives
    quality = reconstruction_quality(vqgan, ds.images[:256])
    if _is_main():
        save_vqgan(final, vqgan, vq_config, meta={**_meta(ds), "steps": result.step, "quality": quality})
    say(f"[vqgan] f={vq_config.factor}: {vq_config.latent_channels}x{vq_config.latent_size}x{vq_config.latent_size} "
        f"latents; reconstructions PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.3f}; wrote {final}")
    return StageResult(final=final, model=vqgan, train=result)


def _first_per_user(user_ids: torch.Tensor, limit: int = 8) -> list[int]:
    seen: dict[int, int] = {}
    for i, u in enumerate(user_ids.tolist()):
        seen.setdefault(u, i)
    return [seen[u] for u in sorted(seen)][:limit]


def _decoder_sample_fn(images, embeds, user_ids, colormap, steps):
    pick = _first_per_user(user_ids)
    real = (images[pick] + 1) / 2

    def sample_fn(ema_model, step):
        decoder = unwrap_decoder(ema_model)
        device = next(decoder.parameters()).device
        users = decoder_users(decoder, user_ids[pick], device)
        fake = decoder.sample(embeds[pick].to(device), user_indices=users, timesteps=steps, seed=0).cpu()
        # one picture: the real image of each user on top, its decoded embedding below
        rows = [torch.cat(list(as_image_tensor(colourise(x, colormap))), dim=-1) for x in (real, fake)]
        return torch.cat(rows, dim=-2).unsqueeze(0)

    return sample_fn


def train_decoder_stage(run_dir, ds, clip, config: TrainConfig, *, sizes: dict | None = None,
                        vqgan_path: str | Path | None = None, cache_dir: str | Path, resume: str | None = None,
                        overwrite: bool = False, progress: bool = True) -> StageResult:
    """Train the embedding-conditioned decoder on the embedding model's image embeddings
    (pixels, or cached VQGAN latents when `vqgan_path` is given); writes decoder_final.pt.

    Args:
        run_dir: the run folder.
        ds: training data set.
        clip: the trained embedding model.
        config: training settings.
        sizes: `DecoderConfig` fields (dim, dim_mults, timesteps, ...).
        vqgan_path: a trained "vqgan" bundle: diffuse over its latents.
        cache_dir: folder of the embedding cache.
        resume, overwrite, progress: as for `train_clip_stage`.
    """
    from dalle2_md.models.decoder import DecoderConfig

    run_dir, final = Path(run_dir), final_path(run_dir, "decoder")
    check_can_write(final, overwrite=overwrite, resume=resume)
    embeds = embed_dataset(clip, ds, cache_dir)
    images, user_ids = ds.tensors()
    dec_config = DecoderConfig(image_size=ds.image_size, channels=ds.channels, image_embed_dim=clip.config.dim_latent,
                               use_vqgan=exists(vqgan_path), vqgan_path=str(vqgan_path) if exists(vqgan_path) else None,
                               **user_table_size(sizes or {}, len(ds.label_map)))
    steps = min(dec_config.sample_timesteps, 50)
    sample_fn = _decoder_sample_fn(images, embeds, user_ids, display_colormap(ds), steps)
    ema, result = fit_decoder(images, embeds, dec_config, config, run_dir, sample_fn=sample_fn, resume=resume,
                              progress=progress, user_indices=user_ids)
    if _is_main():
        ema.save(final, meta=_meta(ds, clip))
    say(f"[decoder] wrote {final}")
    return StageResult(final=final, model=ema, train=result)


def upsampler_config_for(*, lowres_size: int, output_size: int, channels: int, sizes: dict | None):
    """The `UpsamplerConfig` from `lowres_size` to `output_size` px: `sizes` over the data's channels."""
    from dalle2_md.models.upsampler import UpsamplerConfig

    return UpsamplerConfig(**{**(sizes or {}), "lowres_size": lowres_size, "output_size": output_size,
                              "channels": channels})


def _upsampler_sample_fn(images, user_ids, colormap, lowres_size):
    import torch.nn.functional as F

    from dalle2_md.models.upsampler import shrink

    pick = _first_per_user(user_ids)
    real = (images[pick] + 1) / 2
    lowres = shrink(real, lowres_size)

    def sample_fn(ema_model, step):
        fake = ema_model.sample(lowres.to(next(ema_model.parameters()).device), seed=0).cpu()
        shown = F.interpolate(lowres, size=real.shape[-1], mode="nearest")
        # one picture: each user's low-res input on top, its upsampled version, then the real image
        rows = [torch.cat(list(as_image_tensor(colourise(x, colormap))), dim=-1) for x in (shown, fake, real)]
        return torch.cat(rows, dim=-2).unsqueeze(0)

    return sample_fn


def train_upsampler_stage(run_dir, ds, config: TrainConfig, *, lowres_size: int, sizes: dict | None = None,
                          resume: str | None = None, overwrite: bool = False, progress: bool = True) -> StageResult:
    """Train the upsampler from `lowres_size` px to the data set's image size on its full-size
    images (random crops, low-res inputs made from them); writes upsampler_final.pt.

    Args:
        run_dir: the run folder.
        ds: training data set, read at the output size.
        config: training settings.
        lowres_size: side of the base decoder's images.
        sizes: `UpsamplerConfig` fields (dim, dim_mults, crop_size, ...).
        resume, overwrite, progress: as for `train_clip_stage`.
    """
    run_dir, final = Path(run_dir), final_path(run_dir, "upsampler")
    check_can_write(final, overwrite=overwrite, resume=resume)
    up_config = upsampler_config_for(lowres_size=lowres_size, output_size=ds.image_size, channels=ds.channels,
                                     sizes=sizes)
    images, user_ids = ds.tensors()
    sample_fn = _upsampler_sample_fn(images, user_ids, display_colormap(ds), lowres_size)
    ema, result = fit_upsampler(images, up_config, config, run_dir, sample_fn=sample_fn, resume=resume,
                                progress=progress)
    if _is_main():
        ema.save(final, meta=_meta(ds))
    say(f"[upsampler] {lowres_size} -> {ds.image_size} px; wrote {final}")
    return StageResult(final=final, model=ema, train=result)


def train_prior_stage(run_dir, ds, clip, config: TrainConfig, *, sizes: dict | None = None,
                      cache_dir: str | Path, resume: str | None = None, overwrite: bool = False,
                      progress: bool = True) -> StageResult:
    """Train the user-conditioned diffusion prior on the embedding model's image embeddings;
    writes prior_final.pt (with the label map).

    Args: as for `train_decoder_stage`; `sizes` holds `PriorConfig` fields (dim, depth, heads,
        ...). Without `dim` the transformer is as wide as `clip`'s embedding; with another `dim`
        it projects the embeddings in and out.
    """
    run_dir, final = Path(run_dir), final_path(run_dir, "prior")
    check_can_write(final, overwrite=overwrite, resume=resume)
    embeds = embed_dataset(clip, ds, cache_dir)
    prior_config = prior_config_for(num_users=len(ds.label_map), embed_dim=clip.config.dim_latent, sizes=sizes)
    ema, result = fit_prior(embeds, ds.user_indices.clone(), prior_config, config, run_dir, resume=resume,
                            progress=progress)
    if _is_main():
        ema.save(final, label_map=ds.label_map.to_dict(), meta=_meta(ds, clip))
    say(f"[prior] wrote {final}")
    return StageResult(final=final, model=ema, train=result)


# --------------------------------------------------------------------------------------------
# whole runs (what the CLI commands call)


def load_clip_for(clip_path: str | Path, ds):
    """Load an embedding model and check it was trained on this data set's users and kind of
    image (scalar or RGB). Any image size is fine: the model resizes to its own."""
    from dalle2_md.models.embedding import MicroDopplerClip

    clip = MicroDopplerClip.load(clip_path)
    if exists(clip.label_map) and clip.label_map.get("names") != list(ds.label_map.names):
        raise UserError(
            f"{clip_path} was trained on users {clip.label_map.get('names')} but {ds.root} holds "
            f"{list(ds.label_map.names)}; give the embedding model trained on this data set."
        )
    if clip.config.channels != ds.channels:
        recorded = (clip.meta or {}).get("colormap", "jet" if clip.config.channels == 1 else "none")
        raise UserError(
            f"{clip_path} was trained on {clip.config.channels}-channel images but the data is read with "
            f"{ds.channels} channel(s) (--colormap {ds.colormap or 'none'}); use --colormap {recorded} "
            "(or leave --colormap out: it follows the embedding model)."
        )
    return clip


def _cache_dir(data: DataOptions, run_dir: Path) -> Path:
    return Path(data.cache_dir) if exists(data.cache_dir) else run_dir.parent / ".cache"


def run_train_clip(*, data: DataOptions, run_dir, config: TrainConfig, sizes: dict | None = None,
                   resume: str | None = None, overwrite: bool = False, progress: bool = True) -> StageResult:
    """`dalle2-md train-clip`: data -> embedding model."""
    ds = load_train_data(data, run_dir)
    return train_clip_stage(run_dir, ds, config, sizes=sizes, resume=resume, overwrite=overwrite, progress=progress)


def _reuse_or_train(stage: str, run_dir: Path, resume, overwrite, train_fn):
    # on --resume a finished helper stage is reused as it is, so its fingerprint stays the one
    # the main stage is being trained against
    final = final_path(run_dir, stage)
    if final.exists() and exists(resume) and not overwrite:
        say(f"[{stage}] reusing {final}")
        return None
    return train_fn()


def run_train_decoder(*, data: DataOptions, run_dir, config: TrainConfig, sizes: dict | None = None,
                      clip_path: str | None = None, clip_sizes: dict | None = None, clip_max_steps: int | None = None,
                      clip_epochs: int | None = 20, use_vqgan: bool = False, vqgan_path: str | None = None,
                      vqgan_sizes: dict | None = None, vqgan_max_steps: int | None = None,
                      vqgan_epochs: int | None = 20, vqgan_lr: float | None = None, upsample_to: int | None = None,
                      upsampler_sizes: dict | None = None, upsampler_max_steps: int | None = None,
                      resume: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """`train_micro_doppler_decoder.py`: data -> embedding model (unless `clip_path`) -> VQGAN
    (with `use_vqgan`, unless `vqgan_path`) -> decoder -> upsampler to `upsample_to` px (when
    given; `upsampler_sizes`, and `upsampler_max_steps` or the run's length). Returns the
    written bundle paths."""
    run_dir = Path(run_dir)
    check_can_write(final_path(run_dir, "decoder"), overwrite=overwrite, resume=resume)
    if exists(upsample_to):
        check_can_write(final_path(run_dir, "upsampler"), overwrite=overwrite, resume=resume)
    if exists(resume) and str(resume) != "latest":
        from dalle2_md.training.checkpoints import load_checkpoint

        load_checkpoint(resume, stage="decoder")
    own_clip = final_path(run_dir, "clip")
    data = with_settings_from(data, clip_path if exists(clip_path) else
                              (own_clip if exists(resume) and own_clip.is_file() else None))
    ds = load_train_data(data, run_dir)
    _check_decoder_sizes(ds, sizes, use_vqgan=use_vqgan, vqgan_path=vqgan_path, vqgan_sizes=vqgan_sizes)
    if exists(upsample_to):  # its size rules too, before anything trains
        upsampler_config_for(lowres_size=ds.image_size, output_size=upsample_to, channels=ds.channels,
                             sizes=upsampler_sizes)
    cache = _cache_dir(data, run_dir)
    out = {}
    if exists(clip_path):
        clip = load_clip_for(clip_path, ds)
        out["clip"] = Path(clip_path)
    else:
        clip_config = sub_schedule(config, max_steps=clip_max_steps, epochs=clip_epochs)
        done = _reuse_or_train("clip", run_dir, resume, overwrite, lambda: train_clip_stage(
            run_dir, ds, clip_config, sizes=clip_sizes, resume=_sub_resume(resume), overwrite=overwrite,
            progress=progress))
        out["clip"] = final_path(run_dir, "clip")
        clip = done.model if exists(done) else load_clip_for(out["clip"], ds)
    if use_vqgan and not exists(vqgan_path):
        vq_config = sub_schedule(config, max_steps=vqgan_max_steps, epochs=vqgan_epochs)
        if exists(vqgan_lr):
            vq_config = replace(vq_config, lr=vqgan_lr)
        _reuse_or_train("vqgan", run_dir, resume, overwrite, lambda: train_vqgan_stage(
            run_dir, ds, vq_config, sizes=vqgan_sizes, resume=_sub_resume(resume), overwrite=overwrite,
            progress=progress))
        vqgan_path = final_path(run_dir, "vqgan")
    if exists(vqgan_path):
        out["vqgan"] = Path(vqgan_path)
    done = train_decoder_stage(run_dir, ds, clip, config, sizes=sizes, vqgan_path=vqgan_path, cache_dir=cache,
                               resume=resume, overwrite=overwrite, progress=progress)
    out["decoder"] = done.final
    if exists(upsample_to):
        schedule = sub_schedule(config, max_steps=upsampler_max_steps, epochs=None)
        _reuse_or_train("upsampler", run_dir, resume, overwrite, lambda: train_upsampler_stage(
            run_dir, load_train_data(replace(data, image_size=upsample_to), run_dir), schedule,
            lowres_size=ds.image_size, sizes=upsampler_sizes, resume=_sub_resume(resume), overwrite=overwrite,
            progress=progress))
        out["upsampler"] = final_path(run_dir, "upsampler")
    return out


def run_train_upsampler(*, data: DataOptions, run_dir, config: TrainConfig, decoder_path: str | None = None,
                        lowres_size: int | None = None, upsample_to: int | None = None, sizes: dict | None = None,
                        resume: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """`dalle2-md train-upsampler`: an upsampler from the base decoder's size (read from
    `decoder_path`, or `lowres_size`) to `upsample_to` px (default: `data.image_size` if given,
    else the data's own size on disk), trained on the train split at that size. The colormap
    follows the decoder's when not given. Returns the written bundle's path."""
    from dalle2_md.data.scanning import source_image_size
    from dalle2_md.models.bundle import load_bundle

    run_dir = Path(run_dir)
    check_can_write(final_path(run_dir, "upsampler"), overwrite=overwrite, resume=resume)
    if exists(decoder_path) == exists(lowres_size):
        raise UserError("give the base decoder (--decoder_path decoder_final.pt), or its image size (--lowres_size), "
                        "not both.")
    channels = None
    if exists(decoder_path):
        payload = load_bundle(decoder_path, kind="decoder")
        lowres_size, channels = payload["config"]["image_size"], payload["config"].get("channels", 1)
        if data.colormap is None and (payload.get("meta") or {}).get("colormap"):
            data = replace(data, colormap=payload["meta"]["colormap"])
    if exists(upsample_to) and exists(data.image_size) and upsample_to != data.image_size:
        raise UserError(f"--upsample_to {upsample_to} and --image_size {data.image_size} disagree; give one of them.")
    size = upsample_to or data.image_size or source_image_size(data.data_root)
    upsampler_config_for(lowres_size=lowres_size, output_size=size, channels=channels or 1, sizes=sizes)
    ds = load_train_data(replace(data, image_size=size), run_dir)
    if exists(channels) and channels != ds.channels:
        raise UserError(f"{decoder_path} makes {channels}-channel images but the data is read with {ds.channels} "
                        f"(--colormap {ds.colormap or 'none'}); leave --colormap out to follow the decoder.")
    done = train_upsampler_stage(run_dir, ds, config, lowres_size=lowres_size, sizes=sizes, resume=resume,
                                 overwrite=overwrite, progress=progress)
    return {"upsampler": done.final, "result": done.train}


def _check_decoder_sizes(ds, sizes, *, use_vqgan, vqgan_path, vqgan_sizes) -> None:
    # the U-Net's size rules, checked before the embedding model and VQGAN train: a bad
    # --image_size then fails at once instead of after earlier stages wrote their bundles
    from dalle2_md.models.bundle import load_bundle
    from dalle2_md.models.decoder import DecoderConfig
    from dalle2_md.models.vqgan import VQGanConfig
    from dalle2_md.training.presets import cpu_vqgan_sizes

    vq = None
    if use_vqgan and exists(vqgan_path):
        vq = VQGanConfig.from_dict(load_bundle(vqgan_path, kind="vqgan")["config"])
    elif use_vqgan:
        vq = VQGanConfig(image_size=ds.image_size, channels=ds.channels, **(vqgan_sizes or cpu_vqgan_sizes()))
    DecoderConfig(image_size=ds.image_size, channels=ds.channels, image_embed_dim=1, use_vqgan=use_vqgan, vqgan=vq,
                  **user_table_size(sizes or {}, len(ds.label_map)))


def missing_clip_message(output_dir: str | Path) -> str:
    """What to tell a user who ran the prior without `--clip_path`."""
    parent = Path(output_dir).parent
    found = sorted(parent.glob("*/*/clip_final.pt")) + sorted(Path(output_dir).glob("*/clip_final.pt"))
    example = str(found[0]) if found else str(parent / "decoder" / "decoder_v1" / "clip_final.pt")
    return (
        "the prior is trained on the embedding model the decoder was trained with, and none was given: "
        f"add --clip_path {example} (written by train_micro_doppler_decoder.py as "
        "<output_dir>/<experiment_name>/clip_final.pt; or train one with `dalle2-md train-clip`)."
    )


def run_train_prior(*, data: DataOptions, run_dir, config: TrainConfig, clip_path: str | None,
                    sizes: dict | None = None, resume: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """`train_micro_doppler_prior.py`: data + embedding model -> prior. Without `clip_path` the
    run folder's own clip_final.pt is used (a prior trained in the decoder's run folder); if there
    is none, a UserError says which flag and file to give."""
    run_dir = Path(run_dir)
    if not exists(clip_path):
        own = final_path(run_dir, "clip")
        if not own.is_file():
            raise UserError(missing_clip_message(run_dir.parent))
        clip_path = own
        say(f"[prior] using the embedding model of this run folder: {own}")
    if not Path(clip_path).is_file():
        raise UserError(f"--clip_path {clip_path}: no such file. {missing_clip_message(run_dir.parent)}")
    check_can_write(final_path(run_dir, "prior"), overwrite=overwrite, resume=resume)
    ds = load_train_data(with_settings_from(data, clip_path), run_dir)
    clip = load_clip_for(clip_path, ds)
    done = train_prior_stage(run_dir, ds, clip, config, sizes=sizes, cache_dir=_cache_dir(data, run_dir),
                             resume=resume, overwrite=overwrite, progress=progress)
    return {"clip": Path(clip_path), "prior": done.final, "result": done.train}

