"""Every reach into dalle2-pytorch, x-clip and accelerate internals, in one place.

dalle2-md builds on dalle2-pytorch's `DiffusionPriorNetwork`, `DiffusionPrior`, `Unet`, `Decoder`
and `VQGanVAE` and on x-clip's `CLIP`. The classes are public (importable from the packages'
top level); what is not is everything below: private modules, attributes the classes set in
their constructors, methods their README does not document, and one workaround. The rest of the
package goes through the functions here, so a dependency upgrade that moves one of them breaks
one package, and `check_dependency_surface()` (run by tests/models/test_compat.py) names what moved.

Checked against dalle2-pytorch 1.15.6 and x-clip 0.14.4 (`CHECKED_AGAINST`).

dalle2-pytorch (module `dalle2_pytorch.dalle2_pytorch` unless named):

- `DiffusionPriorNetwork.to_text_embeds`, `.null_text_embeds` (prior.py): the user tokens enter
  as the network's "text embed" tokens; the parent's Linear is swapped for a reshape
  (`replace_text_embed_projection`) and its learned null tokens are the "no user" tokens
  (`null_text_tokens`).
- `DiffusionPrior.p_losses(image_embed, times, text_cond)` and `.noise_scheduler` (prior.py):
  the loss is called directly, because `DiffusionPrior.forward` scales its input in place and
  expects CLIP or text (`prior_p_losses`, `noise_scheduler_of`).
- attributes `DiffusionPrior.__init__` sets that the subclass in prior.py reads as its own
  (`image_embed_scale`, `image_embed_dim`, `sample_timesteps`, `predict_x_start`, `predict_v`,
  `sampling_clamp_l2norm`, `sampling_final_clamp_l2norm`, `can_classifier_guidance`,
  `l2norm_clamp_embed`): not wrapped, as they are the subclass's state, but checked below.
- `NoiseScheduler.sample_random_times`, `.predict_start_from_noise`, `.predict_start_from_v`,
  `.alphas_cumprod` (prior.py, decoder.py, variations.py): our own samplers run on the
  library's schedule (`random_times`, `x_start_from_noise`, `x_start_from_v`, `alphas_cumprod`).
- every buffer `NoiseScheduler.__init__` registers (`betas`, `alphas_cumprod`, ...,
  `posterior_mean_coef2`, `p2_loss_weight`) and its `has_p2_loss_reweighting` flag, read by its
  `q_sample`, `predict_start_from_v`, `q_posterior` and `p2_reweigh_loss` (decoder.py): the
  schedule is rescaled to zero terminal SNR by recomputing them all from new betas
  (`rescale_to_zero_terminal_snr`, `schedule_buffers`, `set_schedule_betas`), and min-SNR
  weights take the P2 weights' place (`set_loss_weight`, `min_snr_loss_weights`).
- `Decoder.unets[0]`, `.vaes[0]`, `.noise_schedulers[0]` (decoder.py): one U-Net, one VQGAN;
  the DiT backbone replaces the U-Net in place (`decoder_unet`, `set_decoder_unet`,
  `decoder_vae`, `noise_scheduler_of`).
- `Decoder.p_losses(unet, x_start, times, *, image_embed, noise_scheduler, learned_variance,
  is_latent_diffusion, predict_v)` (decoder.py): called directly so latent training runs on cached latents
  instead of re-encoding every batch (`decoder_p_losses`). It reads `unet.self_cond`, which
  dit.DiT therefore defines.
- `Decoder.unets[i]`, `.noise_schedulers[i]`, `.lowres_conds[i].noise_scheduler`, the module
  function `resize_image_to` and `NoiseScheduler.q_sample` (upsampler.py): the upsampler trains
  through `Decoder.forward(images, unet_number=2)`, but samples with our keyed-noise samplers, so
  it reads its U-Net, schedule and low-res noise schedule and prepares the low-res input as the
  Decoder does (`cascade_unet`, `cascade_noise_scheduler`, `lowres_noise_scheduler`,
  `nearest_resize`, `q_sample`).
- `ResnetBlock.cross_attn` and `CrossAttention(dim, context_dim, heads, dim_head, cosine_sim)`
  (decoder.py, upsampler.py): the cross-attentions are rebuilt at the U-Net's attention shape instead of the
  fixed 8 x 64 (`resize_cross_attention`).
- `Attention` (the U-Net's self-attention and the prior's causal transformer) and
  `CrossAttention` (the U-Net's conditioning): their `forward` builds the whole tokens x tokens
  matrix (4096 x 4096 per head at a 64 x 64 feature map). `use_sdpa_attention` swaps each
  instance's class for a subclass (`SDPAAttention`, `SDPACrossAttention`) whose forward is the
  parent's with the two einsums and the softmax replaced by one
  `torch.nn.functional.scaled_dot_product_attention` call, whose flash kernels (CPU and CUDA)
  never hold the matrix when there is no float mask (the U-Net's case); it reads the attributes the parent's `__init__` sets (`heads`, `scale`, `cosine_sim`,
  `causal`, `null_kv`, `rotary_emb`, `norm`, `to_q`, `to_kv`, `to_out`, `dropout`,
  `norm_context`). The decoder and the prior apply it when they are built (bundles included).
  `check_dependency_surface` also checks that both still give the parent's outputs.
- `Unet.image_to_tokens`, `.null_image_embed`, `.to_image_hiddens`, `.null_image_hiddens`
  (decoder.py): classifier-free guidance in one batch of 2B nulls the outputs of these
  projections for the second half (`unet_conditioning_nulls`).
- Workaround: `Unet` makes `image_to_tokens` an Identity when `cond_dim == image_embed_dim`
  and then crashes or mixes samples; `unet_cond_dim` widens cond_dim by 8 in that case.
- `VQGanVAE.recon_loss_fn` and the 3-tuple `(fmap, indices, commit_loss)` of
  `VQGanVAE.decode(fmap, return_indices_and_loss=True)` (vqgan.py): its `forward` drops the
  commitment term, so the loss is put together here (`vqgan_loss_terms`).
- `VQGanVAE.enc_dec.decode` and the `vq_heads` / `vq_separate_codebook_per_head` keywords it
  forwards to vector-quantize-pytorch (vqgan.py): `VQGanAutoencoder` decodes without the
  quantiser when asked (a continuous latent), and several codebook heads quantise each latent
  pixel with several codes.

x-clip:

- `CLIP.visual_transformer`, `.to_visual_latent`, `.text_transformer(tokens, mask)`,
  `.to_text_latent`, `.temperature` (embedding.py): our loss is supervised-contrastive over user
  tokens, not CLIP's diagonal, so it needs the towers' latents (`image_latent`, `text_latent`,
  `logit_scale`, `image_tower`).
- `CLIP.visual_ssl` set after construction (embedding.py): the SSL head acts on the image latent,
  whose projection CLIP creates in its constructor; the attribute name keeps the bundles'
  weight keys `clip.visual_ssl.*` (`attach_visual_ssl`).
- module `x_clip.visual_ssl`: `SimSiam` and `nt_xent_loss(queries, keys, temperature)`
  (embedding.py), re-exported here.

accelerate and torch schedulers (training/loop.py): `accelerate_internals`, checked by
tests/models/test_compat_accelerate.py.
"""

from __future__ import annotations

from dalle2_md.models.compat.dalle2 import (  # noqa: F401
    cascade_unet, cascade_noise_scheduler, lowres_noise_scheduler, nearest_resize, q_sample,
    CHECKED_AGAINST, NoiseScheduler, VQGanAutoencoder, alphas_cumprod, decoder_p_losses,
    decoder_unet, decoder_vae, noise_scheduler_of, null_text_tokens, prior_p_losses, random_times,
    replace_text_embed_projection, resize_cross_attention, set_decoder_unet, unet_cond_dim,
    unet_conditioning_nulls, vqgan_loss_terms, x_start_from_noise, x_start_from_v,
    min_snr_loss_weights, p2_loss_weights, rescale_to_zero_terminal_snr, schedule_buffers, set_loss_weight,
    set_schedule_betas, snr, zero_terminal_snr_betas,
)
from dalle2_md.models.compat.attention import (  # noqa: F401
    SDPAAttention, SDPACrossAttention, sdpa_attention_counts, use_sdpa_attention,
)
from dalle2_md.models.compat.xclip import (  # noqa: F401
    SimSiam, attach_visual_ssl, image_latent, image_tower, logit_scale, nt_xent_loss, text_latent,
)
from dalle2_md.models.compat.surface import (  # noqa: F401
    check_dependency_surface, installed_version,
)
from dalle2_md.models.compat.accelerate_internals import (  # noqa: F401
    ACCELERATE_ATTRIBUTES, accelerate_version, allow_mixed_precision, grad_scaler, set_base_lr,
    unwrap_optimizer,
)

__all__ = [
    'cascade_unet', 'cascade_noise_scheduler', 'lowres_noise_scheduler', 'nearest_resize', 'q_sample',
    'ACCELERATE_ATTRIBUTES', 'CHECKED_AGAINST', 'NoiseScheduler', 'SDPAAttention',
    'SDPACrossAttention', 'SimSiam', 'VQGanAutoencoder', 'accelerate_version',
    'allow_mixed_precision', 'alphas_cumprod', 'attach_visual_ssl', 'check_dependency_surface',
    'decoder_p_losses', 'decoder_unet', 'decoder_vae', 'grad_scaler', 'image_latent', 'image_tower',
    'installed_version', 'logit_scale', 'noise_scheduler_of', 'nt_xent_loss', 'null_text_tokens',
    'prior_p_losses', 'random_times', 'replace_text_embed_projection', 'resize_cross_attention',
    'sdpa_attention_counts', 'set_base_lr', 'set_decoder_unet', 'text_latent', 'unet_cond_dim',
    'unet_conditioning_nulls', 'unwrap_optimizer', 'use_sdpa_attention', 'vqgan_loss_terms',
    'x_start_from_noise', 'x_start_from_v',
    'min_snr_loss_weights', 'p2_loss_weights', 'rescale_to_zero_terminal_snr', 'schedule_buffers',
    'set_loss_weight', 'set_schedule_betas', 'snr', 'zero_terminal_snr_betas',
]
