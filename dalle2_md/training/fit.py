"""The in-memory two-stage training core: tensors in, trained models out.

Owns: the embedding model's and the prior's configs for a data set (`clip_config_for`,
`prior_config_for`); one function per trained part (`fit_clip`, `fit_decoder`, `fit_upsampler`,
`fit_prior`), each building a fresh model from a seed and running it through the one training
loop (`training.loop.train`); `train_clip`, `train_vqgan` and `train_baseline` for the parts
trained alone; and `train_two_stage` (embedding -> decoder -> prior on exactly the given
tensors, returning `TwoStageModels`), whose prior stage `fit_prior_for_clip` also runs alone (a
new prior for a trained embedding model). The training commands (`stages.py`), the demo, the
augmentation harness and the quality benchmark all train through these parts. Nothing here reads
data or writes bundles: the only files are the training loop's own run folders (checkpoints,
logs, sample grids).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from dalle2_md.training.presets import GeneratorBudget
from dalle2_md.models.decoder import DecoderConfig
from dalle2_md.models.embedding import ClipConfig, MicroDopplerClip
from dalle2_md.models.single_stage import SingleStageBaseline
from dalle2_md.models.vqgan import VQGanConfig, VQGanLoss, _check_images, build_vqgan
from dalle2_md.training.loop import TrainConfig, TrainResult, train
from dalle2_md.utils import UserError, claimed, content_digest, exists, say

CLIP_MAX_IMAGE_SIZE = 64


def run_loop(model, dataset, config: TrainConfig, run_dir: Path, stage: str, *, resume, sample_fn=None,
             model_config=None, progress=True) -> TrainResult:
    """`training.train` on one stage under `<run_dir>/<stage>/`, with a line before and after."""
    say(f"[{stage}] training {config.max_steps or f'{config.epochs} epochs'}"
        f"{' steps' if config.max_steps else ''} -> {run_dir / stage}")
    result = train(model, dataset, config, run_dir=run_dir / stage, stage=stage, resume=resume,
                   sample_fn=sample_fn, model_config=model_config, progress=progress)
    last = f", last loss {result.losses[-1]:.4g}" if result.losses else ""
    say(f"[{stage}] step {result.step} in {result.seconds:.1f}s{last}")
    return result


def clip_config_for(*, num_users: int, channels: int, image_size: int, sizes: dict | None):
    """The embedding model's `ClipConfig`: `sizes` over the data's users and channels. It sees
    images downsampled to at most CLIP_MAX_IMAGE_SIZE unless `sizes` say otherwise: identity
    lives in coarse structure (torso line, cadence, swing height), and its strided convs cost
    16x less at 64 px than at 256 px."""

    return ClipConfig(**{"image_size": min(image_size, CLIP_MAX_IMAGE_SIZE), **(sizes or {}),
                         "num_users": num_users, "channels": channels})


def prior_config_for(*, num_users: int, embed_dim: int, sizes: dict | None):
    """The prior's `PriorConfig`. Without `dim` in `sizes` the transformer is as wide as the
    embeddings; with another `dim` it projects them in and out."""
    from dalle2_md.models.prior import PriorConfig

    sizes = dict(sizes or {})
    dim = sizes.pop("dim", None) or embed_dim
    return PriorConfig(num_users=num_users, dim=dim, embed_dim=embed_dim if dim != embed_dim else None, **sizes)


def fit_clip(data, clip_config, schedule: TrainConfig, run_dir: Path, *, resume: str | None = None,
             progress: bool = False):
    """Train a fresh embedding model on (image, user index) items; returns (EMA model, record).

    Args:
        data: a data set of (image, user index) items.
        clip_config: its `ClipConfig`.
        schedule: training settings (its seed also seeds the initial weights).
        run_dir: the run folder; checkpoints and logs go to `<run_dir>/clip/`.
        resume: None, "latest" or a checkpoint path.
        progress: show a progress bar.
    """

    torch.manual_seed(schedule.seed)
    model = MicroDopplerClip(clip_config)
    result = run_loop(model, data, schedule, Path(run_dir), "clip", resume=resume, model_config=clip_config.to_dict(),
                  progress=progress)
    return result.ema_model.eval(), result


def fit_vqgan(images: torch.Tensor, vq_config, schedule: TrainConfig, run_dir: Path, *, resume: str | None = None,
              progress: bool = False):
    """Train a fresh VQGAN autoencoder on images (N, C, H, W) in [-1, 1]; returns (VQGAN, record).

    The raw weights, not the EMA copy: the codebook is itself a moving average of the online
    encoder's outputs, and an averaged encoder would no longer match it. Args: as for `fit_clip`.
    """

    torch.manual_seed(schedule.seed)
    wrapper = VQGanLoss(build_vqgan(vq_config))
    result = run_loop(wrapper, torch.utils.data.TensorDataset(images), schedule, Path(run_dir), "vqgan", resume=resume,
                      model_config=vq_config.to_dict(), progress=progress)
    return result.model.vqgan.eval(), result


def user_table_size(decoder_fields: dict, num_users: int) -> dict:
    """`DecoderConfig` fields with `num_users` filled from the data when the decoder is
    user-conditioned (other decoders keep no user table)."""
    return {**decoder_fields, "num_users": num_users} if decoder_fields.get("user_conditioning") else dict(decoder_fields)


def fit_decoder(images: torch.Tensor, embeds: torch.Tensor, dec_config, schedule: TrainConfig, run_dir: Path, *,
                sample_fn=None, resume: str | None = None, vqgan=None, progress: bool = False,
                user_indices: torch.Tensor | None = None):
    """Train a fresh embedding-conditioned decoder on (image, image embedding) pairs (on cached
    VQGAN latents when `dec_config.use_vqgan`); returns (EMA decoder, record).

    Args: as for `fit_clip`, plus images (N, C, H, W) in [-1, 1], their embeds (N, D), the
        training loop's `sample_fn`, a trained `vqgan` to diffuse over (default: the one
        `dec_config.vqgan_path` names), and the images' user indices (N,) (a
        `user_conditioning` decoder needs them; other decoders never see them).
    """
    from dalle2_md.models.decoder import build_decoder

    torch.manual_seed(schedule.seed)
    decoder = channels_last_unet(build_decoder(dec_config, vqgan=vqgan))
    if decoder.config.user_conditioning and user_indices is None:
        raise UserError("a user-conditioned decoder trains on (image, embedding, user) triples; pass user_indices.")
    extra = (user_indices.long(),) if decoder.config.user_conditioning else ()
    if decoder.config.use_vqgan:
        # the VQGAN is frozen, so every image is encoded once here instead of at every step
        decoder.fit_latent_scale(images[:512])
        model = LatentLoss(decoder)
        data = torch.utils.data.TensorDataset(decoder.encode_latents(images), embeds, *extra)
    else:
        model, data = decoder, torch.utils.data.TensorDataset(images, embeds, *extra)
    result = run_loop(model, data, schedule, Path(run_dir), "decoder", resume=resume, sample_fn=sample_fn,
                  model_config=decoder.config.to_dict(), progress=progress)
    return unwrap_decoder(result.ema_model).eval(), result


def fit_upsampler(images: torch.Tensor, config, schedule: TrainConfig, run_dir: Path, *, sample_fn=None,
                  resume: str | None = None, progress: bool = False):
    """Train a fresh upsampler on full-size images (N, C, output_size, output_size) in [-1, 1]
    (its low-res inputs and random crops are made from them at every step); returns (EMA
    upsampler, record). Args: as for `fit_decoder`; `config` is an `UpsamplerConfig`."""
    from dalle2_md.models.upsampler import MicroDopplerUpsampler

    torch.manual_seed(schedule.seed)
    upsampler = MicroDopplerUpsampler(config=config)
    result = run_loop(upsampler, torch.utils.data.TensorDataset(images), schedule, Path(run_dir), "upsampler",
                      resume=resume, sample_fn=sample_fn, model_config=config.to_dict(), progress=progress)
    return result.ema_model.eval(), result


def fit_prior(embeds: torch.Tensor, user_indices: torch.Tensor, prior_config, schedule: TrainConfig, run_dir: Path,
              *, resume: str | None = None, progress: bool = False):
    """Train a fresh user-conditioned diffusion prior on (image embedding, user index) pairs;
    returns (EMA prior, record). Args: as for `fit_clip`."""
    from dalle2_md.models.prior import UserConditionedDiffusionPrior

    torch.manual_seed(schedule.seed)
    prior = UserConditionedDiffusionPrior(prior_config)
    data = torch.utils.data.TensorDataset(embeds, user_indices)
    result = run_loop(prior, data, schedule, Path(run_dir), "prior", resume=resume, model_config=asdict(prior_config),
                  progress=progress)
    return result.ema_model.eval(), result


@dataclass
class TwoStageModels:
    """What `train_two_stage` returns: the three trained parts, each stage's training record and
    seconds."""

    clip: nn.Module
    decoder: nn.Module
    prior: nn.Module
    vqgan: nn.Module | None = None  # with `budget.vqgan_train_steps`: the autoencoder under the decoder (its bundle holds it too)
    results: dict[str, TrainResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _decoder_seconds(budget: GeneratorBudget, out: "TwoStageModels") -> float | None:
    """What is left of `budget.decoder_seconds` for the decoder once the VQGAN has trained."""
    if budget.decoder_seconds is None:
        return None
    return max(1e-3, budget.decoder_seconds - out.seconds.get("vqgan", 0.0))


def train_two_stage(images: torch.Tensor, user_indices: torch.Tensor, *, num_users: int, budget: GeneratorBudget,
                    seed: int = 0, work_dir: str | Path, progress: bool = False,
                    vqgan_cache: str | Path | None = None) -> TwoStageModels:
    """Embedding model -> [VQGAN] -> decoder -> prior, trained on exactly these tensors (nothing
    else); the core under the demo, the augmentation harness and the quality benchmark (the
    training commands run the same `fit_*` parts one command at a time). The VQGAN is trained when
    `budget.vqgan_train_steps` > 0; the decoder then diffuses over its latent.

    Args:
        images: (N, C, H, W) in [-1, 1].
        user_indices: (N,) contiguous user indices 0..num_users-1.
        num_users: number of users the models know.
        budget: sizes and step counts.
        seed: seeds every stage (each stage's weights start from `torch.manual_seed(seed)`).
        work_dir: folder of the training loop's checkpoints and logs (one subfolder per stage).
        progress: progress bars.
        vqgan_cache: folder where `fit_budget_vqgan` finds (or leaves) the VQGAN.
    """
    from dalle2_md.models.embedding import compute_image_embeds

    work_dir = Path(work_dir)
    _, channels, size, _ = images.shape
    out = TwoStageModels(clip=None, decoder=None, prior=None)

    def timed(name, fn):
        start = time.perf_counter()
        model, out.results[name] = fn()
        out.seconds[name] = time.perf_counter() - start
        return model

    clip_config = clip_config_for(num_users=num_users, channels=channels, image_size=size, sizes=budget.clip)
    dec_config = latent_decoder_config(DecoderConfig(image_size=size, channels=channels,
                                                     image_embed_dim=clip_config.dim_latent,
                                                     **user_table_size(budget.decoder, num_users)), budget)
    schedule = lambda steps, batch: budget.schedule(steps, batch, seed)
    # the stages reseed the global RNG; the caller's stream is left as it was
    with torch.random.fork_rng(devices=[]):
        out.clip = timed("clip", lambda: fit_clip(torch.utils.data.TensorDataset(images, user_indices), clip_config,
                                                  schedule(budget.clip_train_steps, budget.batch_size), work_dir,
                                                  progress=progress))
        embeds = compute_image_embeds(out.clip, images)
        if budget.vqgan_train_steps:
            out.vqgan = timed("vqgan", lambda: fit_budget_vqgan(images, dec_config, budget, seed, work_dir,
                                                                progress=progress, cache_dir=vqgan_cache))
        out.decoder = timed("decoder", lambda: fit_decoder(
            images, embeds, dec_config,
            replace(budget.decoder_schedule(seed), max_seconds=_decoder_seconds(budget, out)),
            work_dir, vqgan=out.vqgan, progress=progress, user_indices=user_indices))
        out.prior = timed("prior", lambda: fit_prior_for_clip(out.clip, images, user_indices, num_users=num_users,
                                                              budget=budget, seed=seed, work_dir=work_dir,
                                                              progress=progress, embeds=embeds))
    out.decoder.meta = {"clip_fingerprint": out.clip.fingerprint}
    return out


def latent_decoder_config(dec_config, budget: GeneratorBudget):
    """`dec_config` over the latent of the budget's VQGAN when `budget.vqgan_train_steps` > 0 (else as
    it is): the two-stage decoder and the single-stage baseline build theirs the same way."""
    from dalle2_md.training.presets import cpu_vqgan_sizes

    if not budget.vqgan_train_steps:
        return dec_config
    vq_config = VQGanConfig(image_size=dec_config.image_size, channels=dec_config.channels,
                            **(budget.vqgan or cpu_vqgan_sizes()))
    return replace(dec_config, use_vqgan=True, vqgan=vq_config)


def fit_budget_vqgan(images: torch.Tensor, dec_config, budget: GeneratorBudget, seed: int, work_dir: str | Path, *,
                     progress: bool = False, cache_dir: str | Path | None = None):
    """The VQGAN of a latent `dec_config` (see `latent_decoder_config`), trained for
    `budget.vqgan_train_steps` at batch `decoder_batch_size` and lr `vqgan_lr`. Returns (VQGAN, record).

    With `cache_dir`, a VQGAN trained before on the same images, config and schedule is loaded
    from there (its record then carries the saved step count and final loss, 0 seconds) instead
    of trained again: the two-stage chain and the single-stage
    baseline of one data set train this same autoencoder, seed for seed."""
    from dalle2_md.models.bundle import load_bundle
    from dalle2_md.models.vqgan import load_vqgan, save_vqgan

    schedule = replace(budget.schedule(budget.vqgan_train_steps, budget.decoder_batch_size, seed), lr=budget.vqgan_lr)
    if not exists(cache_dir):
        return fit_vqgan(images, dec_config.vqgan, schedule, Path(work_dir), progress=progress)
    path = vqgan_cache_path(cache_dir, images, dec_config.vqgan, schedule)
    with claimed(path, on_wait=say):
        if path.exists():
            vqgan, meta = load_vqgan(path)[0], load_bundle(path, kind="vqgan")["meta"]
            say(f"[vqgan] found in {path}")
            # the record of the run that trained it: nothing was trained here
            return vqgan, TrainResult(model=vqgan, ema_model=vqgan, step=int(meta.get("steps", 0)), seconds=0.0,
                                      losses=[float(meta["final_loss"])] if "final_loss" in meta else [],
                                      start_step=int(meta.get("steps", 0)))
        vqgan, result = fit_vqgan(images, dec_config.vqgan, schedule, Path(work_dir), progress=progress)
        tail = result.losses[-max(1, len(result.losses) // 10):]
        save_vqgan(path, vqgan, dec_config.vqgan,
                   meta={"steps": result.step, "final_loss": float(sum(tail) / len(tail)) if tail else float("nan")})
        return vqgan, result


def vqgan_cache_path(cache_dir: str | Path, images: torch.Tensor, vq_config, schedule: TrainConfig) -> Path:
    """`fit_budget_vqgan`'s cache file: named by a hash of the images' bytes, the VQGAN config and
    the training schedule."""
    return Path(cache_dir) / f"vqgan_{content_digest([images], [vq_config.to_dict(), asdict(schedule)])}.pt"


def fit_prior_for_clip(clip, images: torch.Tensor, user_indices: torch.Tensor, *, num_users: int,
                       budget: GeneratorBudget, seed: int, work_dir: str | Path, progress: bool = False,
                       embeds: torch.Tensor | None = None):
    """The prior stage of `train_two_stage` on its own: a fresh prior on the embeddings `clip`
    gives these images (the same prior `train_two_stage` trains with this budget and seed, so a
    cached embedding model and decoder can get a prior of another budget without retraining
    them); returns (EMA prior, record)."""
    from dalle2_md.models.embedding import compute_image_embeds

    embeds = compute_image_embeds(clip, images) if embeds is None else embeds
    prior_config = prior_config_for(num_users=num_users, embed_dim=clip.config.dim_latent, sizes=budget.prior)
    with torch.random.fork_rng(devices=[]):
        prior, result = fit_prior(embeds, user_indices, prior_config, budget.schedule(budget.prior_train_steps, budget.batch_size, seed),
                                  Path(work_dir), progress=progress)
    prior.meta = {"clip_fingerprint": clip.fingerprint}
    return prior, result


def train_clip(
    images: torch.Tensor,
    user_indices: torch.Tensor,
    config: ClipConfig,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-4,
    seed: int = 0,
    progress: bool = True,
) -> MicroDopplerClip:
    """Train a `MicroDopplerClip` in memory through the loop the `clip` stage runs
    (`training.train`: AdamW, constant lr, gradient clipping at 1, EMA); returns the EMA copy, the
    model the stage keeps, in eval mode.

    Args:
        images: (N, C, H, W) float spectrograms (the data layer's value range).
        user_indices: (N,) int user indices in 0..config.num_users-1.
        config: model configuration.
        steps: optimisation steps.
        batch_size: images per step (at least 2: the SSL head uses BatchNorm).
        lr: learning rate.
        seed: seeds model init, batch order and augmentations.
        progress: show a tqdm bar with the loss.
    """

    if len(images) < 2:
        raise UserError(f"need at least 2 images to train the embedding model, got {len(images)}.")
    user_indices = torch.as_tensor(user_indices).long()
    torch.manual_seed(seed)  # the initial weights, as the stage draws them
    model = MicroDopplerClip(config)
    model._check_inputs(images, user_indices)
    batch_size = max(2, min(batch_size, len(images)))
    result = train(model, torch.utils.data.TensorDataset(images, user_indices),
                   TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, seed=seed), run_dir=None,
                   stage="clip", model_config=config.to_dict(), progress=progress)
    return result.ema_model.eval()


def train_vqgan(
    images: torch.Tensor,
    config: VQGanConfig,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    vqgan=None,
    progress: bool = False,
):
    """Train a VQGAN on a tensor of images, in memory, through the loop the `vqgan` stage runs
    (`training.train`: AdamW, warmup-free constant lr, gradient clipping at 1, no checkpoints kept).

    The global RNGs are left as they were.

    Args:
        images: (N, C, H, W) float images in [-1, 1].
        config: the autoencoder's shape; must match the images.
        steps: optimiser steps.
        batch_size: images per step (shuffled epochs of the set, as the stage draws them).
        lr: learning rate.
        seed: seeds the initial weights, the codebook's k-means init and the batch order.
        vqgan: continue training this model instead of building a fresh one.
        progress: show a tqdm bar.

    Returns:
        (vqgan in eval mode, list of per-step losses). Like the stage, the raw weights, not an
        EMA copy: the codebook is itself a moving average of the online encoder's outputs.
    """
    from dalle2_md.training.checkpoints import kept_global_rng

    _check_images(images, config)
    with kept_global_rng():
        torch.manual_seed(seed)
        if vqgan is None:
            vqgan = build_vqgan(config)
        result = train(VQGanLoss(vqgan), torch.utils.data.TensorDataset(images.float()),
                       TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, seed=seed), run_dir=None,
                       stage="vqgan", model_config=config.to_dict(), progress=progress)
    return result.model.vqgan.eval(), result.losses


def train_baseline(
    images: torch.Tensor,
    user_indices: torch.Tensor,
    *,
    num_users: int,
    decoder_config: DecoderConfig,
    train_config: TrainConfig,
    run_dir: str | Path,
    label_map: dict | None = None,
    colormap: str | None = None,
    progress: bool = True,
    vqgan: nn.Module | None = None,
) -> tuple[SingleStageBaseline, TrainResult]:
    """Train the single-stage baseline with the shared training loop (a latent one on the
    images' VQGAN latents, encoded once: the VQGAN is frozen, as under the two-stage decoder).

    Args:
        images: (N, C, H, W) training images in [-1, 1].
        user_indices: (N,) contiguous user indices.
        num_users: size of the user table.
        decoder_config: the decoder's shape (same as the two-stage decoder's for a fair comparison).
        train_config: steps, batch size, lr, seed, ...
        run_dir: folder for the loop's checkpoints and TensorBoard logs.
        label_map, colormap: stored with the model.
        progress: show a progress bar.
        vqgan: the trained VQGAN a latent `decoder_config` (`use_vqgan`) diffuses over.
    Returns:
        (the EMA model in eval mode, the loop's `TrainResult`).
    """
    images, user_indices = torch.as_tensor(images).float(), torch.as_tensor(user_indices).long().reshape(-1)
    if len(images) != len(user_indices) or len(images) == 0:
        raise UserError(f"baseline training needs N images and N user indices, got {len(images)} and "
                        f"{len(user_indices)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_config.seed)
        model = SingleStageBaseline(num_users=num_users, config=decoder_config, label_map=label_map, colormap=colormap,
                                    vqgan=vqgan)
    channels_last_unet(model.decoder)  # as the two-stage decoder trains
    if decoder_config.use_vqgan:
        if vqgan is None:
            raise UserError("a latent baseline (use_vqgan) trains over a trained VQGAN; pass vqgan=.")
        model.decoder.fit_latent_scale(images[:512])
        data = torch.utils.data.TensorDataset(model.decoder.encode_latents(images), user_indices)
        model = LatentLoss(model)
    else:
        data = torch.utils.data.TensorDataset(images, user_indices)
    result = train(model, data, train_config, run_dir=run_dir, stage="baseline", progress=progress,
                   model_config={"baseline": True, "num_users": num_users, "decoder": decoder_config.to_dict()})
    ema = unwrap_decoder(result.ema_model).eval()
    ema.meta = {"steps": result.step, "num_train_images": len(images)}
    return ema, result


class LatentLoss(nn.Module):
    """`loss = module(latents, *condition)`: a latent decoder, or the latent single-stage
    baseline, trained on cached VQGAN latents (the training loop hands batches over positionally;
    the wrapped module takes the latents by keyword, with no images)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, latents, *condition):
        return self.inner(None, *condition, latents=latents)


def unwrap_decoder(module):
    """The model inside a trained module (latent decoders and baselines are trained wrapped)."""
    return module.inner if isinstance(module, LatentLoss) else module


def channels_last_unet(decoder: nn.Module) -> nn.Module:
    """Store a latent decoder's denoising network 4-d weights channels-last (NHWC) for training:
    its convolutions then pick NHWC kernels, faster on the latent decoders only (chosen by
    `experiments/bench_memory_format.py`, see docs/results.md), so pixel decoders are left as they
    are. Bundles save contiguous copies: files are unchanged."""
    from dalle2_md.models.compat import decoder_unet

    if decoder.config.use_vqgan:
        decoder_unet(decoder.decoder).to(memory_format=torch.channels_last)
    return decoder
