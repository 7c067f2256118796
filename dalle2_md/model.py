"""`MicroDopplerDALLE2`: the chain user ID -> prior -> image embedding -> decoder -> spectrogram.

Owns sampling with exact counts, guidance scales and step counts per stage, seeded noise that
depends only on (seed, sample index) so one user's samples do not change with the other users in
the batch, user-to-user interpolation, re-colouring scalar spectrograms, and the chained bundle
(kind "dalle2") or loading from the prior and decoder files the seed's scripts write.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .bundle import load_bundle, save_bundle
from .clip import ClipConfig, MicroDopplerClip
from .colormap import scalar_to_rgb
from .decoder import DecoderConfig, MicroDopplerDecoder
from .prior import PriorConfig, UserConditionedDiffusionPrior
from .utils import BundleError, UserError, exists

# offsets that make the prior's and the decoder's noise streams independent for one seed
_PRIOR_STREAM, _DECODER_STREAM = 0, 1


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of directions, linear interpolation of norms; exact at t=0, 1.

    Args:
        a, b: (..., D) vectors.
        t: position in [0, 1].
    """
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    unit_a, unit_b = a / norm_a.clamp(min=1e-8), b / norm_b.clamp(min=1e-8)
    cos = (unit_a * unit_b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(cos)
    direction = (torch.sin((1 - t) * omega) * unit_a + torch.sin(t * omega) * unit_b) / torch.sin(omega)
    return direction * ((1 - t) * norm_a + t * norm_b)


def _noise(seed: int, stream: int, shape: tuple[int, ...], device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed) * 2 + stream)
    return torch.randn(shape, generator=generator).to(device)


def decode_with_shared_noise(decoder, image_embeds: torch.Tensor, *, num_samples_per_user: int = 1, seed: int = 0,
                             cond_scale: float = 1.0, steps: int | None = None) -> torch.Tensor:
    """Decode user-major embeddings (groups of `num_samples_per_user`) to images in [0, 1]:
    sample j of every group starts from decoder noise j of `seed`, so a user's samples do not
    depend on which other users are in the batch. Shared by the chain and the baseline."""
    noise = _noise(seed, _DECODER_STREAM, (num_samples_per_user, *decoder.diffused_shape), image_embeds.device)
    noise = noise.repeat(image_embeds.shape[0] // num_samples_per_user, 1, 1, 1)
    return decoder.sample(image_embeds, cond_scale=cond_scale, timesteps=steps, noise=noise, eta=0.0)


class MicroDopplerDALLE2(nn.Module):
    """Prior and decoder trained on the same embedding model, chained.

    Args:
        prior: a trained `UserConditionedDiffusionPrior`.
        decoder: a trained `MicroDopplerDecoder`.
        clip: the embedding model both were trained on (optional for sampling; kept so that a
            chained bundle can embed real spectrograms too).
        label_map: the data set's label map as a dict (`LabelMap.to_dict()`); default the prior's.
        colormap: the colormap the data set was drawn with ("jet"), or "none" for RGB models.
    """

    def __init__(
        self,
        *,
        prior: UserConditionedDiffusionPrior,
        decoder: MicroDopplerDecoder,
        clip: MicroDopplerClip | None = None,
        label_map: dict | None = None,
        colormap: str | None = None,
    ):
        super().__init__()
        check_same_embedding(prior, decoder, clip)
        if prior.image_embed_dim != decoder.config.image_embed_dim:
            raise BundleError(
                f"the prior makes {prior.image_embed_dim}-d embeddings but the decoder takes "
                f"{decoder.config.image_embed_dim}-d ones; train both on the same embedding model."
            )
        self.prior, self.decoder, self.clip = prior, decoder, clip
        self.label_map = label_map if exists(label_map) else getattr(prior, "label_map", None)
        decoder_meta = getattr(decoder, "meta", None) or {}
        self.colormap = colormap or decoder_meta.get("colormap") or ("jet" if decoder.config.channels == 1 else "none")

    @property
    def num_users(self) -> int:
        return self.prior.config.num_users

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def user_index(self, label) -> int:
        """Contiguous index of a user given by its original label ("ID_5", "5", 5) when a label
        map is known, else by index. Unknown users raise a UserError listing the valid ones."""
        if exists(self.label_map):
            from .data import LabelMap

            return LabelMap.from_dict(self.label_map).index_of(label)
        try:
            index = int(label)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < self.num_users:
            raise UserError(f"unknown user {label!r}: this model knows users 0..{self.num_users - 1}.")
        return index

    def _check_users(self, user_ids: Sequence[int]) -> list[int]:
        ids = [int(u) for u in (user_ids.tolist() if torch.is_tensor(user_ids) else user_ids)]
        bad = [u for u in ids if not 0 <= u < self.num_users]
        if bad:
            raise UserError(f"user indices {bad} out of range: this model knows 0..{self.num_users - 1}.")
        return ids

    @torch.no_grad()
    def sample_image_embeds(
        self,
        user_ids: Sequence[int],
        *,
        num_samples_per_user: int = 1,
        prior_cond_scale: float = 1.0,
        prior_steps: int | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """(len(user_ids) * num_samples_per_user, D) embeddings, user-major. Sample j of every
        user starts from the same prior noise, so a user's samples do not depend on the batch."""
        ids = self._check_users(user_ids)
        noise = _noise(seed, _PRIOR_STREAM, (num_samples_per_user, self.prior.image_embed_dim), self.device)
        return self.prior.sample(
            ids,
            num_samples_per_user,
            cond_scale=prior_cond_scale,
            timesteps=prior_steps,
            eta=0.0,
            noise=noise.repeat(len(ids), 1),
        )

    @torch.no_grad()
    def decode(self, image_embeds: torch.Tensor, *, cond_scale: float = 1.0, decoder_steps: int | None = None,
               seed: int = 0, num_samples_per_user: int | None = None, colorize: bool = True) -> torch.Tensor:
        """Decode embeddings to images in [0, 1]; sample j of each group of
        `num_samples_per_user` starts from decoder noise j (default: every embedding gets noise 0)."""
        images = decode_with_shared_noise(self.decoder, image_embeds, num_samples_per_user=num_samples_per_user or 1,
                                          seed=seed, cond_scale=cond_scale, steps=decoder_steps)
        return self.colorize(images) if colorize else images

    @torch.no_grad()
    def sample(
        self,
        user_ids: Sequence[int],
        *,
        num_samples_per_user: int = 1,
        cond_scale: float = 1.0,
        prior_cond_scale: float = 1.0,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        seed: int = 0,
        colorize: bool = True,
    ) -> torch.Tensor:
        """Generate spectrograms for users.

        Args:
            user_ids: contiguous user indices (use `user_index` to turn labels into indices).
            num_samples_per_user: images per listed user.
            cond_scale: decoder guidance on the image embedding (1 = none).
            prior_cond_scale: prior guidance on the user ID (1 = none).
            prior_steps, decoder_steps: DDIM steps (default: each stage's `sample_timesteps`).
            seed: same seed, same images.
            colorize: re-apply the data set's colormap to scalar models (RGB output).
        Returns:
            (len(user_ids) * num_samples_per_user, C, H, W) in [0, 1], user-major (all samples
            of user_ids[0] first); C = 3 when colorized, else the model's channels.
        """
        if num_samples_per_user < 1:
            raise UserError(f"num_samples_per_user must be at least 1, got {num_samples_per_user}.")
        embeds = self.sample_image_embeds(
            user_ids, num_samples_per_user=num_samples_per_user, prior_cond_scale=prior_cond_scale,
            prior_steps=prior_steps, seed=seed,
        )
        return self.decode(embeds, cond_scale=cond_scale, decoder_steps=decoder_steps, seed=seed,
                           num_samples_per_user=num_samples_per_user, colorize=colorize)

    @torch.no_grad()
    def interpolate(
        self,
        user_a: int,
        user_b: int,
        *,
        steps: int = 8,
        seed: int = 0,
        cond_scale: float = 1.0,
        prior_cond_scale: float = 1.0,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        colorize: bool = True,
    ) -> torch.Tensor:
        """Frames along the great circle between two users' sampled embeddings, all decoded from
        the same noise; frame 0 equals `sample([user_a], seed=seed)` and the last frame
        `sample([user_b], seed=seed)`.

        Returns:
            (steps, C, H, W) in [0, 1].
        """
        if steps < 2:
            raise UserError(f"interpolation needs at least 2 steps, got {steps}.")
        ends = self.sample_image_embeds(
            [user_a, user_b], prior_cond_scale=prior_cond_scale, prior_steps=prior_steps, seed=seed
        )
        positions = np.linspace(0.0, 1.0, steps)
        embeds = torch.stack([slerp(ends[0], ends[1], float(t)) for t in positions])
        # every frame starts from the same decoder noise: that of sample 0 of `sample`
        return self.decode(embeds, cond_scale=cond_scale, decoder_steps=decoder_steps, seed=seed, colorize=colorize)

    def colorize(self, images: torch.Tensor) -> torch.Tensor:
        """Scalar images (B, 1, H, W) in [0, 1] -> RGB through the colormap; RGB passes through."""
        if images.shape[1] != 1 or self.colormap == "none":
            return images
        rgb = scalar_to_rgb(images[:, 0].cpu().numpy(), self.colormap)
        return torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div(255.0).to(images.device)

    @staticmethod
    def to_pil(images: torch.Tensor) -> list:
        """(B, C, H, W) in [0, 1] -> PIL images (RGB for 3 channels, L for 1)."""
        from PIL import Image

        arrays = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]

    # bundles

    def save(self, path: str | Path) -> Path:
        """One "dalle2" bundle holding the prior, the decoder and (if present) the embedding model."""
        config = {
            "prior": asdict(self.prior.config),
            "decoder": self.decoder.config.to_dict(),
            "clip": self.clip.config.to_dict() if exists(self.clip) else None,
            "colormap": self.colormap,
        }
        state = {f"prior.{k}": v for k, v in self.prior.state_dict().items()}
        state |= {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        if exists(self.clip):
            state |= {f"clip.{k}": v for k, v in self.clip.state_dict().items()}
        meta = {
            "prior": getattr(self.prior, "meta", None) or {},
            "decoder": getattr(self.decoder, "meta", None) or {},
        }
        return save_bundle(path, kind="dalle2", config=config, state_dict=state, label_map=self.label_map, meta=meta)

    @classmethod
    def load(cls, path: str | Path) -> "MicroDopplerDALLE2":
        """Rebuild the chain from a "dalle2" bundle alone."""
        payload = load_bundle(path, kind="dalle2")
        config, state, meta = payload["config"], payload["state_dict"], payload.get("meta") or {}

        def part(prefix):
            return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}

        try:
            prior = UserConditionedDiffusionPrior(PriorConfig.from_dict(config["prior"]))
            prior.load_state_dict(part("prior"))
            decoder = MicroDopplerDecoder(config=DecoderConfig.from_dict(config["decoder"]))
            decoder.load_state_dict(part("decoder"))
            clip = None
            if config.get("clip") is not None:
                clip = MicroDopplerClip(ClipConfig.from_dict(config["clip"]))
                clip.load_state_dict(part("clip"))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise BundleError(f"{path}: the chained model's parts do not fit together ({str(e)[:200]}); the file is damaged.") from None
        prior.label_map, prior.meta = payload.get("label_map"), meta.get("prior", {})
        decoder.meta = meta.get("decoder", {})
        return cls(prior=prior, decoder=decoder, clip=clip, label_map=payload.get("label_map"),
                   colormap=config.get("colormap")).eval()

    @classmethod
    def from_parts(cls, *, prior_path: str | Path, decoder_path: str | Path, clip_path: str | Path | None = None):
        """Chain a prior and a decoder saved separately (the seed's `prior_final.pt` and
        `decoder_final.pt`); refuses a pair trained on different embedding models."""
        prior = UserConditionedDiffusionPrior.load(prior_path)
        decoder = MicroDopplerDecoder.load(decoder_path)
        clip = MicroDopplerClip.load(clip_path) if exists(clip_path) else None
        try:
            return cls(prior=prior, decoder=decoder, clip=clip).eval()
        except BundleError as e:
            raise BundleError(f"{prior_path} + {decoder_path}: {e}") from None


def check_same_embedding(prior, decoder, clip=None) -> None:
    """Prior, decoder (and embedding model) must agree on the embedding model they were
    trained on; the fingerprint of its weights is stored in each part's meta."""
    prints = {
        "prior": (getattr(prior, "meta", None) or {}).get("clip_fingerprint"),
        "decoder": (getattr(decoder, "meta", None) or {}).get("clip_fingerprint"),
    }
    if exists(clip):
        prints["embedding model"] = clip.fingerprint
    known = {k: v for k, v in prints.items() if exists(v)}
    if len(set(known.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in known.items())
        raise BundleError(
            f"the prior and decoder were trained on different embedding models ({detail}); "
            "train the prior with --clip_path pointing at the decoder run's clip_final.pt."
        )
