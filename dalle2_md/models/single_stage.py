"""The single-stage baseline the two-stage model is judged against (docs/guide/evaluation.md):
the same diffusion decoder, conditioned directly on a learned per-user embedding; no embedding
model, no prior.

Owns `SingleStageBaseline` (training loss, seeded sampling, bundle); `training.fit.train_baseline`
trains it through the one training loop.

Bundle: kind "baseline", config = the decoder's config, meta {"baseline": true, "num_users": N},
weights under "user_embed.*" and "decoder.*"; `MicroDopplerDecoder.load` refuses it by its kind.
Older baseline files carry kind "decoder": their config is a plain decoder config, so
they are told from a two-stage decoder by the meta flag (or, failing that, the user table in the
weights); `SingleStageBaseline.load` and `is_baseline_bundle` accept both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_md.models.bundle import load_bundle, save_bundle

from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.chain import decode_with_keyed_noise, sample_keys, user_labels
from dalle2_md.defaults import DEFAULTS, SamplingConfig
from dalle2_md.utils import BundleError, UserError


def single_stage_decoder_fields(decoder_fields: dict) -> dict:
    """A generator budget's decoder fields as the baseline uses them: without the two-stage
    decoder's user token (the baseline's only condition is already the user's embedding)."""
    return {k: v for k, v in decoder_fields.items() if k not in ("user_conditioning", "num_users")}


class SingleStageBaseline(nn.Module):
    """User ID -> learned embedding -> `MicroDopplerDecoder` -> spectrogram, over pixels or,
    with `config.use_vqgan`, over a VQGAN's latent (then the bundle holds the VQGAN too).

    `loss = model(images, user_indices)` trains it (images in [-1, 1]); `model.sample(...)` returns
    images in [0, 1]. Classifier-free guidance works as in the two-stage decoder: the decoder
    drops the embedding with probability `config.cond_drop_prob` while training.

    Args:
        num_users: size of the user table.
        config: the decoder's config; `image_embed_dim` is the size of the user embedding.
        label_map: the data set's label map as a dict, kept for the bundle.
        colormap: the colormap the data was drawn with ("jet"), or "none" for RGB models.
        vqgan: a trained VQGAN to diffuse over (latent configs; default a fresh one of
            `config.vqgan`'s shape, as `load` rebuilds it before loading the weights).
    """

    def __init__(self, *, num_users: int, config: DecoderConfig, label_map: dict | None = None, colormap: str | None = None,
                 vqgan: nn.Module | None = None):
        super().__init__()
        if num_users < 1:
            raise UserError(f"the baseline needs at least one user, got num_users={num_users}.")
        self.num_users = int(num_users)
        self.config = config
        self.user_embed = nn.Embedding(num_users, config.image_embed_dim)
        self.decoder = MicroDopplerDecoder(config=config, vqgan=vqgan)
        self.label_map = label_map
        self.colormap = colormap or ("jet" if config.channels == 1 else "none")
        self.meta: dict = {}

    def embed(self, user_indices: torch.Tensor) -> torch.Tensor:
        """(B,) user indices -> (B, D) unit-norm embeddings (the two-stage decoder also sees
        unit-norm vectors, so both decoders get inputs of the same scale)."""
        return F.normalize(self.user_embed(user_indices), dim=-1)

    def _checked_indices(self, user_indices) -> torch.Tensor:
        indices = torch.as_tensor(user_indices, dtype=torch.long, device=self.user_embed.weight.device).reshape(-1)
        # a compiled training step (its data checked when loaded) skips the check: reading the
        # indices back would make torch.compile specialise on every batch's min and max
        if len(indices) and not torch.compiler.is_compiling() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_users):
            bad = sorted({int(u) for u in indices.tolist() if not 0 <= u < self.num_users})
            raise UserError(f"user indices {bad} out of range: this baseline knows 0..{self.num_users - 1}.")
        return indices

    def forward(self, images: torch.Tensor | None, user_indices: torch.Tensor, *,
                latents: torch.Tensor | None = None) -> torch.Tensor:
        """Diffusion loss of a batch: images (B, C, H, W) in [-1, 1] (or, for a latent decoder,
        their cached `decoder.encode_latents` in `latents`), user_indices (B,) -> scalar."""
        return self.decoder(images, self.embed(self._checked_indices(user_indices)), latents=latents)

    @torch.no_grad()
    def sample(
        self,
        user_indices: Sequence[int],
        *,
        num_samples_per_user: int = 1,
        cond_scale: float = DEFAULTS.cond_scale,
        steps: int | None = DEFAULTS.decoder_steps,
        seed: int = 0,
        eta: float = DEFAULTS.eta,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Generate spectrograms for users (same noise convention as `MicroDopplerDALLE2`: sample
        j of user u gets the decoder noise keyed by (seed, u's label, j), so samples are
        independent across users and a user's samples do not depend on the batch).

        Args:
            user_indices: contiguous user indices 0..N-1 (not original labels).
            num_samples_per_user: images per listed user.
            cond_scale: guidance on the user embedding (1 = none).
            steps: network evaluations (default the decoder's `sample_timesteps`).
            seed: same seed, same images.
            eta, sampler: as for `MicroDopplerDALLE2.sample`.
        Returns:
            (len(user_indices) * num_samples_per_user, C, H, W) in [0, 1], user-major.
        """
        if num_samples_per_user < 1:
            raise UserError(f"num_samples_per_user must be at least 1, got {num_samples_per_user}.")
        indices = self._checked_indices(user_indices)
        embeds = self.embed(indices).repeat_interleave(num_samples_per_user, dim=0)
        keys = sample_keys(user_labels(self.label_map, indices.tolist()), num_samples_per_user)
        return decode_with_keyed_noise(self.decoder, embeds, keys, seed=seed, cond_scale=cond_scale, steps=steps,
                                       eta=eta, sampler=sampler)

    @torch.no_grad()
    def sample_users(self, user_indices: Sequence[int], num_samples_per_user: int, *,
                     sampling: SamplingConfig = DEFAULTS, seed: int = 0) -> torch.Tensor:
        """The generator interface shared with `MicroDopplerDALLE2`: `sample` with the settings of
        `sampling` (it has no prior, so the prior's settings do not apply)."""
        with self.decoder.sampling_config_for(**sampling.decoder_overrides()):
            return self.sample(user_indices, num_samples_per_user=num_samples_per_user, cond_scale=sampling.cond_scale,
                               steps=sampling.decoder_steps, seed=seed, eta=sampling.eta, sampler=sampling.sampler)

    # bundle

    def save(self, path: str | Path, *, meta: dict | None = None) -> Path:
        """Write a "baseline" bundle (see module docstring)."""
        meta = {**self.meta, **(meta or {}), "baseline": True, "num_users": self.num_users, "colormap": self.colormap}
        return save_bundle(path, kind="baseline", config=self.config.to_dict(), state_dict=self.state_dict(),
                           label_map=self.label_map, meta=meta)

    @classmethod
    def load(cls, path: str | Path) -> "SingleStageBaseline":
        """Rebuild a baseline from its bundle alone (eval mode); also reads older "decoder"-kind
        baseline bundles."""
        payload = load_bundle(path, kind=("baseline", "decoder"))
        if not _holds_baseline(payload):
            raise BundleError(f"{path}: is a two-stage decoder, not a single-stage baseline; load it with "
                              "MicroDopplerDecoder.load, or chain it with its prior.")
        meta = payload.get("meta") or {}
        try:
            model = cls(num_users=_num_users(payload), config=DecoderConfig.from_dict(payload["config"]),
                        label_map=payload.get("label_map"), colormap=meta.get("colormap"))
            model.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise BundleError(f"{path}: baseline config or weights do not fit ({str(e).splitlines()[0][:200]}); "
                              "the file is damaged, retrain it.") from None
        model.meta = dict(meta)
        return model.eval()


def _holds_baseline(payload: dict) -> bool:
    """A "baseline" bundle, or an older one of kind "decoder" with the baseline's
    meta flag or its user table (a two-stage decoder has neither)."""
    if payload.get("kind") == "baseline":
        return True
    flagged = bool((payload.get("meta") or {}).get("baseline"))
    return payload.get("kind") == "decoder" and (flagged or "user_embed.weight" in (payload.get("state_dict") or {}))


def _num_users(payload: dict) -> int:
    """The user table's size: from the meta, else from the table's weights."""
    num_users = (payload.get("meta") or {}).get("num_users")
    return int(num_users) if num_users is not None else int(payload["state_dict"]["user_embed.weight"].shape[0])


def is_baseline_bundle(path: str | Path) -> bool:
    """True when `path` is a bundle written by `SingleStageBaseline.save` (of any dalle2-md version)."""
    return _holds_baseline(load_bundle(path))


