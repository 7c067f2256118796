"""Every reach into dalle2-pytorch, x-clip and accelerate internals, in one place.

dalle2-md builds on dalle2-pytorch's `DiffusionPriorNetwork`, `DiffusionPrior`, `Unet`, `Decoder`
and `VQGanVAE` and on x-clip's `CLIP`. The classes are public (importable from the packages'
top level); what is not is everything below: private modules, attributes the classes set in
their constructors, methods their README does not document, and one workaround. The rest of the
package goes through the functions here, so a dependency upgrade that moves one of them breaks
one file, and `check_dependency_surface()` (run by tests/test_compat.py) names what moved.

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
- `Decoder.unets[0]`, `.vaes[0]`, `.noise_schedulers[0]` (decoder.py): one U-Net, one VQGAN;
  the DiT backbone replaces the U-Net in place (`decoder_unet`, `set_decoder_unet`,
  `decoder_vae`, `noise_scheduler_of`).
- `Decoder.p_losses(unet, x_start, times, *, image_embed, noise_scheduler, learned_variance,
  is_latent_diffusion, predict_v)` (decoder.py): called directly so latent training runs on cached latents
  instead of re-encoding every batch (`decoder_p_losses`). It reads `unet.self_cond`, which
  dit.DiT therefore defines.
- `ResnetBlock.cross_attn` and `CrossAttention(dim, context_dim, heads, dim_head, cosine_sim)`
  (decoder.py): the cross-attentions are rebuilt at the U-Net's attention shape instead of the
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
  `.to_text_latent`, `.temperature` (clip.py): our loss is supervised-contrastive over user
  tokens, not CLIP's diagonal, so it needs the towers' latents (`image_latent`, `text_latent`,
  `logit_scale`, `image_tower`).
- `CLIP.visual_ssl` set after construction (clip.py): the SSL head acts on the image latent,
  whose projection CLIP creates in its constructor; the attribute name keeps the bundles'
  weight keys `clip.visual_ssl.*` (`attach_visual_ssl`).
- module `x_clip.visual_ssl`: `SimSiam` and `nt_xent_loss(queries, keys, temperature)`
  (clip.py), re-exported here.

accelerate and torch schedulers (training.py): the block at the end of this file, checked by
tests/test_compat_accelerate.py.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import torch
from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet, VQGanVAE
from dalle2_pytorch.dalle2_pytorch import Attention, CausalTransformer, CrossAttention, NoiseScheduler, ResnetBlock
from einops import rearrange, repeat
from torch import nn
from torch.nn import functional as F
from x_clip import CLIP
from x_clip.visual_ssl import SimSiam, nt_xent_loss

__all__ = [
    "CHECKED_AGAINST", "NoiseScheduler", "SimSiam", "nt_xent_loss",
    "replace_text_embed_projection", "null_text_tokens", "prior_p_losses",
    "noise_scheduler_of", "random_times", "x_start_from_noise", "x_start_from_v", "alphas_cumprod",
    "decoder_unet", "set_decoder_unet", "decoder_vae", "decoder_p_losses",
    "resize_cross_attention", "SDPAAttention", "SDPACrossAttention", "use_sdpa_attention", "sdpa_attention_counts",
    "unet_conditioning_nulls", "unet_cond_dim", "vqgan_loss_terms",
    "VQGanAutoencoder",
    "image_tower", "image_latent", "text_latent", "logit_scale", "attach_visual_ssl",
    "check_dependency_surface", "installed_version",
]

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


# --- dalle2-pytorch: attention through scaled_dot_product_attention --------------------------
#
# dalle2-pytorch's `Attention.forward` (self-attention of the U-Net, causal attention of the
# prior) and `CrossAttention.forward` compute `sim = einsum(q, k)`, mask it, softmax it in fp32
# and `einsum(attn, v)`: the whole tokens x tokens matrix, twice (sim and its softmax), per head.
# The subclasses below are those forwards line for line up to `sim`, then one
# `F.scaled_dot_product_attention` call, which computes the same softmax(q k^T * scale + mask) v
# in blocks (flash / memory-efficient kernels on CPU and CUDA; with the prior's float bias it may
# take the plain kernel, over a few tokens). What is kept exactly:
#
# - the learned null key / value, concatenated before the call (never masked, as in the parent);
# - Attention's scaling: q * scale before the rotary embedding, then q and k * sqrt(scale) each,
#   so q.k is multiplied by scale^2 without cosine-sim (1 / dim_head: the parent's double
#   scaling, kept) and by scale = 16 on l2-normalised q, k with it. q * scale stays where the
#   parent has it; SDPA's `scale=` gives the remaining sqrt(scale)^2. CrossAttention scales once;
# - rotary embeddings on q (all heads) and k (one shared head: `Attention` is multi-query), the
#   k / v head expanded (a view) to the query heads;
# - the prior's T5 relative-position bias, passed as a float `attn_mask` (h, i, j);
# - the key mask (padded True for the null key) and the causal mask, which the parent aligns to
#   the bottom right (`triu(j - i + 1)`: query r sees the null key and keys 1..r+1); SDPA's
#   `is_causal` aligns top left, so the mask is built explicitly. With a bias the masked entries
#   get -finfo.max, the parent's fill; without one a boolean mask (-inf), same softmax as the
#   null key keeps every row non-empty;
# - CrossAttention's dropout, which its forward never applies (nor does this one).
#
# Falls back to the parent's forward: `Attention` in training mode with dropout > 0 (only the
# prior, with `PriorConfig.attn_dropout` > 0): SDPA's `dropout_p` draws its mask from the RNG
# differently, so a seeded training run would not repeat the einsum path's. Everything else is
# exact to float rounding (tests/test_sdpa.py; `check_dependency_surface` re-checks it against
# the installed dalle2-pytorch).


class SDPAAttention(Attention):
    """dalle2-pytorch's `Attention` computed by `F.scaled_dot_product_attention` (same weights,
    same outputs to float rounding; see the notes above)."""

    def forward(self, x, mask=None, attn_bias=None):
        if self.training and self.dropout.p > 0:
            return super().forward(x, mask=mask, attn_bias=attn_bias)  # the parent's dropout RNG stream
        b = x.shape[0]
        x = self.norm(x)
        q, k, v = (self.to_q(x), *self.to_kv(x).chunk(2, dim=-1))
        q = rearrange(q, "b n (h d) -> b h n d", h=self.heads)
        q = q * self.scale
        if self.rotary_emb is not None:
            q, k = map(self.rotary_emb.rotate_queries_or_keys, (q, k))
        nk, nv = map(lambda t: repeat(t, "d -> b 1 d", b=b), self.null_kv.unbind(dim=-2))
        k = torch.cat((nk, k), dim=-2)
        v = torch.cat((nv, v), dim=-2)
        if self.cosine_sim:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # dalle2-pytorch's l2norm
        i, j = q.shape[-2], k.shape[-2]
        k, v = (t.to(q.dtype)[:, None].expand(-1, self.heads, -1, -1) for t in (k, v))  # one k / v head
        attn_mask = _attention_mask(q, j, mask=mask, attn_bias=attn_bias, causal=self.causal)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)


class SDPACrossAttention(CrossAttention):
    """dalle2-pytorch's `CrossAttention` computed by `F.scaled_dot_product_attention`."""

    def forward(self, x, context, mask=None):
        b = x.shape[0]
        x = self.norm(x)
        context = self.norm_context(context)
        q, k, v = (self.to_q(x), *self.to_kv(context).chunk(2, dim=-1))
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        nk, nv = map(lambda t: repeat(t, "d -> b h 1 d", h=self.heads, b=b), self.null_kv.unbind(dim=-2))
        k = torch.cat((nk, k), dim=-2)
        v = torch.cat((nv, v), dim=-2)
        if self.cosine_sim:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        k, v = k.to(q.dtype), v.to(q.dtype)
        attn_mask = _attention_mask(q, k.shape[-2], mask=mask, attn_bias=None, causal=False)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)


def _attention_mask(q: torch.Tensor, j: int, *, mask, attn_bias, causal: bool) -> torch.Tensor | None:
    """SDPA's `attn_mask` for queries q (b, h, i, d) over j keys (the null key first): None,
    a boolean keep-mask, or the float bias with the parent's -finfo.max where it masks."""
    i = q.shape[-2]
    drop = None  # True where the parent masks
    if mask is not None:
        drop = ~rearrange(F.pad(mask, (1, 0), value=True), "b j -> b 1 1 j")
    if causal:
        future = torch.ones((i, j), dtype=torch.bool, device=q.device).triu(j - i + 1)
        drop = future if drop is None else drop | future
    if attn_bias is None:
        return None if drop is None else ~drop
    bias = attn_bias.to(q.dtype)
    return bias if drop is None else bias.masked_fill(drop, -torch.finfo(q.dtype).max)


_SDPA_CLASSES = {Attention: SDPAAttention, CrossAttention: SDPACrossAttention}


def use_sdpa_attention(model: nn.Module, enabled: bool = True) -> int:
    """Make every dalle2-pytorch `Attention` / `CrossAttention` in `model` run through
    `F.scaled_dot_product_attention` (`enabled=False`: back to the parent's einsum forward).

    The instances keep their weights, state-dict keys and `isinstance` checks; only their class
    becomes the subclass above, so copies (EMA, deepcopy) and pickles keep it. Idempotent.
    Subclasses of the two (anyone else's) are left alone. Returns how many instances changed.
    """
    swap = _SDPA_CLASSES if enabled else {new: old for old, new in _SDPA_CLASSES.items()}
    changed = 0
    for module in model.modules():
        target = swap.get(type(module))
        if target is not None:
            module.__class__ = target
            changed += 1
    return changed


def sdpa_attention_counts(model: nn.Module) -> dict[str, int]:
    """{"sdpa": n, "einsum": m}: dalle2-pytorch attention instances in `model` by forward."""
    sdpa = sum(type(m) in _SDPA_CLASSES.values() for m in model.modules())
    return {"sdpa": sdpa, "einsum": sum(type(m) in _SDPA_CLASSES for m in model.modules())}


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


# --- the surface check ----------------------------------------------------------------------


def installed_version(package: str) -> str:
    """The installed version of a distribution, or 'not installed'."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


# (package, module, name, parameters the code passes by name or relies on; None: no signature check)
_CALLABLES = [
    ("dalle2-pytorch", "dalle2_pytorch", "DiffusionPriorNetwork.forward",
     {"image_embed", "diffusion_timesteps", "text_embed", "self_cond", "text_cond_drop_prob", "image_cond_drop_prob"}),
    ("dalle2-pytorch", "dalle2_pytorch", "DiffusionPrior.p_losses", {"image_embed", "times", "text_cond"}),
    ("dalle2-pytorch", "dalle2_pytorch", "DiffusionPrior.l2norm_clamp_embed", None),
    ("dalle2-pytorch", "dalle2_pytorch", "Decoder.p_losses",
     {"unet", "x_start", "times", "image_embed", "noise_scheduler", "learned_variance", "is_latent_diffusion", "predict_v",
      "noise"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "NoiseScheduler.sample_random_times", {"batch"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "NoiseScheduler.predict_start_from_noise",
     {"x_t", "t", "noise"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "NoiseScheduler.predict_start_from_v", {"x_t", "t", "v"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "CrossAttention.__init__",
     {"dim", "context_dim", "heads", "dim_head", "cosine_sim"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "ResnetBlock", None),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "Attention.__init__",
     {"dim", "dim_head", "heads", "dropout", "causal", "rotary_emb", "cosine_sim", "cosine_sim_scale"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "Attention.forward", {"x", "mask", "attn_bias"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "CrossAttention.forward", {"x", "context", "mask"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "CausalTransformer.__init__", {"dim", "depth", "dim_head", "heads"}),
    ("dalle2-pytorch", "dalle2_pytorch", "VQGanVAE.decode", {"fmap", "return_indices_and_loss"}),
    ("x-clip", "x_clip.visual_ssl", "nt_xent_loss", {"queries", "keys", "temperature"}),
    ("x-clip", "x_clip.visual_ssl", "SimSiam.__init__",
     {"net", "image_size", "channels", "hidden_layer", "projection_size", "projection_hidden_size", "augment_fn"}),
]


def _resolve(module: str, dotted: str):
    obj = import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_callables() -> list[tuple[str, str, str]]:
    problems = []
    for package, module, name, needed in _CALLABLES:
        try:
            obj = _resolve(module, name)
        except (ImportError, AttributeError):
            problems.append((package, f"{module}.{name}", "is missing"))
            continue
        if needed is None:
            continue
        params = inspect.signature(obj).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue  # **kwargs takes any name
        missing = sorted(needed - set(params))
        if missing:
            problems.append((package, f"{module}.{name}", f"signature changed: no parameter {', '.join(missing)}"))
    return problems


def _tiny_instances() -> dict[str, Callable[[], nn.Module]]:
    """Builders of the smallest objects whose constructor-set attributes we read."""
    return {
        "DiffusionPrior": lambda: DiffusionPrior(
            DiffusionPriorNetwork(dim=8, depth=1, dim_head=4, heads=1, max_text_len=0, num_timesteps=None),
            image_embed_dim=8, timesteps=4, condition_on_text_encodings=False),
        "Decoder": lambda: Decoder(
            unet=Unet(dim=8, image_embed_dim=8, cond_dim=16, channels=1, dim_mults=(1, 2), attn_dim_head=4,
                      attn_heads=1),
            image_size=8, channels=1, timesteps=4),
        "VQGanVAE": lambda: VQGanVAE(dim=8, image_size=8, channels=1, layers=1, use_vgg_and_gan=False,
                                     vq_codebook_size=4, vq_codebook_dim=4, encdec_resnet_groups=8,
                                     vq_heads=2, vq_separate_codebook_per_head=True),
        "Attention": lambda: CausalTransformer(dim=8, depth=1, dim_head=4, heads=2).layers[0][0],
        "CrossAttention": lambda: CrossAttention(dim=8, context_dim=6, heads=2, dim_head=4),
        "CLIP": lambda: CLIP(dim_text=8, dim_image=8, dim_latent=8, num_text_tokens=4, text_enc_depth=1,
                             text_seq_len=2, text_heads=1, text_dim_head=4, visual_enc_depth=1, visual_image_size=8,
                             visual_patch_size=4, visual_heads=1, visual_dim_head=4, channels=1),
    }


# instance -> attribute paths read after construction ("unets.0" indexes a ModuleList)
_ATTRIBUTES = {
    "DiffusionPrior": ("dalle2-pytorch", [
        "noise_scheduler", "noise_scheduler.alphas_cumprod", "net.to_text_embeds", "net.null_text_embeds",
        "image_embed_scale", "image_embed_dim", "sample_timesteps", "predict_x_start", "predict_v",
        "sampling_clamp_l2norm", "sampling_final_clamp_l2norm", "can_classifier_guidance"]),
    "Decoder": ("dalle2-pytorch", [
        "unets.0", "vaes", "noise_schedulers.0", "unets.0.image_to_tokens", "unets.0.null_image_embed",
        "unets.0.to_image_hiddens", "unets.0.null_image_hiddens", "unets.0.self_cond"]),
    "VQGanVAE": ("dalle2-pytorch", ["recon_loss_fn", "enc_dec", "vq.heads"]),
    # what SDPAAttention / SDPACrossAttention read (the prior's layer: causal, rotary)
    "Attention": ("dalle2-pytorch", [
        "heads", "scale", "cosine_sim", "causal", "null_kv", "rotary_emb", "norm", "to_q", "to_kv", "to_out", "dropout.p"]),
    "CrossAttention": ("dalle2-pytorch", [
        "heads", "scale", "cosine_sim", "null_kv", "norm", "norm_context", "to_q", "to_kv", "to_out"]),
    "CLIP": ("x-clip", ["visual_transformer", "to_visual_latent", "text_transformer", "to_text_latent", "temperature"]),
}


def _has_path(obj, path: str) -> bool:
    for part in path.split("."):
        if part.isdigit():
            try:
                obj = obj[int(part)]
            except (IndexError, KeyError, TypeError):
                return False
        elif not hasattr(obj, part):
            return False
        else:
            obj = getattr(obj, part)
    return True


def _decode_returns_three(vqgan: VQGanVAE) -> bool:
    try:
        out = vqgan.decode(vqgan.encode(torch.zeros(1, 1, 8, 8)), return_indices_and_loss=True)
    except Exception:  # a changed signature or shape contract is the same finding
        return False
    return isinstance(out, tuple) and len(out) == 3


def _sdpa_mismatch(module: nn.Module) -> str | None:
    """How the SDPA forward of a tiny Attention / CrossAttention differs from the parent's
    (None: same outputs to float tolerance), over the variants the parent's forward has."""
    import copy

    heads = module.heads
    if isinstance(module, CrossAttention):
        dim, context_dim = module.to_q.in_features, module.to_kv.in_features
        calls = [dict(x=torch.randn(2, 5, dim), context=torch.randn(2, 3, context_dim)),
                 dict(x=torch.randn(2, 5, dim), context=torch.randn(2, 3, context_dim),
                      mask=torch.tensor([[True, False, True], [False, False, False]]))]
    else:
        dim = module.to_q.in_features
        calls = [dict(x=torch.randn(2, 5, dim)),
                 dict(x=torch.randn(2, 5, dim), mask=torch.tensor([[True] * 5, [True, False, True, False, False]])),
                 dict(x=torch.randn(2, 5, dim), attn_bias=torch.randn(heads, 5, 6)),
                 dict(x=torch.randn(2, 5, dim), attn_bias=torch.randn(heads, 5, 6),
                      mask=torch.tensor([[True] * 5, [False, True, True, False, True]]))]
    worst = 0.0
    for cosine_sim in (module.cosine_sim, not module.cosine_sim):
        einsum_module = copy.deepcopy(module).eval()
        einsum_module.cosine_sim = cosine_sim
        if cosine_sim != module.cosine_sim:  # the other variant, as the parent's __init__ scales it
            einsum_module.scale = 16 if cosine_sim else (module.to_q.out_features // heads) ** -0.5
        sdpa_module = copy.deepcopy(einsum_module)
        use_sdpa_attention(sdpa_module)
        with torch.no_grad():
            for kwargs in calls:
                try:
                    expected, got = einsum_module(**kwargs), sdpa_module(**kwargs)
                except Exception as e:  # a changed signature or shape contract is the same finding
                    return f"cannot be called as dalle2-pytorch {CHECKED_AGAINST['dalle2-pytorch']} calls it ({type(e).__name__}: {str(e)[:100]})"
                if expected.shape != got.shape:
                    return f"gives {tuple(expected.shape)}, compat.py's {tuple(got.shape)}"
                worst = max(worst, (expected - got).abs().max().item())
    if worst > 1e-4:
        return f"no longer matches compat.py's SDPA forward (largest difference {worst:.2g})"
    return None


def _check_instances() -> list[tuple[str, str, str]]:
    problems = []
    for cls, build in _tiny_instances().items():
        package, paths = _ATTRIBUTES[cls]
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays as it was
            try:
                obj = build()
            except Exception as e:  # any failure to build is itself the finding
                problems.append((package, cls, f"cannot be built as compat.py builds it ({type(e).__name__}: {e})"))
                continue
            missing = [(package, f"{cls}().{path}", "is missing") for path in paths if not _has_path(obj, path)]
            if cls == "Decoder" and not any(isinstance(m, ResnetBlock) and isinstance(m.cross_attn, CrossAttention)
                                            for m in obj.modules()):
                missing.append((package, "ResnetBlock.cross_attn", "holds no CrossAttention in a conditioned Unet"))
            if cls in ("Decoder", "DiffusionPrior") and not any(type(m) is Attention for m in obj.modules()):
                where = "Unet" if cls == "Decoder" else "DiffusionPriorNetwork"
                missing.append((package, f"{where}'s self-attention",
                                "is no longer an Attention (use_sdpa_attention would leave it on its einsum forward)"))
            if cls in ("Attention", "CrossAttention") and not missing:
                if cls == "Attention" and not (obj.causal and obj.rotary_emb is not None):
                    missing.append((package, "CausalTransformer's Attention", "is no longer causal with rotary embeddings"))
                mismatch = _sdpa_mismatch(obj)
                if mismatch:
                    missing.append((package, f"{cls}.forward", mismatch))
            if cls == "VQGanVAE" and not missing and not _decode_returns_three(obj):
                missing.append((package, "VQGanVAE.decode(fmap, return_indices_and_loss=True)",
                                "no longer returns (fmap, indices, commit_loss)"))
        problems += missing
    return problems


def check_dependency_surface() -> list[str]:
    """Everything this module relies on that the installed dalle2-pytorch / x-clip lack.

    Checks that the names exist, that the methods still take the parameters we pass, and that
    tiny instances still carry the attributes read after construction. Returns one sentence per
    problem naming the package, its installed version, the attribute and what changed; an
    empty list when all is in place. Builds a few 8 px models (about a second on a CPU).
    """
    found = _check_callables() + _check_instances()
    return [
        f"{package} {installed_version(package)}: {attribute} {what} (dalle2_md/compat.py was checked against "
        f"{package} {CHECKED_AGAINST[package]}; update the function there that uses it)"
        for package, attribute, what in found
    ]


# --- accelerate ---
# accelerate keeps its settings in process-wide singletons and wraps optimizers; training.py needs
# to see through both. Every attribute used below is listed in ACCELERATE_ATTRIBUTES, which
# tests/test_compat_accelerate.py checks against the installed version.

ACCELERATE_ATTRIBUTES = (
    # (where, attribute, why)
    ("accelerate.state.AcceleratorState", "_shared_state", "the process-wide settings dict"),
    ("accelerate.state.AcceleratorState", "_reset_state", "forgets those settings"),
    ("accelerate.optimizer.AcceleratedOptimizer (instance)", "optimizer", "the wrapped torch optimizer"),
    ("accelerate.Accelerator (instance)", "scaler", "the fp16 GradScaler, or None"),
)


def accelerate_version() -> str:
    """The installed accelerate version, for messages."""
    import accelerate

    return getattr(accelerate, "__version__", "unknown")


def allow_mixed_precision(mixed_precision: str) -> None:
    """Let the next `Accelerator(mixed_precision=...)` in this process use `mixed_precision`.

    accelerate stores its precision in the `AcceleratorState` singleton and refuses a second
    Accelerator with another precision. A single-process session that trains two stages with
    different `--mixed-precision` (the demo, the tests) therefore forgets the old settings first;
    under `accelerate launch` (several processes) the launcher's settings are kept.

    Args:
        mixed_precision: "no", "fp16" or "bf16".
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and state.get("num_processes", 1) == 1:
        AcceleratorState._reset_state()


def unwrap_optimizer(optimizer):
    """The torch optimizer inside an `accelerator.prepare`d optimizer (itself if not wrapped).

    An LR scheduler must step the inner optimizer: accelerate's own scheduler wrapper steps once
    per process, which would stretch a warmup by the number of processes.
    """
    return getattr(optimizer, "optimizer", optimizer)


def grad_scaler(accelerator):
    """The accelerator's fp16 `GradScaler` (None without fp16), whose state goes into checkpoints."""
    return accelerator.scaler


def set_base_lr(scheduler, optimizer, lr: float) -> None:
    """Make a `LambdaLR` (and its optimizer) continue with base learning rate `lr`.

    Used on resume with a new `--lr` (the usual cure for a diverged run): the scheduler restored
    from the checkpoint still holds the old base rate in `base_lrs`, and each parameter group its
    `initial_lr`; both are torch `LRScheduler` attributes without a public setter.

    Args:
        scheduler: a `torch.optim.lr_scheduler.LambdaLR` over `optimizer`.
        optimizer: the optimizer (wrapped by accelerate or not).
        lr: the new base learning rate; the current factor of the schedule still applies.
    """
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in unwrap_optimizer(optimizer).param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor

