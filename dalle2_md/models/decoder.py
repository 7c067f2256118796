"""The decoder stage: a diffusion U-Net that turns an image embedding (from our embedding model)
into a spectrogram, in pixel space or over a VQGAN latent; its config, sampling and bundle.

Built from dalle2-pytorch's `Unet` and `Decoder` (one U-Net, no CLIP inside). Around them: images
stay in [-1, 1] (`auto_normalize_img=False`; [0, 1] only at the end of `sample`); latent training
calls `p_losses` on latents cached once and scaled to unit variance; `cond_dim` is widened so
the embedding-to-tokens projection is always built (`compat.unet_cond_dim`); sampling runs the
shared samplers of `dalle2_md.sampling` with keyed noise, and guidance as one batched forward
(`guidance.guided_unet_forward`); an EDM decoder's loss and denoiser are `edm`'s, around the same
U-Net. Why each of these: docs/design.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dalle2_md.models.bundle import load_bundle, save_bundle
from dalle2_md.models.compat import (alphas_cumprod, decoder_p_losses, decoder_unet, decoder_vae, noise_scheduler_of,
                                     resize_cross_attention, set_decoder_unet, unet_cond_dim as widened_cond_dim,
                                     use_sdpa_attention)
from dalle2_md.models.schedules import (SAMPLE_START, apply_formulation, check_formulation, sampling_times,
                                        x_start_estimate)
from dalle2_md.models.edm import edm_loss, edm_denoise, sampling_levels, schedule_sigmas, vp_model_fn
from dalle2_md.sampling import Generators, randn, run_sampler, sample_heun
from dalle2_md.models.guidance import check_guidance_interval, guided_unet_forward
from dalle2_md.utils import BundleError, UserError, checked_fields, exists
from dalle2_md.models.vqgan import VQGanConfig, build_vqgan, encode_latents, load_vqgan, nearby_multiples


@dataclass(frozen=True)
class DecoderConfig:
    """Constructor arguments of the decoder.

    Args:
        image_size: side of the square output images, in pixels.
        channels: 1 (scalar spectrogram, colormap applied later) or 3 (RGB).
        image_embed_dim: D, the size of the embeddings the decoder is conditioned on.
        dim: U-Net base width (the seed used 128; 32 is a laptop-CPU size).
        dim_mults: width multipliers per U-Net stage; the U-Net halves the resolution
            len(dim_mults) - 1 times, so the diffused size must be divisible by that power of 2.
        cond_dim: width of the conditioning tokens (default: dim; see `unet_cond_dim`).
        num_image_tokens: tokens the image embedding is projected to for cross-attention.
        num_resnet_blocks: residual blocks per U-Net stage.
        attn_heads, attn_dim_head: attention shape in the U-Net.
        timesteps: diffusion steps in training (and for full sampling).
        sample_timesteps: DDIM steps used by `sample` when no count is given.
        cond_drop_prob: probability of dropping the image embedding in training, which makes
            classifier-free guidance (`cond_scale` != 1) possible.
        beta_schedule: "cosine" or "linear" (dalle2-pytorch's names).
        loss_type: "l1", "l2" or "huber".
        learned_variance: also learn the variance (improved DDPM); DDIM does not use it.
        ddim_eta: 0 for deterministic DDIM; 1 for DDPM-like noise at every step.
        guidance_interval: (lo, hi): classifier-free guidance only at sampling times with
            lo <= t / (timesteps - 1) <= hi, the conditional branch alone elsewhere
            (Kynkaanniemi et al. 2024); (0, 1) = everywhere, the default (a narrower interval
            lowered the augmentation gain, docs/results.md). `sample` can override it.
        prediction: what the network predicts: "eps" (the noise), "v" (Salimans & Ho 2022), or
            "edm": the EDM formulation (Karras et al. 2022; models/edm.py), sampled by DPM-Solver++
            like the others, which beat EDM's Heun: `experiments/sample_defects.py`, docs/results.md.
            "eps": chosen by `experiments/sample_defects.py`, see docs/results.md.
        sample_start: where sampling from pure noise starts, as a fraction t / (T - 1) of the
            schedule. Below 1 because at t = T - 1 the cosine schedule keeps almost none of the
            image, so an eps network's first x_0 estimate (which sets the image's level) is
            magnified noise. 0.96: chosen by `experiments/sample_defects.py`, see
            docs/results.md. Applies to every bundle; SDEdit is unaffected. Ignored (start at T - 1)
            with `zero_terminal_snr`, whose last step is pure noise.
        zero_terminal_snr: rescale the schedule so its last step is pure noise (Lin et al. 2024):
            training then sees the noise sampling starts from; needs prediction "v".
        loss_weighting: "p2" (`p2_loss_weight_gamma`) or "min_snr": min(SNR, min_snr_gamma) /
            (SNR + 1) for v (Hang et al. 2023), which caps the weight of the easy low-noise steps.
        min_snr_gamma: the SNR cap of "min_snr" weighting (5 in Hang et al. 2023).
        offset_noise: in training, one more Gaussian per image and channel, of this standard
            deviation, shared by all its pixels (offset noise). 0 = plain noise, the default:
            chosen by `experiments/sample_defects.py`, see docs/results.md.
        user_conditioning: also condition on a learned embedding of the user ID, joined to the
            image embedding (both dropped together for guidance), as DALL-E 2's decoder keeps
            its caption beside the CLIP image embedding: the embedding says which walk to draw,
            the token whose walk it is. Training and sampling then need `user_indices=`.
        num_users: size of that user table (filled from the data when `user_conditioning`).
        embed_noise_std: in training, Gaussian noise of about this fraction of its length is
            added to each embedding, which is then put back on its sphere: the decoder learns a
            neighbourhood of each real embedding, where the prior's samples land.
        p2_loss_weight_gamma: P2 weighting of the loss over noise levels (Choi et al. 2022);
            0 = uniform. 1 weights the high noise levels where identity is decided: chosen by
            `benchmarks/identity_stages.py`, see docs/results.md.
        use_vqgan: diffuse over a VQGAN latent instead of pixels.
        vqgan: the VQGAN's config (filled from `vqgan_path` when that is given).
        vqgan_path: a "vqgan" bundle whose trained weights `build_decoder` loads; the decoder
            bundle later carries those weights, so this path is not needed to load it.
        backbone: "unet" (dalle2-pytorch's U-Net) or "dit" (`dit.DiT`, a patch transformer with
            adaLN conditioning, meant for latents); the DiT's width is `dim`, its heads
            `attn_heads`, and dim_mults / resnet / cross-attention sizes do not apply to it.
        dit_depth: transformer blocks of the DiT.
        dit_patch_size: side of the DiT's patches (the diffused size must divide by it).
    """

    image_size: int = 64
    channels: int = 1
    image_embed_dim: int = 512
    dim: int = 128
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    cond_dim: int | None = None
    num_image_tokens: int = 4
    num_resnet_blocks: int = 2
    attn_heads: int = 16
    attn_dim_head: int = 32
    timesteps: int = 1000
    sample_timesteps: int = 50
    cond_drop_prob: float = 0.1
    beta_schedule: str = "cosine"
    loss_type: str = "l2"
    learned_variance: bool = False
    ddim_eta: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    sample_start: float = SAMPLE_START
    offset_noise: float = 0.0
    prediction: str = "eps"
    zero_terminal_snr: bool = False
    loss_weighting: str = "p2"
    min_snr_gamma: float = 5.0
    user_conditioning: bool = False
    num_users: int = 0
    embed_noise_std: float = 0.3
    p2_loss_weight_gamma: float = 1.0
    use_vqgan: bool = False
    vqgan: VQGanConfig | None = None
    vqgan_path: str | None = None
    backbone: str = "unet"
    dit_depth: int = 4
    dit_patch_size: int = 2

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise UserError(f"decoder channels must be 1 or 3, got {self.channels}.")
        if not 1 <= self.sample_timesteps <= self.timesteps:
            raise UserError(
                f"sample_timesteps {self.sample_timesteps} must be between 1 and timesteps {self.timesteps}."
            )
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise UserError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}.")
        check_guidance_interval(self.guidance_interval)
        check_formulation(self)
        if self.user_conditioning and self.num_users < 1:
            raise UserError("user_conditioning needs num_users >= 1 (the size of the user table).")
        if self.use_vqgan and self.vqgan is not None:
            if (self.vqgan.image_size, self.vqgan.channels) != (self.image_size, self.channels):
                raise UserError(
                    f"the VQGAN is for {self.vqgan.channels}-channel {self.vqgan.image_size} px images "
                    f"but the decoder is for {self.channels}-channel {self.image_size} px; "
                    "train a VQGAN on the decoder's image size and channels."
                )
        if self.backbone != "unet":
            from dalle2_md.models.dit import check_dit_config

            check_dit_config(self)
            return
        factor = 2 ** (len(self.dim_mults) - 1)
        if self.use_vqgan and self.vqgan is not None:
            size = self.vqgan.latent_size
            if size % factor:
                raise UserError(
                    f"the VQGAN latent is {size} px ({self.image_size} px / 2**{self.vqgan.layers}), "
                    f"not divisible by 2**(len(dim_mults)-1) = {factor} for dim_mults {self.dim_mults}; "
                    f"use image_size {nearby_multiples(self.image_size, factor * 2**self.vqgan.layers)} "
                    "or fewer dim_mults."
                )
        elif self.image_size % factor:
            raise UserError(
                f"image_size {self.image_size} is not divisible by 2**(len(dim_mults)-1) = {factor} "
                f"for dim_mults {self.dim_mults}; use image_size {nearby_multiples(self.image_size, factor)} "
                "or fewer dim_mults."
            )

    @property
    def condition_dim(self) -> int:
        """Width of the vector the network is conditioned on: the image embedding, followed by
        the user token of the same width when `user_conditioning`."""
        return self.image_embed_dim * (2 if self.user_conditioning else 1)

    @property
    def unet_cond_dim(self) -> int:
        """cond_dim as given to the Unet: never equal to the conditioning width (see module docstring)."""
        return widened_cond_dim(self.cond_dim if exists(self.cond_dim) else self.dim, self.condition_dim)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vqgan"] = self.vqgan.to_dict() if exists(self.vqgan) else None
        return d

    @classmethod
    def from_dict(cls, d: dict, *, what: str = "decoder config") -> "DecoderConfig":
        """Rebuild from `to_dict()` output; unknown keys are refused (`utils.checked_fields`)."""
        d = checked_fields(cls, d, what=what)
        d["dim_mults"] = tuple(d.get("dim_mults", cls.dim_mults))
        # bundles written before the field guided at every step
        d["guidance_interval"] = tuple(d.get("guidance_interval", (0.0, 1.0)))
        if d.get("vqgan") is not None:
            d["vqgan"] = VQGanConfig.from_dict(d["vqgan"], what=f"{what} (its vqgan)")
        return cls(**d)


class MicroDopplerDecoder(nn.Module):
    """Image-embedding-conditioned diffusion decoder.

    `loss = decoder(images, image_embeds)` trains it (images in [-1, 1]);
    `decoder.sample(image_embeds)` returns images in [0, 1].
    """

    def __init__(self, *, config: DecoderConfig, vqgan: nn.Module | None = None):
        super().__init__()
        from dalle2_pytorch import Decoder, Unet

        if config.use_vqgan and config.vqgan is None:
            raise UserError("use_vqgan is set but no VQGAN config or path was given; give vqgan or vqgan_path.")
        self.config = config
        if config.use_vqgan:
            vqgan = vqgan if exists(vqgan) else build_vqgan(config.vqgan)
        unet = Unet(dim=config.dim, image_embed_dim=config.condition_dim, cond_dim=config.unet_cond_dim,
                    num_image_tokens=config.num_image_tokens, channels=config.channels, dim_mults=config.dim_mults,
                    num_resnet_blocks=config.num_resnet_blocks, attn_heads=config.attn_heads,
                    attn_dim_head=config.attn_dim_head)
        self.decoder = Decoder(
            unet=unet,
            image_size=config.image_size,
            channels=config.channels,
            vae=vqgan if config.use_vqgan else tuple(),
            timesteps=config.timesteps,
            sample_timesteps=config.sample_timesteps,
            image_cond_drop_prob=config.cond_drop_prob,
            text_cond_drop_prob=0.0,
            loss_type=config.loss_type,
            beta_schedule=config.beta_schedule,
            learned_variance=config.learned_variance,
            predict_v=config.prediction == "v",
            auto_normalize_img=False,
            p2_loss_weight_gamma=config.p2_loss_weight_gamma,
        )
        apply_formulation(noise_scheduler_of(self.decoder), config)  # zero terminal SNR, min-SNR weights
        # after Decoder(): it rebuilds its U-Nets from their constructor arguments
        resize_cross_attention(decoder_unet(self.decoder), heads=config.attn_heads, dim_head=config.attn_dim_head)
        # attention without the tokens x tokens matrix (same weights and outputs), for trained and loaded alike
        use_sdpa_attention(self.decoder)
        if config.backbone == "dit":
            # the transformer takes the U-Net's place; Decoder's loss and our sampler call it the same way
            from dalle2_md.models.dit import DiT

            channels, size, _ = self.diffused_shape
            set_decoder_unet(self.decoder, DiT(channels=channels, size=size, image_embed_dim=config.condition_dim,
                                               dim=config.dim, depth=config.dit_depth, heads=config.attn_heads,
                                               patch_size=config.dit_patch_size))
        if config.use_vqgan:
            # the VQGAN is trained beforehand and stays frozen while the decoder trains
            decoder_vae(self.decoder).requires_grad_(False)
        if config.user_conditioning:
            self.user_embed = nn.Embedding(config.num_users, config.image_embed_dim)
        # latents are multiplied by this before diffusion and divided after; 1 until fitted
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.meta: dict = {}  # the bundle's meta after `load` (e.g. clip_fingerprint)

    def set_guidance_interval(self, interval: tuple[float, float]) -> "MicroDopplerDecoder":
        """Make `interval` this decoder's default guidance interval (saved with it)."""
        self.config = replace(self.config, guidance_interval=check_guidance_interval(interval))
        return self

    @contextmanager
    def sampling_config_for(self, **fields):
        """Config fields that only change sampling (guidance_interval, sample_start, ...) set
        inside the block only; None values leave a field as it is."""
        stored = self.config
        changes = {k: v for k, v in fields.items() if exists(v)}
        if "guidance_interval" in changes:
            changes["guidance_interval"] = check_guidance_interval(changes["guidance_interval"])
        if changes:
            self.config = replace(stored, **changes)
        try:
            yield self
        finally:
            self.config = stored

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.use_vqgan:
            self.vqgan.eval()  # frozen: its codebook's moving averages must not drift
        return self

    # --- parts -------------------------------------------------------------------------

    @property
    def unet(self):
        return decoder_unet(self.decoder)

    @property
    def vqgan(self):
        """The VQGAN (dalle2-pytorch's eval copy inside `Decoder`), or None in pixel space."""
        return decoder_vae(self.decoder) if self.config.use_vqgan else None

    @property
    def noise_scheduler(self):
        return noise_scheduler_of(self.decoder)

    @property
    def diffused_shape(self) -> tuple[int, int, int]:
        """(channels, size, size) of what the U-Net denoises: pixels or latents."""
        c = self.config
        if c.use_vqgan:
            return (c.vqgan.latent_channels, c.vqgan.latent_size, c.vqgan.latent_size)
        return (c.channels, c.image_size, c.image_size)

    # --- latents -----------------------------------------------------------------------

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents of images in [-1, 1], to cache once and pass as `latents=` to forward.

        Args:
            images: (N, C, H, W) in [-1, 1].
            batch_size: images per encoder call.
        """
        self._require_vqgan("encode_latents")
        self._check_images(images)
        return encode_latents(self.vqgan, images, batch_size=batch_size) * self.latent_scale

    @torch.no_grad()
    def fit_latent_scale(self, images: torch.Tensor) -> float:
        """Set `latent_scale` to 1 / std of the VQGAN latents of `images` (call once, before
        training the latent decoder, on a few hundred training images); returns the scale."""
        self._require_vqgan("fit_latent_scale")
        self._check_images(images)
        std = encode_latents(self.vqgan, images).std().item()
        self.latent_scale.fill_(1.0 / max(std, 1e-8))
        return self.latent_scale.item()

    def _require_vqgan(self, what: str) -> None:
        if not self.config.use_vqgan:
            raise UserError(f"{what} needs a latent decoder (use_vqgan); this one works on pixels.")

    # --- training ----------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor | None,
        image_embeds: torch.Tensor,
        user_indices: torch.Tensor | None = None,
        *,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Diffusion training loss of one batch.

        Args:
            images: (B, C, H, W) in [-1, 1]; may be None when `latents` is given.
            image_embeds: (B, D) embeddings of those images.
            user_indices: (B,) their users (needed by, and only by, a `user_conditioning` decoder).
            latents: (B, *diffused_shape) cached output of `encode_latents` (latent decoder
                only); skips re-encoding the images.

        Returns:
            scalar loss.
        """
        if exists(latents):
            self._require_vqgan("latents=")
            x_start = latents
        else:
            if images is None:
                raise UserError("forward needs images or latents.")
            self._check_images(images)
            x_start = self.encode_latents(images) if self.config.use_vqgan else images
        if tuple(x_start.shape[1:]) != self.diffused_shape:
            raise UserError(f"latents have shape {tuple(x_start.shape)}, expected (B, {self.diffused_shape}).")
        self._check_embeds(image_embeds, x_start.shape[0])
        condition = self.condition(self._noised_embeds(image_embeds), user_indices)
        times = torch.randint(0, self.config.timesteps, (x_start.shape[0],), device=x_start.device)
        noise = torch.randn_like(x_start)
        if self.config.offset_noise:
            noise = noise + self.config.offset_noise * torch.randn(*x_start.shape[:2], 1, 1, device=x_start.device)
        if self.config.prediction == "edm":  # the U-Net called as Decoder.p_losses calls it, with its dropout
            return edm_loss(partial(self.unet, image_embed=condition, image_cond_drop_prob=self.config.cond_drop_prob,
                                    text_cond_drop_prob=0.0),
                            x_start, schedule_sigmas(alphas_cumprod(self.noise_scheduler)), noise)
        return decoder_p_losses(self.decoder, x_start, times, image_embed=condition, noise=noise,
                                learned_variance=self.config.learned_variance, is_latent_diffusion=self.config.use_vqgan,
                                predict_v=self.config.prediction == "v")

    def condition(self, image_embeds: torch.Tensor, user_indices: torch.Tensor | None = None) -> torch.Tensor:
        """The vector the network is conditioned on: the image embeddings, joined by their
        users' tokens when `user_conditioning`.

        Args:
            image_embeds: (B, D).
            user_indices: (B,) user indices, or (B, num_users) weights that mix user tokens
                (one-hot rows equal the indices; interpolation between users passes blends).
        """
        if not self.config.user_conditioning:
            if exists(user_indices):
                raise UserError("user indices were given to a decoder that is not user-conditioned.")
            return image_embeds
        if user_indices is None:
            raise UserError("this decoder is user-conditioned: give each row's user (user_indices=).")
        user_indices = torch.as_tensor(user_indices, device=image_embeds.device)
        if user_indices.is_floating_point():
            tokens = user_indices.to(self.user_embed.weight.dtype) @ self.user_embed.weight
        else:
            # skipped inside a compiled training step, as in baseline.SingleStageBaseline._checked_indices
            if (user_indices.numel() and not torch.compiler.is_compiling()
                    and not 0 <= int(user_indices.min()) <= int(user_indices.max()) < self.config.num_users):
                raise UserError(f"user indices must lie in 0..{self.config.num_users - 1} for this decoder.")
            tokens = self.user_embed(user_indices.long())
        if tokens.shape[0] != image_embeds.shape[0]:
            raise UserError(f"{tokens.shape[0]} users for {image_embeds.shape[0]} image embeddings.")
        return torch.cat((image_embeds, tokens.to(image_embeds.dtype)), dim=-1)

    def _noised_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        std = self.config.embed_noise_std
        if not self.training or std <= 0:
            return image_embeds
        norm = image_embeds.norm(dim=-1, keepdim=True)
        # per-dimension std / sqrt(D): the perturbation's length is about std x the embedding's
        noise = torch.randn_like(image_embeds) * (std / image_embeds.shape[-1] ** 0.5)
        noised = image_embeds + noise * norm
        return noised / noised.norm(dim=-1, keepdim=True).clamp(min=1e-8) * norm

    # --- sampling ----------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        image_embeds: torch.Tensor,
        *,
        user_indices: torch.Tensor | None = None,
        cond_scale: float = 1.0,
        timesteps: int | None = None,
        seed: int | None = None,
        noise: torch.Tensor | None = None,
        eta: float | None = None,
        callback: Callable[[dict], None] | None = None,
        sampler: str | None = None,
        generator: Generators = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Generate one image per embedding.

        Args:
            image_embeds: (B, D) embeddings to condition on.
            user_indices: each row's user (or user-token weights), for a `user_conditioning`
                decoder only; see `condition`.
            cond_scale: classifier-free guidance scale on the embedding (1 = none).
            timesteps: network evaluations (default config.sample_timesteps; config.timesteps = all).
            seed: seeds the starting noise (and per-step noise if eta > 0) through a private
                generator; the global RNG is left untouched. None uses the global RNG.
            noise: explicit starting noise of shape (B, *diffused_shape); overrides seed for x_T.
            eta: DDIM eta (default config.ddim_eta).
            callback: per-step hook, see `sampling.sample_ddim`.
            sampler: "ddim" or "dpmpp_2m" (default: `sampling.resolve_sampler`); EDM decoders also "heun".
            generator: one generator per image (or one for all) for the starting and per-step
                noise; exclusive with `seed`.
            guidance_interval: where guidance applies (default config.guidance_interval).

        Returns:
            (B, C, H, W) images in [0, 1].
        """
        c = self.config
        batch = image_embeds.shape[0]
        self._check_embeds(image_embeds, batch)
        condition = self.condition(image_embeds, user_indices)
        if cond_scale != 1.0 and c.cond_drop_prob == 0:
            raise UserError("cond_scale != 1 needs a decoder trained with cond_drop_prob > 0.")
        device = image_embeds.device
        if exists(seed) and exists(generator):
            raise ValueError("give seed or generator, not both")
        if exists(seed):
            generator = torch.Generator(device=device).manual_seed(int(seed))
            # anything inside the libraries that draws from the global RNG (e.g. the codebook's
            # k-means init of a never-trained VQGAN) is seeded too, then the RNG is restored
            cuda = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(int(seed))
                return self._sample(condition, cond_scale, timesteps, generator, noise, eta, callback, sampler,
                                    guidance_interval)
        return self._sample(condition, cond_scale, timesteps, generator, noise, eta, callback, sampler,
                            guidance_interval)

    def _sample(self, condition, cond_scale, timesteps, generator, noise, eta, callback, sampler, guidance_interval):
        c = self.config
        batch, device = condition.shape[0], condition.device
        shape = (batch, *self.diffused_shape)
        if exists(noise):
            if tuple(noise.shape) != shape:
                raise UserError(f"noise has shape {tuple(noise.shape)}, expected {shape}.")
        else:
            noise = randn(shape, generator, device)
        unet = self.unet
        was_training = self.training
        self.eval()

        scheduler = self.noise_scheduler
        lo, hi = check_guidance_interval(guidance_interval if exists(guidance_interval) else c.guidance_interval)

        def network(x, t):  # guided where t (fractional for EDM) lies inside the interval
            guided = lo <= float(t[0]) / (c.timesteps - 1) <= hi
            return guided_unet_forward(unet, x, t, condition, cond_scale if guided else 1.0)

        if c.prediction == "edm":
            sigmas = schedule_sigmas(alphas_cumprod(scheduler))
            edm = partial(edm_denoise, network, sigmas=sigmas)
            estimate = vp_model_fn(edm, alphas_cumprod(scheduler))
        else:  # drop the variance half when learned_variance
            edm, estimate = None, lambda x, t: x_start_estimate(scheduler, c, x, t, network(x, t)[:, : x.shape[1]])

        def model_fn(x, t):  # pixels live in [-1, 1]; latents are unbounded
            x_start = estimate(x, t)
            return x_start if c.use_vqgan else x_start.clamp(-1.0, 1.0)

        steps = timesteps if exists(timesteps) else c.sample_timesteps
        eta = c.ddim_eta if eta is None else eta
        if exists(edm) and sampler == "heun" and isinstance(steps, int):
            out = sample_heun(edm, noise, sampling_levels(sigmas, steps), callback=callback)
        else:
            if isinstance(steps, int):  # from pure noise: see DecoderConfig.sample_start
                steps = sampling_times(c, steps)
            out = run_sampler(sampler, model_fn, noise, alphas_cumprod(scheduler), steps, eta=eta, generator=generator,
                              callback=callback)
        if c.use_vqgan:
            out = self.vqgan.decode(out / self.latent_scale)
        self.train(was_training)
        return ((out.clamp(-1, 1) + 1) / 2).contiguous()

    # --- checks ------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        c = self.config
        expected = (c.channels, c.image_size, c.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise UserError(
                f"images have shape {tuple(images.shape)}, but this decoder takes (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}); check the data's image size and channels."
            )

    def _check_embeds(self, image_embeds: torch.Tensor, batch: int) -> None:
        d = self.config.image_embed_dim
        if image_embeds.ndim != 2 or image_embeds.shape != (batch, d):
            raise UserError(
                f"image embeddings have shape {tuple(image_embeds.shape)}, expected ({batch}, {d}); "
                "the decoder was built for another embedding model or batch."
            )

    # --- bundle ------------------------------------------------------------------------

    def save(self, path: str | Path, *, meta: dict | None = None) -> Path:
        """Write a "decoder" bundle: config + all weights (the VQGAN's included).

        Args:
            path: destination .pt file.
            meta: plain-typed extras, e.g. {"clip_fingerprint": ...} of the embedding model.
        """
        return save_bundle(path, kind="decoder", config=self.config.to_dict(), state_dict=self.state_dict(), meta=meta)

    @classmethod
    def load(cls, path: str | Path) -> "MicroDopplerDecoder":
        """Rebuild a decoder from its bundle alone (eval mode); its meta is in `.meta`.

        Args:
            path: a .pt file written by `save`.
        """
        payload = load_bundle(path, kind="decoder")
        config = DecoderConfig.from_dict(payload["config"], what=f"{path}: decoder config")
        model = cls(config=config)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as e:
            raise BundleError(
                f"{path}: weights do not fit its own config ({str(e).splitlines()[0][:200]}); the file is damaged."
            ) from None
        model.meta = payload.get("meta", {})
        return model.eval()


def build_decoder(config: DecoderConfig, *, vqgan: nn.Module | None = None) -> MicroDopplerDecoder:
    """A fresh decoder; with `use_vqgan` and `vqgan_path`, the trained VQGAN is loaded from that
    bundle and its config replaces `config.vqgan`.

    Args:
        config: the decoder's shape.
        vqgan: a trained VQGAN (of shape `config.vqgan`) to diffuse over instead of a file.
    """
    if exists(vqgan):
        if not config.use_vqgan:
            raise UserError("a VQGAN was given for a pixel decoder; set use_vqgan in its config.")
        return MicroDopplerDecoder(config=config, vqgan=vqgan)
    if config.use_vqgan and exists(config.vqgan_path):
        vqgan, vq_config = load_vqgan(config.vqgan_path)
        config = replace(config, vqgan=vq_config)
    return MicroDopplerDecoder(config=config, vqgan=vqgan)


