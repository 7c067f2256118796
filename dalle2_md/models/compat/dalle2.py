"""Reaches into dalle2-pytorch's prior, noise schedule, decoder, U-Net and VQGAN (see the
package docstring for each and why)."""

from __future__ import annotations


import torch
from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet, VQGanVAE
from dalle2_pytorch.dalle2_pytorch import CrossAttention, NoiseScheduler, ResnetBlock, resize_image_to
from torch import nn

# the versions every function here was read against and tested with
CHECKED_AGAINST = {"dalle2-pytorch": "1.15.6", "x-clip": "0.14.4"}

# --- dalle2-pytorch: prior ------------------------------------------------------------------


def replace_text_embed_projection(net: DiffusionPriorNetwork, module: nn.Module) -> None:
    """Swap the network's text-embed -> tokens projection (`to_text_embeds`) for `module`."""
    net.to_text_embeds = module


def null_text_tokens(net: DiffusionPriorNetwork) -> torch.Tensor:
    """The network's learned null text tokens, (1, num_text_embeds, dim)."""
    return net.null_text_embeds


def prior_p_losses(prior: DiffusionPrior, x_start: torch.Tensor, times: torch.Tensor, text_cond: dict) -> torch.Tensor:
    """The prior's diffusion loss at given times; x_start already scaled, text_cond the network's keywords."""
    return prior.p_losses(x_start, times, text_cond=text_cond)


# --- dalle2-pytorch: noise schedule ---------------------------------------------------------


def noise_scheduler_of(model: DiffusionPrior | Decoder) -> NoiseScheduler:
    """The schedule of a prior, or of a one-U-Net decoder's U-Net."""
    if isinstance(model, Decoder):
        return model.noise_schedulers[0]
    return model.noise_scheduler


def random_times(scheduler: NoiseScheduler, batch: int) -> torch.Tensor:
    """(batch,) uniform training times 0..T-1 on the schedule's device."""
    return scheduler.sample_random_times(batch)


def x_start_from_noise(scheduler: NoiseScheduler, x_t: torch.Tensor, t: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
    """The x_0 estimate from x_t and a predicted noise."""
    return scheduler.predict_start_from_noise(x_t, t=t, noise=noise)


def x_start_from_v(scheduler: NoiseScheduler, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The x_0 estimate from x_t and a predicted v (Salimans & Ho 2022, "Progressive Distillation")."""
    return scheduler.predict_start_from_v(x_t, t=t, v=v)


def alphas_cumprod(scheduler: NoiseScheduler) -> torch.Tensor:
    """(T,) cumulative alpha products of the training schedule, indexed by t."""
    return scheduler.alphas_cumprod


def schedule_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every schedule buffer `NoiseScheduler.__init__` registers except `p2_loss_weight`,
    recomputed (float64, then float32 as it stores them) from betas (T,).

    With a last beta of 1 (zero terminal SNR) alpha_bar ends at 0 and 1 / alpha_bar is computed
    from float32's smallest normal number there: the reciprocal buffers end in ~1e19, not inf, so
    the model's state_dict stays finite (training's divergence check reads every buffer); only
    noise predictions read them, and zero terminal SNR refuses those."""
    betas = betas.detach().to(torch.float64)
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    recip = 1.0 / abar.clamp(min=torch.finfo(torch.float32).tiny)
    abar_prev = torch.cat((abar.new_ones(1), abar[:-1]))
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    buffers = {
        "betas": betas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
        "log_one_minus_alphas_cumprod": torch.log(1.0 - abar), "sqrt_recip_alphas_cumprod": recip.sqrt(),
        "sqrt_recipm1_alphas_cumprod": (recip - 1.0).sqrt(), "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
        "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
    }
    return {name: value.to(torch.float32) for name, value in buffers.items()}


def set_schedule_betas(scheduler: NoiseScheduler, betas: torch.Tensor) -> None:
    """Replace the scheduler's betas and every buffer derived from them (`schedule_buffers`) in
    place, on its device; `p2_loss_weight` is left to `set_loss_weight`."""
    device = scheduler.betas.device
    for name, value in schedule_buffers(betas).items():
        setattr(scheduler, name, value.to(device))  # an nn.Module replaces the registered buffer


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled to zero terminal SNR (Lin, Liu, Li & Yang 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Algorithm 1): sqrt(alpha_bar) is shifted so its last
    value is 0 and scaled so its first is unchanged; the last beta becomes 1."""
    root = torch.cumprod(1.0 - betas.detach().to(torch.float64), dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    abar = root**2
    return 1.0 - torch.cat((abar[:1], abar[1:] / abar[:-1]))


def rescale_to_zero_terminal_snr(scheduler: NoiseScheduler) -> None:
    """Rescale the scheduler's schedule in place to zero terminal SNR (`zero_terminal_snr_betas`)."""
    set_schedule_betas(scheduler, zero_terminal_snr_betas(scheduler.betas))


def snr(scheduler: NoiseScheduler) -> torch.Tensor:
    """(T,) signal-to-noise ratio alpha_bar / (1 - alpha_bar) of the scheduler's schedule (float64)."""
    abar = scheduler.alphas_cumprod.detach().to(torch.float64)
    return abar / (1.0 - abar)


def p2_loss_weights(scheduler: NoiseScheduler, gamma: float, k: float = 1.0) -> torch.Tensor:
    """(T,) P2 weights (k + SNR)^-gamma (Choi et al. 2022), as `NoiseScheduler.__init__` makes them."""
    return ((k + snr(scheduler)) ** -gamma).to(torch.float32)


def min_snr_loss_weights(scheduler: NoiseScheduler, gamma: float, *, predict_v: bool) -> torch.Tensor:
    """(T,) min-SNR-gamma weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy") of the per-sample loss: min(SNR, gamma) / (SNR + 1) for a v target,
    min(SNR, gamma) / SNR for a noise target (1 where SNR is 0 there)."""
    ratio = snr(scheduler)
    denominator = ratio + 1.0 if predict_v else ratio
    weights = torch.minimum(ratio, torch.full_like(ratio, gamma)) / denominator
    return torch.where(denominator > 0, weights, torch.ones_like(weights)).to(torch.float32)


def set_loss_weight(scheduler: NoiseScheduler, weights: torch.Tensor) -> None:
    """Make `weights` (T,) what `NoiseScheduler.p2_reweigh_loss` multiplies into each sample's
    loss at its time: replaces the `p2_loss_weight` buffer and turns `has_p2_loss_reweighting` on."""
    scheduler.p2_loss_weight = weights.to(scheduler.p2_loss_weight.device, torch.float32)
    scheduler.has_p2_loss_reweighting = True


# --- dalle2-pytorch: decoder ----------------------------------------------------------------


def decoder_unet(decoder: Decoder) -> nn.Module:
    """The (only) U-Net of a one-stage decoder."""
    return decoder.unets[0]


def set_decoder_unet(decoder: Decoder, module: nn.Module) -> None:
    """Put `module` in the U-Net's place; `Decoder.p_losses` calls it like a `Unet`."""
    decoder.unets[0] = module


def decoder_vae(decoder: Decoder) -> nn.Module:
    """The decoder's VAE (its eval copy of the VQGAN it was built with)."""
    return decoder.vaes[0]


def decoder_p_losses(decoder: Decoder, x_start: torch.Tensor, times: torch.Tensor, *, image_embed: torch.Tensor,
                     learned_variance: bool, is_latent_diffusion: bool, predict_v: bool = False,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder's diffusion loss for its one U-Net at given times (x_start: pixels or latents);
    the target is the noise (`noise`, default standard Gaussian), or v with `predict_v`."""
    return decoder.p_losses(
        decoder_unet(decoder), x_start, times, image_embed=image_embed, noise_scheduler=noise_scheduler_of(decoder),
        learned_variance=learned_variance, is_latent_diffusion=is_latent_diffusion, predict_v=predict_v, noise=noise,
    )


def resize_cross_attention(unet: nn.Module, *, heads: int, dim_head: int) -> None:
    """Rebuild every ResnetBlock's cross-attention with `heads` x `dim_head`.

    dalle2-pytorch builds them with CrossAttention's defaults (8 heads x 64 = 512 wide) at every
    resolution but the first, whatever the U-Net's width: at dim 16 and 64 px those layers alone
    took most of a CPU training step. Same input and context widths, same cosine-sim choice.
    """
    for block in unet.modules():
        if isinstance(block, ResnetBlock) and block.cross_attn is not None:
            old = block.cross_attn
            block.cross_attn = CrossAttention(
                dim=old.to_q.in_features, context_dim=old.to_kv.in_features,
                heads=heads, dim_head=dim_head, cosine_sim=old.cosine_sim,
            )


def unet_conditioning_nulls(unet: Unet) -> list[tuple[nn.Module, torch.Tensor]]:
    """(projection, learned null of its output) for each way a `Unet` reads the image embedding:
    the cross-attention tokens and, when the U-Net has them, the hiddens added to the time
    embedding. Its own conditioning dropout puts these nulls in place of the outputs."""
    pairs = [(unet.image_to_tokens, unet.null_image_embed)]
    if getattr(unet, "to_image_hiddens", None) is not None:
        pairs.append((unet.to_image_hiddens, unet.null_image_hiddens))
    return pairs


def unet_cond_dim(cond_dim: int, image_embed_dim: int) -> int:
    """cond_dim to give `Unet`: never equal to image_embed_dim.

    When they are equal `Unet.image_to_tokens` is an Identity: `forward` then crashes, or, when
    the batch equals num_image_tokens, silently mixes samples. 8 more keeps the projection."""
    return cond_dim + 8 if cond_dim == image_embed_dim else cond_dim


# --- dalle2-pytorch: the cascade (upsampler) ------------------------------------------------


def cascade_unet(decoder: Decoder, number: int) -> nn.Module:
    """U-Net `number` of a cascade, counted from 1 as `Decoder.forward(unet_number=)` does."""
    return decoder.unets[number - 1]


def cascade_noise_scheduler(decoder: Decoder, number: int) -> NoiseScheduler:
    """The diffusion schedule of U-Net `number` of a cascade."""
    return decoder.noise_schedulers[number - 1]


def lowres_noise_scheduler(decoder: Decoder, number: int) -> NoiseScheduler | None:
    """The schedule of the Gaussian noise that augments U-Net `number`'s low-res input in
    training (Imagen's noise conditioning); None when that U-Net trains without it."""
    return decoder.lowres_conds[number - 1].noise_scheduler


def nearest_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [-1, 1] resized to `size` by nearest neighbour and clamped: how the Decoder
    shrinks a full-size image to the low-res size and enlarges a low-res image for an upsampler."""
    return resize_image_to(images, size, clamp_range=(-1.0, 1.0), nearest=True)


def q_sample(scheduler: NoiseScheduler, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t of x_0 at times t (B,) with the given Gaussian noise, on `scheduler`'s schedule."""
    return scheduler.q_sample(x_start=x_start, t=t, noise=noise)


# --- dalle2-pytorch: VQGAN ------------------------------------------------------------------


class VQGanAutoencoder(VQGanVAE):
    """dalle2-pytorch's `VQGanVAE` whose decoder may skip the vector quantiser.

    With `quantize=False` the latent stays continuous (as in latent diffusion's KL-f4 models):
    a CPU-trained codebook of a few hundred codes per 4 x 4 patch erases the one-pixel limb arcs
    that identify a walker, while the same encoder and decoder without it keep them. Everything
    else (weights, encoder, `Decoder`'s isinstance checks) is the parent's.
    """

    def __init__(self, *, quantize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.quantize = quantize

    def decode(self, fmap, return_indices_and_loss=False):
        if self.quantize:
            return super().decode(fmap, return_indices_and_loss=return_indices_and_loss)
        out = self.enc_dec.decode(fmap)
        return (out, None, fmap.new_zeros(())) if return_indices_and_loss else out


def vqgan_loss_terms(vqgan: VQGanVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction loss, summed commitment loss, reconstructions) of images in [-1, 1]."""
    fmap = vqgan.encode(images)
    recon, _, commit_loss = vqgan.decode(fmap, return_indices_and_loss=True)
    return vqgan.recon_loss_fn(recon, images), commit_loss.sum(), recon


