"""Reaches into x-clip's `CLIP`: the towers' latents, its temperature and the SSL head."""

from __future__ import annotations


import torch
from torch import nn
from x_clip import CLIP
from x_clip.visual_ssl import SimSiam, nt_xent_loss  # noqa: F401  (re-exported: the SSL head of embedding.py)

# --- x-clip ---------------------------------------------------------------------------------


def image_tower(clip: CLIP) -> tuple[nn.Module, nn.Module]:
    """(image encoder, its CLS token -> latent projection) of a CLIP."""
    return clip.visual_transformer, clip.to_visual_latent


def image_latent(clip: CLIP, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent before normalisation (B, dim_latent), encoder tokens after the CLS (B, N, dim_image))."""
    encoder, to_latent = image_tower(clip)
    enc = encoder(images)
    return to_latent(enc[:, 0]), enc[:, 1:]


def text_latent(clip: CLIP, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent before normalisation (B, dim_latent), token encodings after the CLS (B, L, dim_text))."""
    enc = clip.text_transformer(tokens, mask)  # (B, 1 + L, dim_text): CLS first
    return clip.to_text_latent(enc[:, 0]), enc[:, 1:]


def logit_scale(clip: CLIP) -> torch.Tensor:
    """CLIP's learned logit scale (its temperature parameter is the log of it)."""
    return clip.temperature.exp()


def attach_visual_ssl(clip: CLIP, ssl: nn.Module) -> None:
    """Register an SSL head on a built CLIP as `visual_ssl` (the name the weight keys carry)."""
    clip.visual_ssl = ssl


