"""The glue between the command line and the models: options -> data set -> configs ->
`training.train` -> bundles, one short function per stage, plus generation, the end-to-end demo
and the installation / data self-check behind `test_micro_doppler.py`.

A training run lives in one folder, `<output_dir>/<experiment_name>/`:

    label_map.json  split.json                      the users and the per-user split trained on
    clip/  vqgan/  decoder/  prior/                  per stage: checkpoints/ tensorboard/ samples/
    clip_final.pt  vqgan_final.pt  decoder_final.pt  prior_final.pt     the bundles (EMA weights)

Every stage trains on the train split only. The embedding model is trained first (by the decoder
run, or `train-clip`); the prior and decoder train on its image embeddings, computed once and
cached under the cache folder, and both bundles record its weight fingerprint so generation can
refuse a pair trained on different embedding models.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .sampling import DEFAULTS
from .training import TrainConfig, TrainResult, train
from .utils import DataError, UserError, exists

STAGES = ("clip", "vqgan", "decoder", "prior")
CLIP_MAX_IMAGE_SIZE = 64
DEFAULT_IMAGE_SIZE, DEFAULT_COLORMAP = 64, "jet"  # when neither a flag nor a bundle says
GRID_MIN_TILE = 96  # grids and strips show small images enlarged to at least this many pixels


def log(message: str) -> None:
    # under `accelerate launch` every process runs the workflow; one copy of each line is enough.
    # The rank is read from the launcher's environment: creating accelerate's state here, before
    # the training loop's Accelerator, would pin it to a single process
    rank = next((os.environ[k] for k in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK") if k in os.environ), "0")
    if int(rank) == 0:
        print(message, flush=True)


def final_path(run_dir: str | Path, stage: str) -> Path:
    """`<run_dir>/<stage>_final.pt`, the bundle a stage leaves behind."""
    return Path(run_dir) / f"{stage}_final.pt"


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """Where the data is and how to read it.

    Args:
        data_root: folder of user folders, or images/ + metadata.json.
        num_users: expected number of users (checked), or None.
        image_size: side of the square images the models see; None: the size recorded in the
            bundle the run builds on (see `with_settings_from`), else DEFAULT_IMAGE_SIZE.
        colormap: colormap inverted into one channel ("jet"), or "none" to keep RGB; None: as
            for image_size.
        flat_structure: require the flat layout (images/ + metadata.json).
        split_seed: seed of the per-user train/val/test split.
        cache_dir: cache of decoded images and image embeddings (None: no image cache; the
            embeddings then go to `<run_dir>/../.cache`).
    """

    data_root: str
    num_users: int | None = None
    image_size: int | None = DEFAULT_IMAGE_SIZE
    colormap: str | None = DEFAULT_COLORMAP
    flat_structure: bool = False
    split_seed: int = 0
    cache_dir: str | None = None


def load_train_data(data: DataOptions, run_dir: str | Path):
    """The train split of the data set; writes `label_map.json` and `split.json` into the run
    folder (an existing split.json is reused, so a resumed run sees the same images).

    Args:
        data: the data options.
        run_dir: the run folder.
    """
    from .data import METADATA_FILE, MicroDopplerDataset

    data = with_defaults(data)
    root = Path(data.data_root).expanduser()
    if data.flat_structure and root.is_dir() and not (root / METADATA_FILE).is_file():
        raise DataError(
            f"--flat_structure was given but {root} has no {METADATA_FILE}; the flat layout is "
            f"{root}/images/*.png + {root}/{METADATA_FILE}. Leave out --flat_structure for user folders."
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = MicroDopplerDataset(
        root, image_size=data.image_size, colormap=data.colormap, num_users=data.num_users,
        split="train", split_file=run_dir / "split.json", split_seed=data.split_seed, cache_dir=data.cache_dir,
    )
    ds.label_map.save(run_dir / "label_map.json")
    log(f"data: {ds.root} ({ds.layout}), {len(ds.label_map)} users, {len(ds)} training images "
        f"at {ds.channels}x{ds.image_size}x{ds.image_size}")
    if ds.skipped:
        names = ", ".join(f"{Path(p).name} ({why})" for p, why in ds.skipped[:10])
        more = f", ... {len(ds.skipped) - 10} more" if len(ds.skipped) > 10 else ""
        log(f"data: skipped {len(ds.skipped)} unreadable file(s): {names}{more}")
    return ds


def with_defaults(data: DataOptions) -> DataOptions:
    """The data options with an unset image size / colormap given the defaults."""
    return replace(data, image_size=data.image_size or DEFAULT_IMAGE_SIZE, colormap=data.colormap or DEFAULT_COLORMAP)


def recorded_data_settings(bundle_path: str | Path) -> dict:
    """{"image_size", "colormap"} of the data an embedding-model bundle was trained on,
    as recorded in its meta (older files without it: the model's own image size)."""
    from .bundle import load_bundle

    payload = load_bundle(bundle_path, kind="clip")
    meta, config = payload.get("meta") or {}, payload.get("config") or {}
    channels = config.get("channels", 1)
    return {"image_size": meta.get("image_size", config.get("image_size")),
            "colormap": meta.get("colormap", DEFAULT_COLORMAP if channels == 1 else "none")}


def with_settings_from(data: DataOptions, bundle_path: str | Path | None) -> DataOptions:
    """Fill the image size and colormap that were not given (None) from the bundle the run
    builds on, so a run reads the data as the embedding model's run did; then the defaults.

    Args:
        data: the data options; given values are kept.
        bundle_path: an embedding-model (clip) bundle, or None.
    """
    if exists(bundle_path) and (data.image_size is None or data.colormap is None):
        recorded = recorded_data_settings(bundle_path)
        filled = {k: v for k, v in recorded.items() if getattr(data, k) is None and exists(v)}
        if filled:
            log(f"data: {', '.join(f'{k} {v}' for k, v in filled.items())} (as recorded in {bundle_path})")
            data = replace(data, **filled)
    return with_defaults(data)


def _dataset_key(ds) -> str:
    from .clip import dataset_key_for

    return dataset_key_for(ds.files, ds.image_size, ds.colormap)


def embed_dataset(clip, ds, cache_dir: str | Path) -> torch.Tensor:
    """(N, dim_latent) image embeddings of a data set: computed once per (data, clip) pair and
    read from `cache_dir` afterwards."""
    from .clip import cached_image_embeds

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
    from .training import _list_checkpoints

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


def display_colormap(ds) -> str:
    """How samples of this data set are shown: greyscale data (a colormap given but no colour
    image met, `ds.residual` None) is shown grey, colour data through its colormap."""
    if ds.colormap is None or ds.residual is None:
        return "none"
    return ds.colormap


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


def _run(model, dataset, config: TrainConfig, run_dir: Path, stage: str, *, resume, sample_fn=None,
         model_config=None, progress=True) -> TrainResult:
    log(f"[{stage}] training {config.max_steps or f'{config.epochs} epochs'}"
        f"{' steps' if config.max_steps else ''} -> {run_dir / stage}")
    result = train(model, dataset, config, run_dir=run_dir / stage, stage=stage, resume=resume,
                   sample_fn=sample_fn, model_config=model_config, progress=progress)
    last = f", last loss {result.losses[-1]:.4g}" if result.losses else ""
    log(f"[{stage}] step {result.step} in {result.seconds:.1f}s{last}")
    return result


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
    from .clip import ClipConfig, MicroDopplerClip

    run_dir, final = Path(run_dir), final_path(run_dir, "clip")
    check_can_write(final, overwrite=overwrite, resume=resume)
    # the embedding model sees images downsampled to at most CLIP_MAX_IMAGE_SIZE (unless sizes
    # say otherwise): identity lives in coarse structure (torso line, cadence, swing height),
    # and its strided convs cost 16x less at 64 px than at 256 px
    clip_config = ClipConfig(**{"image_size": min(ds.image_size, CLIP_MAX_IMAGE_SIZE), **(sizes or {}),
                                "num_users": len(ds.label_map), "channels": ds.channels})
    if len(ds) < 2:
        raise UserError(f"the embedding model needs at least 2 training images; {ds.root} has {len(ds)}.")
    torch.manual_seed(config.seed)
    model = MicroDopplerClip(clip_config)
    result = _run(model, ds, config, run_dir, "clip", resume=resume, model_config=clip_config.to_dict(),
                  progress=progress)
    clip = result.ema_model.eval()
    if _is_main():
        clip.save(final, label_map=ds.label_map.to_dict(), meta=_meta(ds))
    log(f"[clip] wrote {final} (fingerprint {clip.fingerprint})")
    return StageResult(final=final, model=clip, train=result)


class _VQGanLoss(nn.Module):
    """`loss = module(images)` for the training loop."""

    def __init__(self, vqgan):
        super().__init__()
        self.vqgan = vqgan

    def forward(self, images):
        from .vqgan import vqgan_loss

        return vqgan_loss(self.vqgan, images)[0]


def train_vqgan_stage(run_dir, ds, config: TrainConfig, *, sizes: dict | None = None, resume: str | None = None,
                      overwrite: bool = False, progress: bool = True) -> StageResult:
    """Train the VQGAN autoencoder under the latent decoder; writes vqgan_final.pt.

    Args: as for `train_clip_stage`; `sizes` holds `VQGanConfig` fields.
    """
    from .vqgan import VQGanConfig, build_vqgan, cpu_vqgan_sizes, reconstruction_quality, save_vqgan

    run_dir, final = Path(run_dir), final_path(run_dir, "vqgan")
    check_can_write(final, overwrite=overwrite, resume=resume)
    vq_config = VQGanConfig(image_size=ds.image_size, channels=ds.channels, **(sizes or cpu_vqgan_sizes()))
    torch.manual_seed(config.seed)
    wrapper = _VQGanLoss(build_vqgan(vq_config))
    data = torch.utils.data.TensorDataset(ds.images)
    result = _run(wrapper, data, config, run_dir, "vqgan", resume=resume, model_config=vq_config.to_dict(),
                  progress=progress)
    # the raw weights, not the EMA copy: the codebook is itself a moving average of the online
    # encoder's outputs, and an averaged encoder would no longer match it
    vqgan = result.model.vqgan.eval()
    # its own quality, on (up to 256 of) the images it trained on; benchmarks/bench_vqgan.py
    # measures held-out images and whether identity survives
    quality = reconstruction_quality(vqgan, ds.images[:256])
    if _is_main():
        save_vqgan(final, vqgan, vq_config, meta={**_meta(ds), "steps": result.step, "quality": quality})
    log(f"[vqgan] f={vq_config.factor}: {vq_config.latent_channels}x{vq_config.latent_size}x{vq_config.latent_size} "
        f"latents; reconstructions PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.3f}; wrote {final}")
    return StageResult(final=final, model=vqgan, train=result)


class _LatentDecoderLoss(nn.Module):
    """`loss = module(latents, image_embeds)`: the latent decoder trained on cached VQGAN latents."""

    def __init__(self, decoder):
        super().__init__()
        self.inner = decoder

    def forward(self, latents, image_embeds):
        return self.inner(None, image_embeds, latents=latents)


def _unwrap_decoder(module):
    return module.inner if isinstance(module, _LatentDecoderLoss) else module


def _first_per_user(user_ids: torch.Tensor, limit: int = 8) -> list[int]:
    seen: dict[int, int] = {}
    for i, u in enumerate(user_ids.tolist()):
        seen.setdefault(u, i)
    return [seen[u] for u in sorted(seen)][:limit]


def to_display(images01: torch.Tensor, colormap: str | None) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1], re-coloured through the colormap."""
    from .data import to_display_rgb

    rgb = to_display_rgb(images01 * 2 - 1, colormap)
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0


def _decoder_sample_fn(images, embeds, user_ids, colormap, steps):
    pick = _first_per_user(user_ids)
    real = (images[pick] + 1) / 2

    def sample_fn(ema_model, step):
        decoder = _unwrap_decoder(ema_model)
        device = next(decoder.parameters()).device
        fake = decoder.sample(embeds[pick].to(device), timesteps=steps, seed=0).cpu()
        # one picture: the real image of each user on top, its decoded embedding below
        rows = [torch.cat(list(to_display(x, colormap)), dim=-1) for x in (real, fake)]
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
    from .decoder import DecoderConfig, build_decoder

    run_dir, final = Path(run_dir), final_path(run_dir, "decoder")
    check_can_write(final, overwrite=overwrite, resume=resume)
    embeds = embed_dataset(clip, ds, cache_dir)
    images, user_ids = ds.tensors()
    dec_config = DecoderConfig(image_size=ds.image_size, channels=ds.channels, image_embed_dim=clip.config.dim_latent,
                               use_vqgan=exists(vqgan_path), vqgan_path=str(vqgan_path) if exists(vqgan_path) else None,
                               **(sizes or {}))
    torch.manual_seed(config.seed)
    decoder = build_decoder(dec_config)
    if dec_config.use_vqgan:
        # the VQGAN is frozen, so every image is encoded once here instead of at every step
        decoder.fit_latent_scale(images[:512])
        model = _LatentDecoderLoss(decoder)
        data = torch.utils.data.TensorDataset(decoder.encode_latents(images), embeds)
    else:
        model, data = decoder, torch.utils.data.TensorDataset(images, embeds)
    steps = min(decoder.config.sample_timesteps, 50)
    sample_fn = _decoder_sample_fn(images, embeds, user_ids, display_colormap(ds), steps)
    result = _run(model, data, config, run_dir, "decoder", resume=resume, sample_fn=sample_fn,
                  model_config=decoder.config.to_dict(), progress=progress)
    ema = _unwrap_decoder(result.ema_model).eval()
    if _is_main():
        ema.save(final, meta=_meta(ds, clip))
    log(f"[decoder] wrote {final}")
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
    from .prior import PriorConfig, UserConditionedDiffusionPrior

    run_dir, final = Path(run_dir), final_path(run_dir, "prior")
    check_can_write(final, overwrite=overwrite, resume=resume)
    sizes = dict(sizes or {})
    embed_dim = clip.config.dim_latent
    dim = sizes.pop("dim", None) or embed_dim
    embeds = embed_dataset(clip, ds, cache_dir)
    prior_config = PriorConfig(num_users=len(ds.label_map), dim=dim, embed_dim=embed_dim if dim != embed_dim else None,
                               **sizes)
    torch.manual_seed(config.seed)
    prior = UserConditionedDiffusionPrior(prior_config)
    data = torch.utils.data.TensorDataset(embeds, ds.user_ids.clone())
    result = _run(prior, data, config, run_dir, "prior", resume=resume, model_config=asdict(prior_config),
                  progress=progress)
    ema = result.ema_model.eval()
    if _is_main():
        ema.save(final, label_map=ds.label_map.to_dict(), meta=_meta(ds, clip))
    log(f"[prior] wrote {final}")
    return StageResult(final=final, model=ema, train=result)


# --------------------------------------------------------------------------------------------
# whole runs (what the CLI commands call)


def load_clip_for(clip_path: str | Path, ds):
    """Load an embedding model and check it was trained on this data set's users and kind of
    image (scalar or RGB). Any image size is fine: the model resizes to its own."""
    from .clip import MicroDopplerClip

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
        log(f"[{stage}] reusing {final}")
        return None
    return train_fn()


def run_train_decoder(*, data: DataOptions, run_dir, config: TrainConfig, sizes: dict | None = None,
                      clip_path: str | None = None, clip_sizes: dict | None = None, clip_max_steps: int | None = None,
                      clip_epochs: int | None = 20, use_vqgan: bool = False, vqgan_path: str | None = None,
                      vqgan_sizes: dict | None = None, vqgan_max_steps: int | None = None,
                      vqgan_epochs: int | None = 20, resume: str | None = None, overwrite: bool = False,
                      progress: bool = True) -> dict:
    """`train_micro_doppler_decoder.py`: data -> embedding model (unless `clip_path`) -> VQGAN
    (with `use_vqgan`, unless `vqgan_path`) -> decoder. Returns the written bundle paths."""
    run_dir = Path(run_dir)
    check_can_write(final_path(run_dir, "decoder"), overwrite=overwrite, resume=resume)
    if exists(resume) and str(resume) != "latest":
        from .training import load_checkpoint

        load_checkpoint(resume, stage="decoder")
    own_clip = final_path(run_dir, "clip")
    data = with_settings_from(data, clip_path if exists(clip_path) else
                              (own_clip if exists(resume) and own_clip.is_file() else None))
    ds = load_train_data(data, run_dir)
    _check_decoder_sizes(ds, sizes, use_vqgan=use_vqgan, vqgan_path=vqgan_path, vqgan_sizes=vqgan_sizes)
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
        _reuse_or_train("vqgan", run_dir, resume, overwrite, lambda: train_vqgan_stage(
            run_dir, ds, vq_config, sizes=vqgan_sizes, resume=_sub_resume(resume), overwrite=overwrite,
            progress=progress))
        vqgan_path = final_path(run_dir, "vqgan")
    if exists(vqgan_path):
        out["vqgan"] = Path(vqgan_path)
    done = train_decoder_stage(run_dir, ds, clip, config, sizes=sizes, vqgan_path=vqgan_path, cache_dir=cache,
                               resume=resume, overwrite=overwrite, progress=progress)
    out["decoder"] = done.final
    return out


def _check_decoder_sizes(ds, sizes, *, use_vqgan, vqgan_path, vqgan_sizes) -> None:
    # the U-Net's size rules, checked before the embedding model and VQGAN train: a bad
    # --image_size then fails at once instead of after earlier stages wrote their bundles
    from .bundle import load_bundle
    from .decoder import DecoderConfig
    from .vqgan import VQGanConfig, cpu_vqgan_sizes

    vq = None
    if use_vqgan and exists(vqgan_path):
        vq = VQGanConfig.from_dict(load_bundle(vqgan_path, kind="vqgan")["config"])
    elif use_vqgan:
        vq = VQGanConfig(image_size=ds.image_size, channels=ds.channels, **(vqgan_sizes or cpu_vqgan_sizes()))
    DecoderConfig(image_size=ds.image_size, channels=ds.channels, image_embed_dim=1, use_vqgan=use_vqgan, vqgan=vq,
                  **(sizes or {}))


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
        log(f"[prior] using the embedding model of this run folder: {own}")
    if not Path(clip_path).is_file():
        raise UserError(f"--clip_path {clip_path}: no such file. {missing_clip_message(run_dir.parent)}")
    check_can_write(final_path(run_dir, "prior"), overwrite=overwrite, resume=resume)
    ds = load_train_data(with_settings_from(data, clip_path), run_dir)
    clip = load_clip_for(clip_path, ds)
    done = train_prior_stage(run_dir, ds, clip, config, sizes=sizes, cache_dir=_cache_dir(data, run_dir),
                             resume=resume, overwrite=overwrite, progress=progress)
    return {"clip": Path(clip_path), "prior": done.final, "result": done.train}


# --------------------------------------------------------------------------------------------
# generation


def load_generator(*, model_path=None, prior_path=None, decoder_path=None, clip_path=None, device: str = "cpu"):
    """A `MicroDopplerDALLE2` from a chained bundle or from a prior + decoder pair (refused when
    they were trained on different embedding models).

    Args:
        model_path: a "dalle2" bundle (exclusive with the part paths).
        prior_path, decoder_path: prior_final.pt and decoder_final.pt.
        clip_path: optional embedding model, checked against both.
        device: "cpu", "cuda", "cuda:1", or "auto".
    """
    from .model import MicroDopplerDALLE2

    if exists(model_path) == (exists(prior_path) or exists(decoder_path)):
        raise UserError("give either --model_path, or --decoder_path and --prior_path (not both).")
    if exists(model_path):
        model = MicroDopplerDALLE2.load(model_path)
    else:
        missing = [flag for flag, p in (("--decoder_path", decoder_path), ("--prior_path", prior_path)) if not exists(p)]
        if missing:
            raise UserError(f"generation needs {' and '.join(missing)} (decoder_final.pt / prior_final.pt of your runs).")
        model = MicroDopplerDALLE2.from_parts(prior_path=prior_path, decoder_path=decoder_path, clip_path=clip_path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        where = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or auto.") from None
    if where.type == "cuda" and (not torch.cuda.is_available() or (where.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {device}: no such CUDA GPU here ({torch.cuda.device_count()} visible); "
                        "use --device cpu or auto.")
    return model.to(where).eval()


def _label_map(model):
    from .data import LabelMap

    if exists(model.label_map):
        return LabelMap.from_dict(model.label_map)
    return LabelMap.from_ids(range(model.num_users))


def _save_png(image01: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    from .utils import atomic_write

    array = (image01.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    with atomic_write(path) as f:
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(f, format="PNG")
    return path


GRID_SAMPLES_PER_USER = 8  # grid.png shows at most this many samples of each user (bounded memory)


def _sampling_kwargs(*, cond_scale, prior_cond_scale, sample_steps, prior_steps, seed, eta, sampler) -> dict:
    from .sampling import resolve_sampler

    resolve_sampler(sampler, eta)  # a bad name or combination stops here, before any work
    return dict(cond_scale=cond_scale, prior_cond_scale=prior_cond_scale, decoder_steps=sample_steps,
                prior_steps=prior_steps, seed=seed, eta=eta, sampler=sampler)


def generate(model, output_dir, *, users: Sequence[str] | None = None, num_samples_per_user: int = 4,
             cond_scale: float = DEFAULTS.cond_scale, prior_cond_scale: float = DEFAULTS.prior_cond_scale,
             sample_steps: int | None = DEFAULTS.decoder_steps, prior_steps: int | None = DEFAULTS.prior_steps,
             seed: int = 0, batch_size: int = 64, save_npy: bool = False, eta: float = DEFAULTS.eta,
             sampler: str | None = None, fast: "FastPaths | None" = None, progress: bool = False) -> dict:
    """Sample spectrograms for users and write them as PNGs named with the original labels
    (`ID_5_000.png`) as each batch finishes, plus `grid.png` with one row per user (its first
    `GRID_SAMPLES_PER_USER` samples). Batches mix users and samples up to `batch_size` images;
    memory is bounded by the batch, not by the number of images.

    Args:
        model: a `MicroDopplerDALLE2`.
        output_dir: folder to write into.
        users: original labels ("ID_5", "5"); None = every user the model knows.
        num_samples_per_user: images per user.
        cond_scale, prior_cond_scale: decoder / prior guidance (1 = none).
        sample_steps, prior_steps: network evaluations of the decoder / prior (None: the
            model's `sample_timesteps`).
        seed: same seed, same images; an image depends only on (seed, user label, sample index)
            and the settings, never on the other users asked for or on `batch_size`.
        batch_size: most images sampled at once.
        save_npy: also save each scalar spectrogram (H, W) in [0, 1] as .npy.
        eta: DDIM eta (> 0 selects the ddim sampler).
        sampler: "ddim" or "dpmpp_2m" (default `sampling.DEFAULTS.sampler`).
        fast: GPU fast paths (`fastpath.FastPaths`); each falls back on a CPU with one line.
        progress: show a progress bar.
    Returns:
        {"images": [paths], "grid": path, "npy": [paths], "seconds": float, "images_per_s": float}
    """
    import numpy as np
    from tqdm.auto import tqdm

    from .data import save_image_grid
    from .fastpath import FastPaths, apply_fast_paths

    if num_samples_per_user < 1 or batch_size < 1:
        raise UserError(f"--num_samples_per_user and --batch_size must be at least 1 (got {num_samples_per_user} "
                        f"and {batch_size}).")
    sampling = _sampling_kwargs(cond_scale=cond_scale, prior_cond_scale=prior_cond_scale, sample_steps=sample_steps,
                                prior_steps=prior_steps, seed=seed, eta=eta, sampler=sampler)
    lm = _label_map(model)
    indices = [model.user_index(u) for u in users] if users else list(range(model.num_users))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = apply_fast_paths(model, model.device, fast or FastPaths(), say=log)
    pairs = [(index, j) for index in indices for j in range(num_samples_per_user)]
    grid_per_user = min(num_samples_per_user, GRID_SAMPLES_PER_USER)
    written, npys, grid_tiles = [], [], []
    start = time.perf_counter()
    with tqdm(total=len(pairs), unit="img", desc="generate", disable=not progress) as bar:
        for first in range(0, len(pairs), batch_size):
            batch = pairs[first:first + batch_size]
            with context:
                raw = model.sample([u for u, _ in batch], sample_indices=[j for _, j in batch], colorize=False,
                                   **sampling)
            raw = raw.float().cpu()
            shown = model.colorize(raw)
            for (index, j), scalar, image in zip(batch, raw, shown):
                stem = f"{lm.file_stem(index)}_{j:03d}"
                written.append(_save_png(image, out / f"{stem}.png"))
                if save_npy and scalar.shape[0] == 1:
                    npys.append(out / f"{stem}.npy")
                    np.save(npys[-1], scalar[0].numpy().astype(np.float32))
                if j < grid_per_user:
                    grid_tiles.append(image)
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    rate = len(pairs) / max(seconds, 1e-9)
    log(f"generate: {len(pairs)} images in {seconds:.1f} s ({rate:.2f} images/s, batches of up to {batch_size})")
    grid = save_image_grid(torch.stack(grid_tiles) * 2 - 1, out / "grid.png", nrow=grid_per_user, colormap="none",
                           min_tile=GRID_MIN_TILE)
    return {"images": written, "grid": grid, "npy": npys, "seconds": seconds, "images_per_s": rate}


def interpolate_users(model, output_dir, *, user_a: str, user_b: str, steps: int = 8, seed: int = 0,
                      cond_scale: float = DEFAULTS.cond_scale, prior_cond_scale: float = DEFAULTS.prior_cond_scale,
                      sample_steps: int | None = DEFAULTS.decoder_steps, prior_steps: int | None = DEFAULTS.prior_steps,
                      sampler: str | None = None) -> dict:
    """Frames between sample 0 of two users (ends equal to those plain samples, see
    `MicroDopplerDALLE2.interpolate`): a strip `interpolation_<a>_<b>.png` and its frames in
    `interpolation_<a>_<b>/frame_000.png`.

    Args:
        model: a `MicroDopplerDALLE2`.
        output_dir: folder to write into.
        user_a, user_b: original labels of the two users.
        steps: frames, ends included.
        seed, cond_scale, prior_cond_scale, sample_steps, prior_steps, sampler: as for `generate`
            (always deterministic: eta = 0).
    """
    from .data import save_image_grid

    _sampling_kwargs(cond_scale=cond_scale, prior_cond_scale=prior_cond_scale, sample_steps=sample_steps,
                     prior_steps=prior_steps, seed=seed, eta=0.0, sampler=sampler)
    lm = _label_map(model)
    a, b = model.user_index(user_a), model.user_index(user_b)
    frames = model.interpolate(a, b, steps=steps, seed=seed, cond_scale=cond_scale, prior_cond_scale=prior_cond_scale,
                               prior_steps=prior_steps, decoder_steps=sample_steps, sampler=sampler).cpu()
    name = f"interpolation_{lm.name_of(a)}_{lm.name_of(b)}"
    out = Path(output_dir)
    paths = [_save_png(f, out / name / f"frame_{i:03d}.png") for i, f in enumerate(frames)]
    strip = save_image_grid(frames * 2 - 1, out / f"{name}.png", nrow=steps, colormap="none", min_tile=GRID_MIN_TILE)
    return {"strip": strip, "frames": paths}


# --------------------------------------------------------------------------------------------
# demo


# Model sizes that train in minutes on 2 CPU cores (the demo and the evaluation protocol).
# 32 px and a dim-16 U-Net: the decoder gets ~1500 steps in the demo's time budget, which is
# where users became clearly distinct (600 steps at 64 px gave torso lines at the wrong height
# and backgrounds set by the noise rather than the embedding).
CPU_CLIP_SIZES = dict(dim_latent=32, dim_image=64, dim_text=32, encoder_widths=(16, 32, 64), token_grid=2,
                      text_heads=2, text_dim_head=16, ssl_dim=32, ssl_hidden=64)
CPU_DECODER_SIZES = dict(dim=16, dim_mults=(1, 2, 4), num_resnet_blocks=1, attn_heads=2, attn_dim_head=16,
                         timesteps=1000, sample_timesteps=DEFAULTS.sample_timesteps, num_image_tokens=2)
CPU_PRIOR_SIZES = dict(depth=2, heads=2, dim_head=16, timesteps=1000, sample_timesteps=DEFAULTS.sample_timesteps)


@dataclass(frozen=True)
class DemoConfig:
    """Every size of `dalle2-md demo` in one place (`quick()` is the CI smoke-test variant).

    Args:
        num_users, images_per_user, image_size: the simulated data set.
        clip_steps, decoder_steps, prior_steps: optimizer steps per stage.
        batch_size: training batch size of the embedding model and the prior.
        decoder_batch_size: training batch size of the decoder (its steps cost the most: about
            1 s per step of 16 at 32 px on one loaded CPU core, measured).
        lr: learning rate of every stage.
        clip, decoder, prior: size fields of ClipConfig / DecoderConfig / PriorConfig.
        samples_per_user: images per user in the grid.
        sample_steps, prior_sample_steps: network evaluations per stage when generating.
        interp_steps: frames of the interpolation strip.
    """

    num_users: int = 6
    images_per_user: int = 30
    image_size: int = 32
    clip_steps: int = 300
    decoder_steps: int = 1500
    prior_steps: int = 1000
    batch_size: int = 32
    decoder_batch_size: int = 16
    lr: float = 1e-3
    clip: dict = field(default_factory=lambda: dict(CPU_CLIP_SIZES))
    decoder: dict = field(default_factory=lambda: dict(CPU_DECODER_SIZES))
    prior: dict = field(default_factory=lambda: dict(CPU_PRIOR_SIZES))
    samples_per_user: int = 4
    eval_samples_per_user: int = 8
    recogniser_steps: int = 300
    sample_steps: int = DEFAULTS.sample_timesteps
    prior_sample_steps: int = DEFAULTS.sample_timesteps
    interp_steps: int = 8

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A few minutes of CPU at most: proves the pipeline runs, not that it learns."""
        return cls(
            num_users=3, images_per_user=8, image_size=16, clip_steps=20, decoder_steps=30, prior_steps=30,
            batch_size=16, decoder_batch_size=16,
            clip=dict(dim_latent=16, dim_image=32, dim_text=16, encoder_widths=(8, 16), token_grid=2,
                      text_heads=2, text_dim_head=8, ssl_dim=16, ssl_hidden=32),
            decoder=dict(dim=16, dim_mults=(1, 2), num_resnet_blocks=1, attn_heads=2, attn_dim_head=8,
                         timesteps=100, sample_timesteps=8, num_image_tokens=2),
            prior=dict(depth=1, heads=2, dim_head=8, timesteps=100, sample_timesteps=8),
            samples_per_user=3, sample_steps=8, prior_sample_steps=8, interp_steps=5,
            eval_samples_per_user=6, recogniser_steps=30,
        )

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024**2)


def run_demo(out_dir: str | Path = "outputs/demo", config: DemoConfig | None = None, *, seed: int = 0,
             progress: bool = True) -> dict:
    """Simulate a small data set, train embedding -> decoder -> prior, draw the per-user grid and
    an interpolation strip, and write `<out_dir>/report.md` (pictures, settings, timings, memory).

    Args:
        out_dir: demo folder (its own earlier outputs are replaced).
        config: sizes; default `DemoConfig()`.
        seed: seed of the data, the training and the samples.
        progress: show progress bars.
    Returns:
        {"report": path, "timings": {stage: seconds}, "peak_rss_mb": float, "grid": path, "strip": path}
    """
    from .synth import synthesize_dataset

    config = config or DemoConfig()
    out = Path(out_dir)
    run_dir = out / "run"
    timings: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    data_dir = out / "data"
    timed("synth", lambda: synthesize_dataset(data_dir, num_users=config.num_users, images_per_user=config.images_per_user,
                                              image_size=config.image_size, seed=seed, progress=progress))
    data = DataOptions(data_root=str(data_dir), image_size=config.image_size, cache_dir=str(out / ".cache"))
    ds = timed("load", lambda: load_train_data(data, run_dir))

    def schedule(steps, batch_size=config.batch_size):
        return TrainConfig(max_steps=steps, batch_size=batch_size, lr=config.lr, seed=seed,
                           warmup_steps=min(50, steps // 10), log_every=max(1, steps // 20))

    clip = timed("clip", lambda: train_clip_stage(run_dir, ds, schedule(config.clip_steps), sizes=config.clip,
                                                  overwrite=True, progress=progress)).model
    decoder_schedule = schedule(config.decoder_steps, config.decoder_batch_size)
    timed("decoder", lambda: train_decoder_stage(run_dir, ds, clip, decoder_schedule, sizes=config.decoder,
                                                 cache_dir=out / ".cache", overwrite=True, progress=progress))
    timed("prior", lambda: train_prior_stage(run_dir, ds, clip, schedule(config.prior_steps), sizes=config.prior,
                                             cache_dir=out / ".cache", overwrite=True, progress=progress))
    model = load_generator(prior_path=final_path(run_dir, "prior"), decoder_path=final_path(run_dir, "decoder"),
                           clip_path=final_path(run_dir, "clip"))
    samples = out / "samples"
    made = timed("generate", lambda: generate(model, samples, num_samples_per_user=config.samples_per_user,
                                              sample_steps=config.sample_steps, prior_steps=config.prior_sample_steps,
                                              seed=seed))
    names = ds.label_map.names
    strip = timed("interpolate", lambda: interpolate_users(
        model, samples, user_a=names[0], user_b=names[-1], steps=config.interp_steps, seed=seed,
        sample_steps=config.sample_steps, prior_steps=config.prior_sample_steps))["strip"]
    metrics = timed("evaluate", lambda: demo_metrics(model, ds, data, run_dir, config, seed))
    rss = peak_rss_mb()
    report = _write_demo_report(out, config, timings, rss, made["grid"], strip, data_dir, names, metrics)
    log(f"demo: wrote {report} ({sum(timings.values()):.0f}s, peak RSS {rss:.0f} MiB)")
    return {"report": report, "timings": timings, "peak_rss_mb": rss, "grid": made["grid"], "strip": strip,
            "metrics": metrics}


def demo_metrics(model, train_ds, data: DataOptions, run_dir: Path, config: DemoConfig, seed: int) -> dict:
    """Identity accuracy and domain FID of the demo's own samples: a small recogniser trained on
    the real train split judges real test images (A_real) and fresh samples (A_gen), and its
    features give the FID of samples vs real test and the floor of real train vs real test."""
    from .data import MicroDopplerDataset
    from .metrics import accuracy, domain_fid, min_fid_samples
    from .recogniser import RecogniserConfig, RecogniserTrainConfig, train_recogniser

    test = MicroDopplerDataset(data.data_root, image_size=data.image_size, colormap=data.colormap, split="test",
                               split_file=run_dir / "split.json", label_map=train_ds.label_map)
    train_images, train_ids = train_ds.tensors()
    test_images, test_ids = test.tensors()
    num_users = len(train_ds.label_map)
    recogniser = train_recogniser(
        train_images, train_ids, num_users=num_users,
        config=RecogniserConfig(num_users=num_users, channels=train_ds.channels, image_size=train_ds.image_size,
                                widths=(8, 16, 32), feature_dim=16),
        train=RecogniserTrainConfig(steps=config.recogniser_steps, batch_size=32, seed=seed),
    )
    users = list(range(num_users))
    # the model's own channels (scalars for jet data), in the data layer's [-1, 1]
    fake = model.sample(users, num_samples_per_user=config.eval_samples_per_user, seed=seed + 1,
                        decoder_steps=config.sample_steps, prior_steps=config.prior_sample_steps, colorize=False) * 2 - 1
    fake_ids = torch.arange(num_users).repeat_interleave(config.eval_samples_per_user)
    a_real, _ = accuracy(recogniser, test_images, test_ids)
    a_gen, _ = accuracy(recogniser, fake, fake_ids)
    metrics = {"a_real": a_real, "a_gen": a_gen, "chance": 1 / num_users, "test_images": len(test_ids),
               "generated_images": len(fake_ids), "fid": None, "fid_floor": None}
    if min(len(test_ids), len(fake_ids)) >= min_fid_samples(recogniser):
        metrics["fid"] = domain_fid(recogniser, test_images, fake)
        metrics["fid_floor"] = domain_fid(recogniser, test_images, train_images)
    return metrics


def _write_demo_report(out: Path, config: DemoConfig, timings: dict, rss: float, grid: Path, strip: Path,
                       data_dir: Path, names, metrics: dict) -> Path:
    from .utils import atomic_write, package_versions

    rel = lambda p: Path(p).relative_to(out).as_posix()
    lines = [
        "# dalle2-md demo",
        "",
        f"Simulated data: {config.num_users} users x {config.images_per_user} images at {config.image_size} px "
        f"(`{data_dir}`; contact sheet: ![real]({rel(data_dir / 'contact_sheet.png')})).",
        "",
        f"## Generated samples: one row per user ({', '.join(names)})",
        "",
        f"![grid]({rel(grid)})",
        "",
        f"## Interpolation {names[0]} -> {names[-1]}",
        "",
        f"![interpolation]({rel(strip)})",
        "",
        "## How recognisable the samples are",
        "",
        f"A small recogniser trained on the real train split (chance {metrics['chance']:.2f}) identifies "
        f"{metrics['a_real']:.2f} of {metrics['test_images']} real test images (A_real) and "
        f"{metrics['a_gen']:.2f} of {metrics['generated_images']} generated ones (A_gen).",
        "",
        (f"Domain FID on its features, generated vs real test: {metrics['fid']:.2f} (floor, real train vs real "
         f"test: {metrics['fid_floor']:.2f})." if metrics["fid"] is not None else
         "Domain FID: too few test images for the recogniser's feature size."),
        "",
        "## Timings",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        f"| **total** | **{sum(timings.values()):.1f}** |",
        "",
        f"Peak resident memory: {rss:.0f} MiB. torch threads: {torch.get_num_threads()}.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2),
        "```",
        "",
        f"Versions: {json.dumps(package_versions())}",
        "",
    ]
    path = out / "report.md"
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))
    return path


# --------------------------------------------------------------------------------------------
# self-check (test_micro_doppler.py)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def run_checks(work_dir: str | Path, *, data_root: str | None = None, num_users: int = 5, image_size: int | None = None,
               steps: int = 2, flat_structure: bool = False) -> list[Check]:
    """Run every stage for a few steps and sample once; one `Check` per step, never raising.

    Args:
        work_dir: scratch folder for the run.
        data_root: the user's data; None builds a simulated data set of `num_users` users.
        num_users: users to simulate, or the number expected in `data_root`.
        image_size: side the images are read at (default 32 simulated, 64 for own data).
        steps: training steps per stage.
        flat_structure: require the flat layout.
    """
    from .synth import synthesize_dataset

    work = Path(work_dir)
    checks: list[Check] = []
    state: dict = {}

    def check(name, fn):
        if checks and not all(c.ok for c in checks):
            checks.append(Check(name, False, "skipped: an earlier check failed"))
            return
        try:
            checks.append(Check(name, True, fn() or ""))
        except Exception as e:  # a check reports every failure; it must not stop the report
            checks.append(Check(name, False, f"{type(e).__name__}: {e}"))

    quick = DemoConfig.quick()
    size = image_size or (32 if data_root is None else 64)
    tc = TrainConfig(max_steps=steps, batch_size=8, lr=1e-3, log_every=1)
    run = work / "run"

    if data_root is None:
        data_root = str(work / "data")

        def simulate():
            s = synthesize_dataset(data_root, num_users=num_users, images_per_user=6, image_size=size, progress=False,
                                   layout="flat" if flat_structure else "hierarchical")
            return f"{s['num_images']} simulated spectrograms in {data_root}"

        check("simulated data set", simulate)

    def load():
        ds = load_train_data(DataOptions(data_root=data_root, num_users=num_users, image_size=size,
                                         flat_structure=flat_structure, cache_dir=str(work / ".cache")), run)
        state["ds"] = ds
        counts = dict(zip(ds.label_map.names, ds.counts()))
        few = [n for n, c in counts.items() if c < 2]
        if few:
            raise DataError(f"users with fewer than 2 training images: {few}")
        return f"layout {ds.layout}; training images per user: {counts}"

    check("data layout and images per user", load)
    check("label map", lambda: f"{len(state['ds'].label_map)} users -> {run / 'label_map.json'}: "
                                f"{', '.join(f'{n}->{i}' for i, n in enumerate(state['ds'].label_map.names))}")

    def stage(name, fn):
        def go():
            done = fn()
            state[name] = done
            loss = done.train.losses[-1] if done.train and done.train.losses else float("nan")
            if not math.isfinite(loss):
                raise UserError(f"loss is not finite ({loss})")
            return f"{done.train.step} steps, last loss {loss:.4f} -> {done.final}"
        check(f"train {name}", go)

    kw = dict(overwrite=True, progress=False)
    dec_sizes = {**quick.decoder, "dim_mults": (1, 2) if size % 2 == 0 else (1,)}
    stage("clip", lambda: train_clip_stage(run, state["ds"], tc, sizes=quick.clip, **kw))
    stage("vqgan", lambda: train_vqgan_stage(run, state["ds"], tc, sizes=dict(dim=8, layers=1, codebook_size=32,
                                                                              codebook_dim=8), **kw))
    stage("decoder", lambda: train_decoder_stage(run, state["ds"], state["clip"].model, tc, sizes=dec_sizes,
                                                 cache_dir=work / ".cache", **kw))
    stage("latent decoder", lambda: train_decoder_stage(
        run / "latent", state["ds"], state["clip"].model, tc, sizes={**dec_sizes, "dim_mults": (1,)},
        vqgan_path=state["vqgan"].final, cache_dir=work / ".cache", **kw))
    stage("prior", lambda: train_prior_stage(run, state["ds"], state["clip"].model, tc, sizes=quick.prior,
                                             cache_dir=work / ".cache", **kw))

    def sample():
        model = load_generator(prior_path=final_path(run, "prior"), decoder_path=final_path(run, "decoder"))
        made = generate(model, work / "samples", users=[state["ds"].label_map.names[0]], num_samples_per_user=1,
                        sample_steps=4, prior_steps=4)
        return f"wrote {made['images'][0]}"

    check("sample from prior + decoder", sample)
    return checks
