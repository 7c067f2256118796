"""Image variations (DALL-E 2's own feature) and SDEdit ("real guidance") from real spectrograms.

Owns `variations_of` (embed a real spectrogram with the embedding model, decode that embedding
from fresh noise several times), `sdedit` (noise the real image to an intermediate step of the
decoder's schedule and run DDIM only over the remaining steps, conditioned on its own
embedding; Meng et al. 2022, "SDEdit"), reading one real image for them, and the
`dalle2-md variations` workflow. Both functions take and return model-space tensors in [-1, 1],
so the augmentation harness can use them as generators.

`model` is anything with `.decoder` (a `MicroDopplerDecoder`) and `.clip` (the embedding model
the decoder was trained on): a `MicroDopplerDALLE2` loaded from a chained bundle or with a
clip_path, or an `EmbeddingDecoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from dalle2_md.defaults import DEFAULTS
from dalle2_md.sampling import ddim_timesteps, keyed_generators, randn
from dalle2_md.utils import BundleError, UserError, exists


@dataclass
class EmbeddingDecoder:
    """A decoder with the embedding model it was trained on (no prior needed for variations)."""

    decoder: torch.nn.Module
    clip: torch.nn.Module
    colormap: str = "jet"
    upsampler: torch.nn.Module | None = None  # applied to what is written, as in the chain
    output_size: int | None = None

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device


def _check(model, images: torch.Tensor) -> torch.Tensor:
    if not exists(getattr(model, "clip", None)):
        raise UserError("variations need the embedding model the decoder was trained on: load the chain with "
                        "--clip_path <decoder run>/clip_final.pt, or use a chained 'dalle2' bundle.")
    c = model.decoder.config
    expected = (c.channels, c.image_size, c.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise UserError(f"images have shape {tuple(images.shape)} but the decoder makes (N, {expected[0]}, {expected[1]}, "
                        f"{expected[2]}) images; read them at the decoder's size and colormap.")
    return images.float().to(next(model.decoder.parameters()).device)


@torch.no_grad()
def embed(model, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, D) unit-norm image embeddings of the decoder's embedding model."""
    from dalle2_md.models.embedding import compute_image_embeds

    images = _check(model, images)
    return compute_image_embeds(model.clip, images).to(images.device)


@torch.no_grad()
def users_for(model, image_embeds: torch.Tensor, user_indices=None) -> torch.Tensor | None:
    """The per-image users a user-conditioned decoder needs (None for one that is not): the
    given `user_indices`, or else each image's user as the embedding model reads it (the user
    token whose embedding is nearest the image's, CLIP's zero-shot classification)."""
    if not model.decoder.config.user_conditioning:
        return None
    device = image_embeds.device
    if exists(user_indices):
        users = torch.as_tensor(user_indices, device=device).long()
        if users.shape != (len(image_embeds),):
            raise UserError(f"{users.numel()} user indices for {len(image_embeds)} images; give one per image.")
        return users
    num_users = model.decoder.config.num_users
    tokens = model.clip.embed_users(torch.arange(num_users, device=device)).to(device)
    return (image_embeds @ tokens.T).argmax(dim=-1)


# keys the variation noise apart from the chain's prior (0) and decoder (1) streams
_VARIATION_STREAM = 2


def _generators(seed: int, n_images: int, n: int) -> list[torch.Generator]:
    # output j of image i draws its noise (start and per-step) from (seed, i, j) alone: it does
    # not depend on the other images asked for at the same time, nor on the batch size
    return keyed_generators(seed, _VARIATION_STREAM, [("image", i, j) for i in range(n_images) for j in range(n)])


@torch.no_grad()
def variations_of(model, images: torch.Tensor, n: int = 8, seed: int = 0, *, cond_scale: float = DEFAULTS.cond_scale,
                  steps: int | None = DEFAULTS.decoder_steps, eta: float = DEFAULTS.eta, sampler: str | None = None,
                  batch_size: int = 64, user_indices=None) -> torch.Tensor:
    """Decode each image's own embedding from `n` different noises.

    Args:
        model: `.decoder` + `.clip` (see the module docstring).
        images: (N, C, H, W) in [-1, 1] real spectrograms at the decoder's size.
        n: variations per image.
        seed: same seed, same variations.
        cond_scale: decoder guidance on the embedding (1 = none).
        steps: network evaluations (default the decoder's `sample_timesteps`).
        eta: DDIM eta.
        sampler: "ddim" or "dpmpp_2m" (default `DEFAULT_SAMPLER`; ddim when eta > 0).
        batch_size: images decoded at once.
        user_indices: (N,) each image's user, for a user-conditioned decoder (default: the user
            the embedding model reads from the image, `users_for`).
    Returns:
        (N * n, C, H, W) in [-1, 1], image-major (the n variations of image 0 first).
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    own = embed(model, images)
    users = _repeat(users_for(model, own, user_indices), n)
    embeds = own.repeat_interleave(n, dim=0)
    gens = _generators(seed, len(images), n)
    out = [model.decoder.sample(embeds[s:s + batch_size], user_indices=_rows(users, s, batch_size), cond_scale=cond_scale,
                                timesteps=steps, eta=eta, sampler=sampler, generator=gens[s:s + batch_size])
           for s in range(0, len(embeds), batch_size)]
    return torch.cat(out).cpu() * 2.0 - 1.0


def _repeat(users, n):
    return None if users is None else users.repeat_interleave(n, dim=0)


def _rows(users, start, size):
    return None if users is None else users[start:start + size]


def sdedit_timesteps(num_train_timesteps: int, strength: float, steps: int) -> list[int]:
    """The descending times SDEdit runs: it starts at t = round(strength * T) - 1 and then
    follows the full `steps`-step DDIM schedule below it. Empty for strength 0."""
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"--strength must lie in [0, 1], got {strength}")
    start = int(round(strength * num_train_timesteps)) - 1
    if start < 0:
        return []
    return [start] + [t for t in ddim_timesteps(num_train_timesteps, steps) if t < start]


@torch.no_grad()
def sdedit(model, images: torch.Tensor, strength: float = 0.5, seed: int = 0, *, n: int = 1,
           cond_scale: float = DEFAULTS.cond_scale, steps: int | None = DEFAULTS.decoder_steps, eta: float = DEFAULTS.eta,
           batch_size: int = 64, image_embeds: torch.Tensor | None = None, user_indices=None) -> torch.Tensor:
    """SDEdit from real images: noise each to the step `strength` of the way into the decoder's
    schedule, then denoise with DDIM over the remaining steps, conditioned on its own embedding
    (or on given ones).

    Strength 0 returns the images unchanged; strength 1 starts from (almost) pure noise and is
    then a variation.

    Args:
        model: `.decoder` + `.clip` (see the module docstring).
        images: (N, C, H, W) in [-1, 1] at the decoder's size.
        strength: fraction of the schedule to noise to, in [0, 1].
        seed: same seed, same outputs.
        n: outputs per image (different noise each).
        cond_scale, eta, batch_size: as in `variations_of`.
        steps: DDIM steps of a full schedule; SDEdit runs those below its start (about
            strength x steps of them).
        image_embeds: (N * n, D) embeddings to condition output i * n + j on, image-major
            (default: each image's own embedding, n times).
        user_indices: (N,) each image's user, as in `variations_of`.
    Returns:
        (N * n, C, H, W) in [-1, 1], image-major.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    decoder = model.decoder
    c = decoder.config
    times = sdedit_timesteps(c.timesteps, strength, steps or c.sample_timesteps)
    x = _check(model, images)
    if not times:
        return x.cpu().repeat_interleave(n, dim=0)
    own = embed(model, x) if image_embeds is None or c.user_conditioning else None
    users = _repeat(users_for(model, own, user_indices), n)
    if image_embeds is None:
        embeds = own.repeat_interleave(n, dim=0)
    elif tuple(image_embeds.shape[:1]) != (len(x) * n,):
        raise UserError(f"sdedit got {len(image_embeds)} embeddings for {len(x)} images x {n} outputs each")
    else:
        embeds = image_embeds.float().to(x.device)
    x_start = decoder.encode_latents(x) if c.use_vqgan else x
    x_start = x_start.repeat_interleave(n, dim=0)
    gens = _generators(seed, len(images), n)
    noise = randn(x_start.shape, gens, x.device)
    from dalle2_md.models.compat import alphas_cumprod  # here: importing this module must not load dalle2-pytorch

    a_t = alphas_cumprod(decoder.noise_scheduler)[times[0]].float().to(x.device)
    x_t = a_t.sqrt() * x_start + (1 - a_t).sqrt() * noise  # q(x_t | x_0)
    # DDIM over the explicit remaining times; the generators go on to the per-step noise (eta > 0)
    out = [decoder.sample(embeds[s:s + batch_size], user_indices=_rows(users, s, batch_size), cond_scale=cond_scale,
                          timesteps=times, noise=x_t[s:s + batch_size], eta=eta, sampler="ddim",
                          generator=gens[s:s + batch_size])
           for s in range(0, len(embeds), batch_size)]
    return torch.cat(out).cpu() * 2.0 - 1.0


# --------------------------------------------------------------------------------------------
# reading images and the workflow


def read_image(path: str | Path, *, image_size: int, colormap: str | None, resize: bool = False) -> torch.Tensor:
    """One spectrogram file -> (1, C, H, W) in [-1, 1], as the data loader decodes it.

    Args:
        path: PNG (or any image the data loader reads).
        image_size: the model's side.
        colormap: the model's colormap ("none" keeps RGB).
        resize: accept another size and resize it as training data is resized; without it a
            size mismatch is refused.
    """
    from PIL import Image, UnidentifiedImageError

    from dalle2_md.data.dataset import _decode, _normalise_colormap

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--image {path} does not exist; give a spectrogram PNG.")
    try:
        with Image.open(path) as im:
            size = im.size
        if size != (image_size, image_size) and not resize:
            raise UserError(f"--image {path} is {size[0]}x{size[1]} but the model makes {image_size}x{image_size} images; "
                            "pass --resize to resize it as training data is resized, or give an image of that size.")
        array, _ = _decode(path, image_size, _normalise_colormap(colormap))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"--image {path} is not a readable image ({str(e)[:120]}).") from None
    return torch.from_numpy(array)[None].float() * 2.0 - 1.0  # (1, C, H, W)


def load_embedding_decoder(*, model_path=None, decoder_path=None, clip_path=None, prior_path=None, device: str = "cpu",
                           upsampler_path=None, output_size: int | None = None):
    """A chained bundle, or a decoder with its embedding model (a prior is not needed), with the
    upsampler and output size of `samples.load_generator`."""
    from dalle2_md.models.embedding import MicroDopplerClip
    from dalle2_md.models.decoder import MicroDopplerDecoder
    from dalle2_md.models.chain import check_same_embedding
    from dalle2_md.models.upsampler import MicroDopplerUpsampler, check_upsampler_fits
    from dalle2_md.generation.samples import find_upsampler, load_generator

    if exists(model_path) or exists(prior_path):
        model = load_generator(model_path=model_path, prior_path=prior_path, decoder_path=decoder_path, clip_path=clip_path,
                               device=device, upsampler_path=upsampler_path, output_size=output_size)
        if not exists(model.clip):
            raise UserError("variations need the embedding model: pass --clip_path <decoder run>/clip_final.pt "
                            "(this bundle or pair does not carry it).")
        return model
    if not (exists(decoder_path) and exists(clip_path)):
        raise UserError("variations need --model_path (a chained bundle), or --decoder_path with --clip_path "
                        "(decoder_final.pt and clip_final.pt of the decoder run).")
    decoder, clip = MicroDopplerDecoder.load(decoder_path), MicroDopplerClip.load(clip_path)
    try:
        check_same_embedding(None, decoder, clip)
    except BundleError as e:
        raise BundleError(f"{decoder_path} + {clip_path}: {e}") from None
    colormap = (getattr(decoder, "meta", None) or {}).get("colormap") or ("jet" if decoder.config.channels == 1 else "none")
    where = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    upsampler = find_upsampler(upsampler_path, decoder_path)
    if exists(upsampler):
        upsampler = MicroDopplerUpsampler.load(upsampler)
        check_upsampler_fits(decoder, upsampler)
        upsampler = upsampler.to(where)
    return EmbeddingDecoder(decoder=decoder.to(where).eval(), clip=clip.to(where).eval(), colormap=colormap,
                            upsampler=upsampler, output_size=output_size)


def write_variations(model, image_paths: Sequence[str | Path], output_dir: str | Path, *, n: int = 8, seed: int = 0,
                     strength: float | None = None, cond_scale: float = DEFAULTS.cond_scale, steps: int | None = None,
                     eta: float = DEFAULTS.eta, sampler: str | None = None, resize: bool = False) -> dict:
    """For each image: `<stem>_variation_000.png ...` (or `<stem>_sdedit_000.png` with a
    strength) and `<stem>_grid.png`, the input first, then its n outputs; upsampled and resized
    as the model's `upsampler` and `output_size` say (`upsampler.to_output_size`), the input
    shown at that size too.

    Returns:
        {"images": [paths], "grids": [paths]}
    """
    from dalle2_md.data.display import GRID_MIN_TILE, colourise, save_grid, write_png
    from dalle2_md.models.upsampler import UPSAMPLER_STREAM, resize_images, to_output_size

    c = model.decoder.config
    out = Path(output_dir)
    written, grids = [], []
    for i, path in enumerate(image_paths):
        real = read_image(path, image_size=c.image_size, colormap=model.colormap, resize=resize)
        if exists(strength):
            made, kind = sdedit(model, real, strength, seed, n=n, cond_scale=cond_scale, steps=steps, eta=eta), "sdedit"
        else:
            made = variations_of(model, real, n, seed, cond_scale=cond_scale, steps=steps, eta=eta, sampler=sampler)
            kind = "variation"
        upsampler = getattr(model, "upsampler", None)
        gens = keyed_generators(seed, UPSAMPLER_STREAM, [(kind, i, j) for j in range(n)]) if exists(upsampler) else None
        made = to_output_size(((made + 1) / 2).to(model.device), upsampler=upsampler,  # [-1, 1] -> [0, 1]
                              output_size=getattr(model, "output_size", None), generator=gens).cpu()
        stem = Path(path).stem
        for j, rgb in enumerate(colourise(made, model.colormap)):
            target = out / f"{stem}_{kind}_{j:03d}.png"
            write_png(rgb, target)
            written.append(target)
        shown = resize_images((real + 1) / 2, made.shape[-1])
        grids.append(save_grid(torch.cat([shown, made]), out / f"{stem}_grid.png", nrow=n + 1,
                               colormap=model.colormap, min_tile=GRID_MIN_TILE))
    return {"images": written, "grids": grids}
