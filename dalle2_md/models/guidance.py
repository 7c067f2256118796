"""Classifier-free guidance for the decoder's U-Net: its sampling interval and one batched forward of
the conditional and null halves."""

from __future__ import annotations

import torch
from torch import nn

from dalle2_md.models.compat import unet_conditioning_nulls
from dalle2_md.utils import UserError


def check_guidance_interval(interval) -> tuple[float, float]:
    """(lo, hi) as floats with 0 <= lo <= hi <= 1, from a pair or the flag's "lo,hi" text, or a
    UserError naming the flag."""
    if isinstance(interval, str):
        interval = interval.split(",")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise UserError(f"--guidance_interval must be two numbers lo,hi, got {interval!r}.") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise UserError(f"--guidance_interval {lo:g},{hi:g} must satisfy 0 <= lo <= hi <= 1 (fractions of the schedule).")
    return lo, hi


def guided_unet_forward(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, image_embeds: torch.Tensor,
                        cond_scale: float) -> torch.Tensor:
    """Classifier-free guidance, null + (cond - null) * cond_scale, in one U-Net call of 2B.

    dalle2-pytorch's `Unet.forward` drops conditioning for a whole call (its keep mask comes
    from one probability), so its `forward_with_cond_scale` runs the U-Net twice. Here the
    second half of a doubled batch gets the null conditioning instead: forward hooks replace
    the outputs of `image_to_tokens` (cross-attention tokens) and `to_image_hiddens` (the
    embedding added to the time hiddens) with the U-Net's learned nulls for those rows -- the
    values its own dropout would put there.

    Args:
        unet: a dalle2-pytorch `Unet` conditioned on image embeddings.
        x: (B, C, H, W) noised input; t: (B,) times; image_embeds: (B, D).
        cond_scale: 1 runs the conditional branch alone.
    Returns:
        the U-Net output for x, (B, C', H, W).
    """
    if cond_scale == 1:
        return unet(x, t, image_embed=image_embeds)
    if getattr(unet, "guides_in_one_batch", False):  # dit.DiT nulls its own embedding rows
        return unet.forward_with_cond_scale(x, t, image_embed=image_embeds, cond_scale=cond_scale)
    batch, hooked = x.shape[0], []

    def null_second_half(null):
        def hook(module, inputs, output):
            hooked.append(module)
            null_rows = null.to(output.dtype).expand(batch, *output.shape[1:])
            return torch.cat((output[:batch], null_rows), dim=0)
        return hook

    handles = [module.register_forward_hook(null_second_half(null)) for module, null in unet_conditioning_nulls(unet)]
    try:
        out = unet(torch.cat((x, x)), torch.cat((t, t)), image_embed=torch.cat((image_embeds, image_embeds)))
    finally:
        for handle in handles:
            handle.remove()
    if not hooked:
        raise RuntimeError("the U-Net never projected the image embedding; guidance would not null anything")
    cond, null = out[:batch], out[batch:]
    return null + (cond - null) * cond_scale
