"""A diffusion transformer (DiT) backbone for the decoder, an alternative to dalle2-pytorch's
U-Net selected with `--backbone dit` (meant for VQGAN latents, whose small grids make few tokens).

Owns `DiT` and `check_dit_config` (a DecoderConfig's DiT checks). The input is cut into p x p
patches, each a token; a stack of transformer blocks whose layer norms are modulated by one
conditioning vector (adaLN-Zero, Peebles & Xie, "Scalable Diffusion Models with Transformers",
2023) made from the timestep and the image embedding; a modulated linear head puts the patches
back. It speaks the U-Net's calling convention (`forward(x, t, image_embed=...,
image_cond_drop_prob=...)`, `forward_with_cond_scale`, `self_cond`), so `MicroDopplerDecoder`'s
training loss, sampler and bundles use it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle2_md.utils import UserError


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) times -> (B, dim) sinusoidal features (the Transformer paper's position encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x (B, N, D), shift / scale (B, D): one affine map per sample, shared by its tokens
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Self-attention and MLP, each behind a layer norm whose shift / scale and a residual gate
    come from the conditioning vector; the gates start at 0 so every block starts as identity."""

    def __init__(self, *, dim: int, heads: int, mlp_mult: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.to_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_mult), nn.GELU(approximate="tanh"), nn.Linear(dim * mlp_mult, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=-1)
        q, k, v = rearrange(self.to_qkv(_modulate(self.norm1(x), shift1, scale1)), "b n (three h d) -> three b h n d",
                            three=3, h=self.heads)
        attended = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        x = x + gate1[:, None] * self.to_out(attended)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Noise predictor eps(x_t, t, image embedding) over (B, channels, size, size) inputs.

    Args:
        channels: channels of what is diffused (latent channels, or image channels).
        size: side of the square input; divisible by patch_size.
        image_embed_dim: size of the conditioning embedding.
        dim: token width.
        depth: transformer blocks.
        heads: attention heads (dim divisible by heads).
        patch_size: side of the square patches that become tokens.
    """

    self_cond = False  # read by dalle2-pytorch's Decoder.p_losses (see models/compat/): no self-conditioning here
    guides_in_one_batch = True  # read by decoder.guided_unet_forward: use forward_with_cond_scale

    def __init__(self, *, channels: int, size: int, image_embed_dim: int, dim: int = 128, depth: int = 4,
                 heads: int = 4, patch_size: int = 2):
        super().__init__()
        self.channels, self.size, self.patch_size = channels, size, patch_size
        self.to_tokens = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(1, (size // patch_size) ** 2, dim) * 0.02)
        self.time_dim = dim
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.embed_mlp = nn.Sequential(nn.Linear(image_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        # what a dropped embedding becomes: classifier-free guidance's unconditional branch
        self.null_image_embed = nn.Parameter(torch.zeros(image_embed_dim))
        self.blocks = nn.ModuleList(DiTBlock(dim=dim, heads=heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 2))
        self.to_patches = nn.Linear(dim, patch_size * patch_size * channels)
        for layer in (self.final_ada[-1], self.to_patches):  # the network starts by predicting 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, time: torch.Tensor, *, image_embed: torch.Tensor,
                image_cond_drop_prob: float = 0.0, **unused) -> torch.Tensor:
        """x (B, C, H, W) noised input, time (B,) integer steps, image_embed (B, D) -> (B, C, H, W).

        `image_cond_drop_prob`: chance per sample that the embedding is replaced by the learned
        null embedding. Other U-Net keywords (text_encodings, lowres_cond_img, self_cond, ...)
        are accepted and unused: this backbone conditions on the image embedding only."""
        batch = x.shape[0]
        if image_cond_drop_prob > 0:
            drop = torch.rand(batch, device=x.device) < image_cond_drop_prob
            image_embed = torch.where(drop[:, None], self.null_image_embed.to(image_embed.dtype), image_embed)
        cond = self.time_mlp(timestep_features(time, self.time_dim)) + self.embed_mlp(image_embed)
        tokens = rearrange(self.to_tokens(x), "b d h w -> b (h w) d") + self.pos
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        patches = self.to_patches(_modulate(self.final_norm(tokens), shift, scale))
        p, side = self.patch_size, self.size // self.patch_size
        return rearrange(patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=side, w=side, p1=p, p2=p)

    def forward_with_cond_scale(self, x: torch.Tensor, time: torch.Tensor, *, image_embed: torch.Tensor,
                                cond_scale: float = 1.0, **kwargs) -> torch.Tensor:
        """Classifier-free guidance: null + (cond - null) * cond_scale; both halves in one batch."""
        if cond_scale == 1:
            return self.forward(x, time, image_embed=image_embed, **kwargs)
        both = self.forward(torch.cat((x, x)), torch.cat((time, time)),
                            image_embed=torch.cat((image_embed, self.null_image_embed.expand_as(image_embed))))
        cond, null = both.chunk(2)
        return null + (cond - null) * cond_scale


def check_dit_config(config) -> None:
    """UserError naming the flag when a `DecoderConfig` with a non-U-Net backbone cannot build a DiT."""
    if config.backbone != "dit":
        raise UserError(f"--backbone must be 'unet' or 'dit', got {config.backbone!r}.")
    if config.learned_variance:
        raise UserError("--backbone dit predicts the noise only; learned_variance needs the U-Net.")
    if config.dim % config.attn_heads:
        raise UserError(f"--backbone dit: --dim {config.dim} must be divisible by --attn_heads {config.attn_heads}.")
    size = config.vqgan.latent_size if config.use_vqgan and config.vqgan is not None else config.image_size
    if size % config.dit_patch_size:
        raise UserError(f"--backbone dit: the diffused size {size} px is not divisible by --dit_patch_size "
                        f"{config.dit_patch_size}; pick a patch size that divides it.")
