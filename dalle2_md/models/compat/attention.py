"""dalle2-pytorch's U-Net and prior attention through `scaled_dot_product_attention`: the same
outputs without the tokens x tokens matrix."""

from __future__ import annotations


import torch
from dalle2_pytorch.dalle2_pytorch import Attention, CrossAttention
from einops import rearrange, repeat
from torch import nn
from torch.nn import functional as F

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


