"""Every reach into dalle2-pytorch, x-clip and accelerate internals, in one place.

dalle2-md builds on dalle2-pytorch's `DiffusionPriorNetwork`, `DiffusionPrior`, `Unet`, `Decoder`
and `VQGanVAE` and on x-clip's `CLIP`. The classes are public (importable from the packages'
top level); what is not is everything below: private modules, attributes the classes set in
their constructors, methods their README does not document, and one workaround. The rest of the
package goes through the functions here, so a dependency upgrade that moves one of them breaks
one file, and `check_dependency_surface()` (run by tests/models/test_compat.py) names what moved.

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
- `Decoder.unets[i]`, `.noise_schedulers[i]`, `.lowres_conds[i].noise_scheduler`, the module
  function `resize_image_to` and `NoiseScheduler.q_sample` (upsampler.py): the upsampler trains
  through `Decoder.forward(images, unet_number=2)`, but samples with our keyed-noise samplers, so
  it reads its U-Net, schedule and low-res noise schedule and prepares the low-res input as the
  Decoder does (`cascade_unet`, `cascade_noise_scheduler`, `lowres_noise_scheduler`,
  `nearest_resize`, `q_sample`).
- `ResnetBlock.cross_attn` and `CrossAttention(dim, context_dim, heads, dim_head, cosine_sim)`
  (decoder.py, upsampler.py): the cross-attentions are rebuilt at the U-Net's attention shape instead of the
  fixed 8 x 64 (`resize_cross_attention`).
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
tests/models/test_compat_accelerate.py.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import torch
from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet, VQGanVAE
from dalle2_pytorch.dalle2_pytorch import CrossAttention, NoiseScheduler, ResnetBlock, resize_image_to
from torch import nn
from x_clip import CLIP
from x_clip.visual_ssl import SimSiam, nt_xent_loss

__all__ = [
    "CHECKED_AGAINST", "NoiseScheduler", "SimSiam", "nt_xent_loss",
    "replace_text_embed_projection", "null_text_tokens", "prior_p_losses",
    "noise_scheduler_of", "random_times", "x_start_from_noise", "x_start_from_v", "alphas_cumprod",
    "decoder_unet", "set_decoder_unet", "decoder_vae", "decoder_p_losses",
    "resize_cross_attention", "unet_conditioning_nulls", "unet_cond_dim", "vqgan_loss_terms",
    "cascade_unet", "cascade_noise_scheduler", "lowres_noise_scheduler", "nearest_resize", "q_sample",
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
    ("dalle2-pytorch", "dalle2_pytorch", "VQGanVAE.decode", {"fmap", "return_indices_and_loss"}),
    ("dalle2-pytorch", "dalle2_pytorch", "Decoder.forward", {"image", "unet_number"}),
    ("dalle2-pytorch", "dalle2_pytorch", "Unet.forward", {"x", "time", "image_embed", "lowres_cond_img",
                                                          "lowres_noise_level"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "resize_image_to",
     {"image", "target_image_size", "clamp_range", "nearest"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "NoiseScheduler.q_sample", {"x_start", "t", "noise"}),
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
        "CascadeDecoder": lambda: Decoder(
            unet=(Unet(dim=8, channels=1, dim_mults=(1,), attn_dim_head=4, attn_heads=1),
                  Unet(dim=8, channels=1, dim_mults=(1, 2), attn_dim_head=4, attn_heads=1, lowres_cond=True,
                       lowres_noise_cond=True)),
            image_sizes=(8, 16), channels=1, timesteps=4, unconditional=True, use_noise_for_lowres_cond=True,
            random_crop_sizes=(None, 8)),
        "VQGanVAE": lambda: VQGanVAE(dim=8, image_size=8, channels=1, layers=1, use_vgg_and_gan=False,
                                     vq_codebook_size=4, vq_codebook_dim=4, encdec_resnet_groups=8,
                                     vq_heads=2, vq_separate_codebook_per_head=True),
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
    "CascadeDecoder": ("dalle2-pytorch", [
        "unets.1", "noise_schedulers.1", "noise_schedulers.1.alphas_cumprod", "lowres_conds.1.noise_scheduler",
        "unets.1.lowres_cond", "unets.1.lowres_noise_cond"]),
    "VQGanVAE": ("dalle2-pytorch", ["recon_loss_fn", "enc_dec", "vq.heads"]),
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
# tests/models/test_compat_accelerate.py checks against the installed version.

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

