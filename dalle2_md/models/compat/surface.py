"""`check_dependency_surface()`: names what moved when dalle2-pytorch or x-clip no longer has
what this package reads."""

from __future__ import annotations

import inspect
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import torch
from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet, VQGanVAE
from dalle2_pytorch.dalle2_pytorch import Attention, CausalTransformer, CrossAttention, ResnetBlock
from torch import nn
from x_clip import CLIP

from dalle2_md.models.compat.attention import use_sdpa_attention
from dalle2_md.models.compat.dalle2 import CHECKED_AGAINST, schedule_buffers

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
    ("dalle2-pytorch", "dalle2_pytorch", "Decoder.forward", {"image", "unet_number"}),
    ("dalle2-pytorch", "dalle2_pytorch", "Unet.forward", {"x", "time", "image_embed", "lowres_cond_img",
                                                          "lowres_noise_level"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "resize_image_to",
     {"image", "target_image_size", "clamp_range", "nearest"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "NoiseScheduler.q_sample", {"x_start", "t", "noise"}),
    ("dalle2-pytorch", "dalle2_pytorch.dalle2_pytorch", "NoiseScheduler.p2_reweigh_loss", {"loss", "times"}),
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
        "unets.0.to_image_hiddens", "unets.0.null_image_hiddens", "unets.0.self_cond",
        "noise_schedulers.0.p2_loss_weight", "noise_schedulers.0.has_p2_loss_reweighting"]),
    "CascadeDecoder": ("dalle2-pytorch", [
        "unets.1", "noise_schedulers.1", "noise_schedulers.1.alphas_cumprod", "lowres_conds.1.noise_scheduler",
        "unets.1.lowres_cond", "unets.1.lowres_noise_cond"]),
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
                    return f"gives {tuple(expected.shape)}, compat's {tuple(got.shape)}"
                worst = max(worst, (expected - got).abs().max().item())
    if worst > 1e-4:
        return f"no longer matches compat's SDPA forward (largest difference {worst:.2g})"
    return None


def _schedule_mismatch(scheduler: nn.Module) -> str | None:
    """How the scheduler's buffers differ from what `schedule_buffers` recomputes from its betas
    (None: the same names, and values to float32 rounding): a rescaled schedule must leave none stale."""
    have = {name for name, _ in scheduler.named_buffers()} - {"p2_loss_weight"}
    ours = schedule_buffers(scheduler.betas)
    if have != set(ours):
        return f"registers {sorted(have ^ set(ours))} where compat's schedule_buffers does not (or the reverse)"
    off = [name for name, value in ours.items() if not torch.allclose(value, getattr(scheduler, name), rtol=1e-3)]
    return f"computes {off} differently from compat's schedule_buffers" if off else None


def _check_instances() -> list[tuple[str, str, str]]:
    problems = []
    for cls, build in _tiny_instances().items():
        package, paths = _ATTRIBUTES[cls]
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays as it was
            try:
                obj = build()
            except Exception as e:  # any failure to build is itself the finding
                problems.append((package, cls, f"cannot be built as compat builds it ({type(e).__name__}: {e})"))
                continue
            missing = [(package, f"{cls}().{path}", "is missing") for path in paths if not _has_path(obj, path)]
            if cls == "Decoder" and not any(isinstance(m, ResnetBlock) and isinstance(m.cross_attn, CrossAttention)
                                            for m in obj.modules()):
                missing.append((package, "ResnetBlock.cross_attn", "holds no CrossAttention in a conditioned Unet"))
            if cls == "Decoder" and not missing:
                mismatch = _schedule_mismatch(obj.noise_schedulers[0])
                if mismatch:
                    missing.append((package, "NoiseScheduler", mismatch))
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
        f"{package} {installed_version(package)}: {attribute} {what} (dalle2_md/models/compat/ was checked against "
        f"{package} {CHECKED_AGAINST[package]}; update the function there that uses it)"
        for package, attribute, what in found
    ]


