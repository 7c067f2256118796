"""`MicroDopplerDALLE2`: the chain user index -> prior -> image embedding -> decoder ->
[upsampler ->] spectrogram.

Users are named two ways: `user_labels` are the original labels as on disk ("ID_5"; they key the
noise, see below), `user_indices` the contiguous 0..N-1 the networks see (`user_index(label)`
turns one into the other).

Owns sampling with exact counts, sampler, guidance scales, eta and step counts per stage, and
the noise convention: the prior and the decoder noise of a sample (its start and, with eta > 0,
every step) come from a generator keyed by (seed, stream, user label, sample index), so samples
of one user are independent of each other and of every other user's, and a user's samples do
not change with the other users in the batch or with the batch size (the upsampler's noise too,
on its own stream). `finish` is the one place where a base sample becomes the image handed out:
upsampled when an upsampler is attached, resized to `output_size` when that is set. Also
user-to-user interpolation (`interpolation_frames`), re-colouring scalar spectrograms, and the
chained bundle (kind "dalle2", without the upsampler, which stays its own file) or loading from
the prior and decoder files the seed's scripts write.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dalle2_md.models.bundle import load_bundle, save_bundle
from dalle2_md.models.embedding import ClipConfig, MicroDopplerClip
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior
from dalle2_md.models.upsampler import UPSAMPLER_STREAM, MicroDopplerUpsampler, check_upsampler_fits, to_output_size
from dalle2_md.defaults import DEFAULTS, SamplingConfig
from dalle2_md.sampling import keyed_generators, randn
from dalle2_md.utils import BundleError, UserError, exists

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


def user_labels(label_map: dict | None, user_indices: Sequence[int]) -> list[str]:
    """The original labels ("ID_5") of contiguous user indices; their decimal strings when no
    label map is known. These name a user in the noise keys (see module docstring)."""
    if not exists(label_map):
        return [str(int(u)) for u in user_indices]
    from dalle2_md.data.labels import LabelMap

    lm = LabelMap.from_dict(label_map)
    return [lm.name_of(int(u)) for u in user_indices]


def sample_keys(labels: Sequence[str], num_samples_per_user: int, first_sample: int = 0) -> list[tuple[str, int]]:
    """User-major (label, sample index) keys: samples first_sample.. of each label in turn."""
    return [(label, first_sample + j) for label in labels for j in range(num_samples_per_user)]


def decode_with_keyed_noise(decoder, image_embeds: torch.Tensor, keys: Sequence, *, seed: int = 0,
                            cond_scale: float = DEFAULTS.cond_scale, steps: int | None = None,
                            eta: float = DEFAULTS.eta, sampler: str | None = None,
                            user_indices: Sequence[int] | None = None) -> torch.Tensor:
    """Decode embeddings to images in [0, 1]; row i's noise (start and per-step) comes from the
    decoder stream of (seed, keys[i]) only. Shared by the chain and the baseline.

    Args:
        decoder: a `MicroDopplerDecoder`.
        image_embeds: (B, D).
        keys: B hashables, e.g. `sample_keys(...)`; equal keys give equal noise.
        seed, cond_scale, steps, eta, sampler: as for `MicroDopplerDALLE2.sample`.
        user_indices: each row's user, for a user-conditioned decoder (ignored by others).
    """
    generators = keyed_generators(seed, _DECODER_STREAM, keys)
    users = decoder_users(decoder, user_indices, image_embeds.device)
    return decoder.sample(image_embeds, user_indices=users, cond_scale=cond_scale, timesteps=steps,
                          generator=generators, eta=eta, sampler=sampler)


def decoder_users(decoder, user_indices, device) -> torch.Tensor | None:
    """`user_indices` as the decoder's `user_indices=` argument: a tensor for a user-conditioned
    decoder (which must have them), None for one conditioned on the image embedding alone."""
    if not decoder.config.user_conditioning:
        return None
    if user_indices is None:
        raise UserError("this model's decoder is user-conditioned: say whose image each embedding is (user_indices).")
    return torch.as_tensor(user_indices, device=device)


class MicroDopplerDALLE2(nn.Module):
    """Prior and decoder trained on the same embedding model, chained.

    Args:
        prior: a trained `UserConditionedDiffusionPrior`.
        decoder: a trained `MicroDopplerDecoder`.
        clip: the embedding model both were trained on (optional for sampling; kept so that a
            chained bundle can embed real spectrograms too).
        label_map: the data set's label map as a dict (`LabelMap.to_dict()`); default the prior's.
        colormap: the colormap the data set was drawn with ("jet"), or "none" for RGB models.
        upsampler: a `MicroDopplerUpsampler` from the decoder's image size to the data's, applied
            after the decoder (see `finish`).
        output_size: side of the images handed out, resized (bicubic) when it differs; None: the
            upsampler's output size, else the decoder's image size.
    """

    def __init__(
        self,
        *,
        prior: UserConditionedDiffusionPrior,
        decoder: MicroDopplerDecoder,
        clip: MicroDopplerClip | None = None,
        label_map: dict | None = None,
        colormap: str | None = None,
        upsampler: MicroDopplerUpsampler | None = None,
        output_size: int | None = None,
    ):
        super().__init__()
        check_same_embedding(prior, decoder, clip)
        if exists(upsampler):
            check_upsampler_fits(decoder, upsampler)
        if prior.image_embed_dim != decoder.config.image_embed_dim:
            raise BundleError(
                f"the prior makes {prior.image_embed_dim}-d embeddings but the decoder takes "
                f"{decoder.config.image_embed_dim}-d ones; train both on the same embedding model."
            )
        self.prior, self.decoder, self.clip, self.upsampler = prior, decoder, clip, upsampler
        self.output_size = output_size
        self.upsampler_path: Path | None = None  # the upsampler's file, when generation loaded it from one
        self.label_map = label_map if exists(label_map) else getattr(prior, "label_map", None)
        decoder_meta = getattr(decoder, "meta", None) or {}
        # shown in the data's own colour: grey for greyscale data even though it was read under jet
        self.colormap = (colormap or decoder_meta.get("display_colormap") or decoder_meta.get("colormap")
                         or ("jet" if decoder.config.channels == 1 else "none"))

    @property
    def num_users(self) -> int:
        return self.prior.config.num_users

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of the images the chain hands out (see `output_size`)."""
        if exists(self.output_size):
            return self.output_size
        return self.upsampler.config.output_size if exists(self.upsampler) else self.decoder.config.image_size

    def attach_upsampler(self, upsampler: MicroDopplerUpsampler | None) -> "MicroDopplerDALLE2":
        """Apply `upsampler` after the decoder from now on (None: none); refused when it does not
        take the decoder's image size and channels."""
        if exists(upsampler):
            check_upsampler_fits(self.decoder, upsampler)
            upsampler = upsampler.to(self.device).eval()
        self.upsampler = upsampler
        return self

    def finish(self, images: torch.Tensor, keys: Sequence, *, seed: int = 0) -> torch.Tensor:
        """Base decoder samples (B, C, H, W) in [0, 1] -> the images the chain hands out, in
        [0, 1]: upsampled when an upsampler is attached (row i's noise keyed by (seed, keys[i])),
        then resized to `output_size` when that is set and differs."""
        generators = keyed_generators(seed, UPSAMPLER_STREAM, keys) if exists(self.upsampler) else None
        return to_output_size(images, upsampler=self.upsampler, output_size=self.output_size, generator=generators)

    def user_index(self, label) -> int:
        """Contiguous index of a user given by its original label ("ID_5", "5", 5) when a label
        map is known, else by index. Unknown users raise a UserError listing the valid ones."""
        if exists(self.label_map):
            from dalle2_md.data.labels import LabelMap

            return LabelMap.from_dict(self.label_map).index_of(label)
        try:
            index = int(label)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < self.num_users:
            raise UserError(f"unknown user {label!r}: this model knows users 0..{self.num_users - 1}.")
        return index

    def _checked_indices(self, user_indices: Sequence[int]) -> list[int]:
        indices = [int(u) for u in (user_indices.tolist() if torch.is_tensor(user_indices) else user_indices)]
        bad = [u for u in indices if not 0 <= u < self.num_users]
        if bad:
            raise UserError(f"user indices {bad} out of range: this model knows 0..{self.num_users - 1}.")
        return indices

    def labels_of(self, user_indices: Sequence[int]) -> list[str]:
        """Original labels of contiguous user indices (decimal strings without a label map)."""
        return user_labels(self.label_map, user_indices)

    @torch.no_grad()
    def sample_image_embeds(
        self,
        user_indices: Sequence[int],
        *,
        num_samples_per_user: int = 1,
        prior_cond_scale: float = DEFAULTS.prior_cond_scale,
        prior_steps: int | None = DEFAULTS.prior_steps,
        seed: int = 0,
        eta: float = DEFAULTS.eta,
        sampler: str | None = None,
        sample_indices: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(len(user_indices) * num_samples_per_user, D) embeddings, user-major; sample j of user
        u starts from the prior noise keyed by (seed, u's label, j).

        Args:
            user_indices: contiguous user indices.
            sample_indices: instead of `num_samples_per_user`, one sample index per entry of
                `user_indices` (then the output has len(user_indices) rows, in that order).
            others: as for `sample`.
        """
        rows, keys = self._pairs(user_indices, num_samples_per_user, sample_indices)
        return self.prior.sample(
            rows, 1, cond_scale=prior_cond_scale, timesteps=prior_steps, eta=eta, sampler=sampler,
            generator=keyed_generators(seed, _PRIOR_STREAM, keys),
        )

    def _pairs(self, user_indices, num_samples_per_user, sample_indices) -> tuple[list[int], list[tuple[str, int]]]:
        """(one user index per output row, one noise key per output row)."""
        indices = self._checked_indices(user_indices)
        if exists(sample_indices):
            if len(sample_indices) != len(indices):
                raise ValueError(f"{len(sample_indices)} sample indices for {len(indices)} users")
            return indices, list(zip(self.labels_of(indices), (int(j) for j in sample_indices)))
        if num_samples_per_user < 1:
            raise UserError(f"num_samples_per_user must be at least 1, got {num_samples_per_user}.")
        rows = [u for u in indices for _ in range(num_samples_per_user)]
        return rows, sample_keys(self.labels_of(indices), num_samples_per_user)

    @torch.no_grad()
    def decode(self, image_embeds: torch.Tensor, *, cond_scale: float = DEFAULTS.cond_scale,
               decoder_steps: int | None = DEFAULTS.decoder_steps, seed: int = 0, keys: Sequence | None = None,
               eta: float = DEFAULTS.eta, sampler: str | None = None, colorize: bool = True,
               user_indices: Sequence[int] | None = None) -> torch.Tensor:
        """Decode embeddings to images in [0, 1] at `image_size` (through `finish`); row i starts
        from the decoder noise keyed by (seed, keys[i]) (default keys: the row numbers, so every
        row gets its own noise). `user_indices`: each row's user, which a user-conditioned
        decoder needs."""
        keys = list(keys) if exists(keys) else [("row", i) for i in range(image_embeds.shape[0])]
        images = decode_with_keyed_noise(self.decoder, image_embeds, keys, seed=seed, cond_scale=cond_scale,
                                         steps=decoder_steps, eta=eta, sampler=sampler, user_indices=user_indices)
        images = self.finish(images, keys, seed=seed)
        return self.colorize(images) if colorize else images

    @torch.no_grad()
    def sample(
        self,
        user_indices: Sequence[int],
        *,
        num_samples_per_user: int = 1,
        cond_scale: float = DEFAULTS.cond_scale,
        prior_cond_scale: float = DEFAULTS.prior_cond_scale,
        prior_steps: int | None = DEFAULTS.prior_steps,
        decoder_steps: int | None = DEFAULTS.decoder_steps,
        seed: int = 0,
        eta: float = DEFAULTS.eta,
        sampler: str | None = None,
        sample_indices: Sequence[int] | None = None,
        colorize: bool = True,
    ) -> torch.Tensor:
        """Generate spectrograms for users.

        Args:
            user_indices: contiguous user indices 0..N-1 (`user_index` turns an original label
                such as "ID_5" into its index).
            num_samples_per_user: images per listed user (samples 0..n-1 of each).
            cond_scale: decoder guidance on the image embedding (1 = none).
            prior_cond_scale: prior guidance on the user ID (1 = none).
            prior_steps, decoder_steps: network evaluations per stage (default: each stage's
                `sample_timesteps`).
            seed: same seed, same images.
            eta: DDIM eta of both stages (0 = deterministic; > 0 selects the ddim sampler).
            sampler: "ddim" or "dpmpp_2m" for both stages (default `sampling.DEFAULT_SAMPLER`).
            sample_indices: instead of `num_samples_per_user`, the sample index of each entry
                of `user_indices` (for batches that mix users and samples: `user_indices=[0, 0, 3]`,
                `sample_indices=[5, 6, 0]` gives exactly those rows of the full sets).
            colorize: re-apply the data set's colormap to scalar models (RGB output).
        Returns:
            (len(user_indices) * num_samples_per_user, C, image_size, image_size) in [0, 1],
            user-major (all samples of user_indices[0] first); C = 3 when colorized, else the
            model's channels.
        """
        rows, keys = self._pairs(user_indices, num_samples_per_user, sample_indices)
        embeds = self.sample_image_embeds(rows, sample_indices=[j for _, j in keys], prior_cond_scale=prior_cond_scale,
                                          prior_steps=prior_steps, seed=seed, eta=eta, sampler=sampler)
        return self.decode(embeds, cond_scale=cond_scale, decoder_steps=decoder_steps, seed=seed, keys=keys, eta=eta,
                           sampler=sampler, colorize=colorize, user_indices=rows)

    @torch.no_grad()
    def sample_users(self, user_indices: Sequence[int], num_samples_per_user: int, *,
                     sampling: SamplingConfig = DEFAULTS, seed: int = 0) -> torch.Tensor:
        """The generator interface shared with `SingleStageBaseline`: `sample` with the settings of
        `sampling` (its guidance interval and sample start included), no colormap.

        Returns:
            (len(user_indices) * num_samples_per_user, C, H, W) in [0, 1], user-major.
        """
        with self.decoder.sampling_config_for(**sampling.decoder_overrides()):
            return self.sample(user_indices, num_samples_per_user=num_samples_per_user, cond_scale=sampling.cond_scale,
                               prior_cond_scale=sampling.prior_cond_scale, prior_steps=sampling.prior_steps,
                               decoder_steps=sampling.decoder_steps, seed=seed, eta=sampling.eta,
                               sampler=sampling.sampler, colorize=False)

    @torch.no_grad()
    def interpolation_frames(
        self,
        user_index_a: int,
        user_index_b: int,
        *,
        steps: int = 8,
        seed: int = 0,
        cond_scale: float = DEFAULTS.cond_scale,
        prior_cond_scale: float = DEFAULTS.prior_cond_scale,
        prior_steps: int | None = DEFAULTS.prior_steps,
        decoder_steps: int | None = DEFAULTS.decoder_steps,
        sampler: str | None = None,
        colorize: bool = True,
    ) -> torch.Tensor:
        """Frames between sample 0 of two users given by contiguous index (labels: see
        `generation.samples.write_interpolation`): the embeddings move along the great circle between
        the two users' sampled embeddings and the decoder's starting noise along the great
        circle between the two samples' noises, so frame 0 equals
        `sample([user_index_a], seed=seed)` and the last frame `sample([user_index_b], seed=seed)`.
        Deterministic (eta = 0): per-step noise has no path between the two samples.

        Returns:
            (steps, C, image_size, image_size) in [0, 1].
        """
        if steps < 2:
            raise UserError(f"interpolation needs at least 2 steps, got {steps}.")
        ends = self.sample_image_embeds([user_index_a, user_index_b], prior_cond_scale=prior_cond_scale, prior_steps=prior_steps,
                                        seed=seed, sampler=sampler)
        keys = sample_keys(self.labels_of([user_index_a, user_index_b]), 1)
        shape = (2, *self.decoder.diffused_shape)
        noise_a, noise_b = randn(shape, keyed_generators(seed, _DECODER_STREAM, keys), self.device).flatten(1)
        positions = [float(t) for t in np.linspace(0.0, 1.0, steps)]
        embeds = torch.stack([slerp(ends[0], ends[1], t) for t in positions])
        noise = torch.stack([slerp(noise_a, noise_b, t) for t in positions]).view(steps, *shape[1:])
        users = None
        if self.decoder.config.user_conditioning:  # the user token blends linearly from a to b
            ends_onehot = torch.eye(self.decoder.config.num_users, device=self.device)[[user_index_a, user_index_b]]
            users = torch.stack([(1 - t) * ends_onehot[0] + t * ends_onehot[1] for t in positions])
        images = self.decoder.sample(embeds, user_indices=users, cond_scale=cond_scale, timesteps=decoder_steps,
                                     noise=noise, eta=0.0, sampler=sampler)
        # the ends keep their samples' upsampler noise; the frames between get their own
        frame_keys = [keys[0], *[("interpolation", *keys, i) for i in range(1, steps - 1)], keys[1]]
        images = self.finish(images, frame_keys, seed=seed)
        return self.colorize(images) if colorize else images

    def colorize(self, images: torch.Tensor) -> torch.Tensor:
        """Scalar images (B, 1, H, W) in [0, 1] -> RGB through the colormap; RGB passes through."""
        if images.shape[1] != 1 or self.colormap == "none":
            return images
        from dalle2_md.data.display import as_image_tensor, colourise

        return as_image_tensor(colourise(images, self.colormap)).to(images.device)

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
