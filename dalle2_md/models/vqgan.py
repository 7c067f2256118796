"""The VQGAN autoencoder under the latent decoder: its config, building dalle2-pytorch's
`VQGanVAE` for 1- or 3-channel spectrograms, training it on our images, encoding images to the
latents the decoder diffuses over, and its "vqgan" bundle.

Images here are in [-1, 1] (the data layer's convention), both in and out.

Why no perceptual or GAN loss: `VQGanVAE(use_vgg_and_gan=True)` builds torchvision's VGG16 with
`pretrained=True`, which downloads ImageNet weights (there is no internet where this runs, and
ImageNet features say little about spectrograms). We build it with `use_vgg_and_gan=False` and
train on its reconstruction loss (L1 by default) plus the vector quantiser's commitment loss,
computed through its own `encode` / `decode(return_indices_and_loss=True)` (`compat.vqgan_loss_terms`);
its `forward` in that mode drops the commitment term, which is why we do not call it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_md.models.bundle import load_bundle, save_bundle
from dalle2_md.utils import BundleError, UserError, checked_fields


def layers_for_factor(factor: int) -> int:
    """Stride-2 stages for a downsampling factor: 4 -> 2 (256 px -> 64 x 64), 8 -> 3 (-> 32 x 32)."""
    layers = int(factor).bit_length() - 1
    if factor < 2 or 2**layers != factor:
        raise UserError(f"--vqgan_factor {factor}: the downsampling factor must be a power of 2 such as 4 or 8.")
    return layers


def nearby_multiples(size: int, factor: int) -> str:
    """'48 or 64': the multiples of `factor` either side of `size`, for error messages."""
    below = max(factor, size // factor * factor)
    above = below + factor if below <= size else below
    return f"{below} or {above}" if below != above else str(below)


@dataclass(frozen=True)
class VQGanConfig:
    """Constructor arguments of the VQGAN autoencoder.

    Args:
        image_size: side of the square input images, in pixels.
        channels: 1 (scalar spectrogram) or 3 (RGB).
        dim: width of the first encoder stage; stage i has dim * layer_mults[i] channels.
        layers: number of stride-2 stages; latents are image_size / 2**layers on a side.
        layer_mults: channel multiplier per stage (default 1, 2, 4, ...); the latent has
            dim * layer_mults[-1] channels.
        num_resnet_blocks: residual blocks at the deepest stage.
        resnet_groups: group-norm groups; dim must be divisible by it.
        use_attn: self-attention at the deepest stage (slower on CPU).
        codebook_size: number of codes in the vector quantiser.
        codebook_dim: dimension the quantiser projects to before the code lookup (per head).
        codebook_heads: codes per latent pixel, each from its own codebook over its own slice of
            the projection. One code of 256 is 8 bits for an f x f patch, too few to keep a thin
            limb arc; four heads give 32 bits.
        quantize: decode through the vector quantiser (a VQGAN proper). Off: the decoder reads
            the encoder's continuous latent (`compat.VQGanAutoencoder`), the CPU default, because
            a codebook trained for minutes on 2 cores erases the thin limb arcs (docs/results.md).
        use_cosine_sim: look codes up by cosine similarity (dalle2-pytorch's default), which
            quantises only the direction of each slice and drops its length; off: Euclidean.
        l2_recon_loss: mean squared instead of L1 reconstruction loss.
    """

    image_size: int = 64
    channels: int = 1
    dim: int = 32
    layers: int = 2
    layer_mults: tuple[int, ...] | None = None
    num_resnet_blocks: int = 1
    resnet_groups: int = 8
    use_attn: bool = False
    codebook_size: int = 512
    codebook_dim: int = 64
    codebook_heads: int = 1
    quantize: bool = True
    use_cosine_sim: bool = True
    vq_decay: float = 0.8
    commitment_weight: float = 1.0
    l2_recon_loss: bool = False

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise UserError(f"VQGAN channels must be 1 or 3, got {self.channels}.")
        factor = 2**self.layers
        if self.image_size % factor:
            raise UserError(
                f"VQGAN image_size {self.image_size} is not divisible by 2**layers = {factor}; "
                f"use {nearby_multiples(self.image_size, factor)} or fewer layers."
            )
        if self.dim % self.resnet_groups:
            raise UserError(
                f"VQGAN dim {self.dim} must be divisible by resnet_groups {self.resnet_groups}."
            )
        if self.codebook_heads < 1:
            raise UserError(f"VQGAN codebook_heads must be at least 1, got {self.codebook_heads}.")
        if self.layer_mults is not None and len(self.layer_mults) != self.layers:
            raise UserError(
                f"VQGAN layer_mults {self.layer_mults} must have one entry per layer ({self.layers})."
            )

    @property
    def factor(self) -> int:
        """Downsampling factor f: a latent pixel covers f x f image pixels."""
        return 2**self.layers

    @property
    def latent_size(self) -> int:
        return self.image_size // 2**self.layers

    @property
    def latent_channels(self) -> int:
        mults = self.layer_mults or tuple(2**i for i in range(self.layers))
        return self.dim * mults[-1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, what: str = "VQGAN config") -> "VQGanConfig":
        """Rebuild from `to_dict()` output; unknown keys are refused (`utils.checked_fields`)."""
        d = checked_fields(cls, d, what=what)
        if d.get("layer_mults") is not None:
            d["layer_mults"] = tuple(d["layer_mults"])
        return cls(**d)


def build_vqgan(config: VQGanConfig):
    """A fresh, untrained `VQGanVAE` without VGG or discriminator (see the module docstring).

    Args:
        config: the autoencoder's shape.
    """
    from dalle2_md.models.compat import VQGanAutoencoder

    encdec = dict(
        encdec_num_resnet_blocks=config.num_resnet_blocks,
        encdec_resnet_groups=config.resnet_groups,
        encdec_use_attn=config.use_attn,
    )
    # passed only when used, so a one-head VQGAN is built exactly as before this option
    heads = dict(vq_heads=config.codebook_heads, vq_separate_codebook_per_head=True) if config.codebook_heads > 1 else {}
    if config.layer_mults is not None:
        encdec["encdec_layer_mults"] = list(config.layer_mults)
    return VQGanAutoencoder(
        quantize=config.quantize,
        dim=config.dim,
        image_size=config.image_size,
        channels=config.channels,
        layers=config.layers,
        l2_recon_loss=config.l2_recon_loss,
        use_vgg_and_gan=False,
        vq_codebook_dim=config.codebook_dim,
        vq_codebook_size=config.codebook_size,
        vq_decay=config.vq_decay,
        vq_commitment_weight=config.commitment_weight,
        vq_use_cosine_sim=config.use_cosine_sim,
        **heads,
        **encdec,
    )


def vqgan_loss(vqgan, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction + commitment loss of a batch in [-1, 1]; returns (loss, reconstructions)."""
    from dalle2_md.models.compat import vqgan_loss_terms  # lazily: this module must not import dalle2-pytorch on load

    recon_loss, commit_loss, recon = vqgan_loss_terms(vqgan, images)
    return recon_loss + commit_loss, recon


def _check_images(images: torch.Tensor, config: VQGanConfig, what: str = "images") -> None:
    expected = (config.channels, config.image_size, config.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise UserError(
            f"{what} have shape {tuple(images.shape)}, but this VQGAN takes (N, {expected[0]}, "
            f"{expected[1]}, {expected[2]}); resize the data or rebuild the VQGAN for it."
        )


class VQGanLoss(nn.Module):
    """`loss = module(images)`: a VQGAN as the training loop sees it (`vqgan_loss`'s loss)."""

    def __init__(self, vqgan):
        super().__init__()
        self.vqgan = vqgan

    def forward(self, images):
        return vqgan_loss(self.vqgan, images)[0]


@torch.no_grad()
def reconstruct(vqgan, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """Encode, quantise (unless the config says not to) and decode images in [-1, 1]; returns reconstructions clamped to [-1, 1]."""
    was_training = vqgan.training
    vqgan.eval()
    out = [vqgan.decode(vqgan.encode(chunk)).clamp(-1, 1) for chunk in images.split(batch_size)]
    vqgan.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def encode_latents(vqgan, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The continuous (pre-quantisation) encoder output the latent decoder diffuses over.

    Encode a data set once and train the latent decoder on the cached tensor: the VQGAN is
    frozen while the decoder trains, so re-encoding every step only costs time.

    Args:
        vqgan: a trained `VQGanVAE`.
        images: (N, C, H, W) in [-1, 1].
        batch_size: images per encoder call (bounds memory).

    Returns:
        (N, latent_channels, latent_size, latent_size) float tensor.
    """
    was_training = vqgan.training
    vqgan.eval()
    out = [vqgan.encode(chunk.float()) for chunk in images.split(batch_size)]
    vqgan.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def reconstruction_quality(vqgan, images: torch.Tensor, *, batch_size: int = 64) -> dict:
    """How faithfully the VQGAN reproduces images: PSNR (dB) and SSIM of its reconstructions,
    both measured on [0, 1] with torchmetrics, averaged over the images.

    Args:
        vqgan: a trained `VQGanVAE`.
        images: (N, C, H, W) in [-1, 1].
        batch_size: images per encoder call.
    Returns:
        {"psnr": float, "ssim": float, "images": N}
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    images = images.float().to(next(vqgan.parameters()).device)  # where training left the model
    original = (images.clamp(-1, 1) + 1) / 2
    recon = (reconstruct(vqgan, images, batch_size=batch_size) + 1) / 2
    # per-image PSNR, then the mean: one badly reproduced image should show, not be averaged into the MSE
    per_image = peak_signal_noise_ratio(recon, original, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(recon, original, data_range=1.0)
    return {"psnr": float(per_image.mean()), "ssim": float(ssim), "images": len(images)}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two image batches in [-1, 1], measured on [0, 1]."""
    mse = F.mse_loss((a.clamp(-1, 1) + 1) / 2, (b.clamp(-1, 1) + 1) / 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def save_vqgan(path: str | Path, vqgan, config: VQGanConfig, *, meta: dict | None = None) -> Path:
    """Write a "vqgan" bundle (config + weights, codebook included).

    Args:
        path: destination .pt file.
        vqgan: the trained model.
        config: the config it was built from.
        meta: extra plain-typed facts (training steps, PSNR, ...).
    """
    return save_bundle(path, kind="vqgan", config=config.to_dict(), state_dict=vqgan.state_dict(), meta=meta)


def load_vqgan(path: str | Path):
    """Rebuild a VQGAN from its bundle; returns (vqgan in eval mode, config).

    Args:
        path: a .pt file written by `save_vqgan`.
    """
    payload = load_bundle(path, kind="vqgan")
    config = VQGanConfig.from_dict(payload["config"], what=f"{path}: VQGAN config")
    vqgan = build_vqgan(config)
    try:
        vqgan.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise BundleError(f"{path}: weights do not fit its own config ({str(e).splitlines()[0][:200]}); the file is damaged.") from None
    return vqgan.eval(), config
