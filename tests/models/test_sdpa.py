"""compat.use_sdpa_attention: dalle2-pytorch's U-Net and prior attention run through
F.scaled_dot_product_attention with the einsum forward's outputs (float32, random inputs, every
variant the parent's forward has), the package's models get it when built or loaded, and a
change in the parent's attention is named by the dependency-surface check."""

import copy
import pickle

import pytest
import torch
from dalle2_pytorch import Unet
from dalle2_pytorch.dalle2_pytorch import Attention, CausalTransformer, CrossAttention
from rotary_embedding_torch import RotaryEmbedding

from dalle2_md.models import compat
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.chain import MicroDopplerDALLE2
from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior

TOL = dict(atol=2e-5, rtol=1e-4)


def sdpa_copy(module):
    patched = copy.deepcopy(module)
    assert compat.use_sdpa_attention(patched) > 0
    return patched


@pytest.fixture
def count_sdpa_calls(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


def random_mask(b, n, g):
    mask = torch.rand(b, n, generator=g) > 0.4
    mask[0] = False  # a row whose every real key is masked: only the null key is left
    return mask


@pytest.mark.parametrize("cosine_sim", [False, True])
@pytest.mark.parametrize("causal_rotary", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_self_attention_matches_einsum(cosine_sim, causal_rotary, with_mask, with_bias, count_sdpa_calls):
    torch.manual_seed(0)
    heads, n = 3, 7
    attn = Attention(12, dim_head=8, heads=heads, causal=causal_rotary, cosine_sim=cosine_sim,
                     rotary_emb=RotaryEmbedding(dim=8) if causal_rotary else None).eval()
    with torch.no_grad():
        attn.null_kv.mul_(3)  # the null key must matter to the output
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, n, 12, generator=g)
    kwargs = {}
    if with_mask:
        kwargs["mask"] = random_mask(4, n, g)
    if with_bias:
        kwargs["attn_bias"] = torch.randn(heads, n, n + 1, generator=g) * 2
    patched = sdpa_copy(attn)
    assert type(patched) is compat.SDPAAttention and isinstance(patched, Attention)
    with torch.no_grad():
        expected, got = attn(x, **kwargs), patched(x, **kwargs)
    torch.testing.assert_close(got, expected, **TOL)
    assert len(count_sdpa_calls) == 1
    # the Unet's case (nothing to mask) leaves SDPA free to pick its flash kernel
    if not (with_mask or with_bias or causal_rotary):
        assert count_sdpa_calls[0] is None


@pytest.mark.parametrize("cosine_sim", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("norm_context", [False, True])
def test_cross_attention_matches_einsum(cosine_sim, with_mask, norm_context, count_sdpa_calls):
    torch.manual_seed(0)
    attn = CrossAttention(12, context_dim=10, heads=2, dim_head=8, cosine_sim=cosine_sim, norm_context=norm_context).eval()
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(4, 9, 12, generator=g), torch.randn(4, 5, 10, generator=g)
    mask = random_mask(4, 5, g) if with_mask else None
    patched = sdpa_copy(attn)
    assert type(patched) is compat.SDPACrossAttention
    with torch.no_grad():
        torch.testing.assert_close(patched(x, context, mask=mask), attn(x, context, mask=mask), **TOL)
    assert len(count_sdpa_calls) == 1


def test_gradients_match_einsum():
    torch.manual_seed(0)
    attn = Attention(12, dim_head=8, heads=2, causal=True, rotary_emb=RotaryEmbedding(dim=8))
    patched = sdpa_copy(attn)
    x, bias, weights = torch.randn(2, 5, 12), torch.randn(2, 5, 6), torch.randn(2, 5, 12)
    # a random projection: the output is layer-normed, so its sum of squares has ~no gradient
    (attn(x, attn_bias=bias) * weights).sum().backward()
    (patched(x, attn_bias=bias) * weights).sum().backward()
    for (name, a), b in zip(attn.named_parameters(), patched.parameters()):
        torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)


def test_attention_dropout_in_training_keeps_the_einsum_path(count_sdpa_calls):
    torch.manual_seed(0)
    attn = Attention(12, dim_head=8, heads=2, dropout=0.5).train()
    patched = sdpa_copy(attn)
    x = torch.randn(2, 5, 12)
    with torch.random.fork_rng(devices=[]):
        expected = attn(x)
    got = patched(x)
    torch.testing.assert_close(got, expected)  # same dropout draws: the parent's forward ran
    assert count_sdpa_calls == []
    with torch.no_grad():
        torch.testing.assert_close(patched.eval()(x), attn.eval()(x), **TOL)
    assert len(count_sdpa_calls) == 1


def tiny_unet():
    torch.manual_seed(0)
    # attention at every stage (self_attn) and at the middle, cross-attention below the first stage
    unet = Unet(dim=8, image_embed_dim=16, cond_dim=24, num_image_tokens=2, channels=1, dim_mults=(1, 2),
                attn_heads=2, attn_dim_head=4, cond_on_image_embeds=True, self_attn=(True, True)).eval()
    with torch.no_grad():
        unet.to_out.weight.normal_(std=0.3)  # zero-initialised: the output would be 0 with or without SDPA
    return unet


def test_whole_unet_forward_matches_before_and_after(count_sdpa_calls):
    unet = tiny_unet()
    patched = sdpa_copy(unet)
    counts = compat.sdpa_attention_counts(patched)
    assert counts["einsum"] == 0 and counts["sdpa"] >= 5  # 4 stage self-attentions, the middle one, cross-attentions
    g = torch.Generator().manual_seed(2)
    x, t, embed = torch.randn(3, 1, 16, 16, generator=g), torch.tensor([0, 10, 500]), torch.randn(3, 16, generator=g)
    with torch.no_grad():
        expected = unet(x, t, image_embed=embed)
        assert expected.abs().mean() > 0.1
        torch.testing.assert_close(patched(x, t, image_embed=embed), expected, **TOL)
    assert len(count_sdpa_calls) == counts["sdpa"]  # each attention ran through SDPA once


def test_causal_transformer_matches_before_and_after():
    torch.manual_seed(0)
    transformer = CausalTransformer(dim=16, depth=2, dim_head=8, heads=2).eval()
    patched = sdpa_copy(transformer)
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(patched(x), transformer(x), **TOL)


def test_use_sdpa_attention_is_idempotent_reversible_and_keeps_weights():
    unet = tiny_unet()
    keys = list(unet.state_dict())
    n = compat.use_sdpa_attention(unet)
    assert n > 0 and compat.use_sdpa_attention(unet) == 0  # already done
    assert list(unet.state_dict()) == keys
    assert type(copy.deepcopy(unet).mid_attn.fn.fn) is compat.SDPAAttention
    assert type(pickle.loads(pickle.dumps(unet)).mid_attn.fn.fn) is compat.SDPAAttention
    assert compat.use_sdpa_attention(unet, enabled=False) == n
    assert compat.sdpa_attention_counts(unet) == {"sdpa": 0, "einsum": n}


def small_models():
    torch.manual_seed(0)
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=3, dim=16, depth=1, heads=2, dim_head=8, timesteps=100,
                                                      sample_timesteps=3))
    decoder = MicroDopplerDecoder(config=DecoderConfig(
        image_size=16, channels=1, image_embed_dim=16, dim=8, dim_mults=(1, 2), timesteps=100, sample_timesteps=3,
        attn_heads=2, attn_dim_head=8, num_resnet_blocks=1))
    return prior, decoder


def test_the_package_builds_and_loads_its_models_with_sdpa(tmp_path):
    prior, decoder = small_models()
    for model in (prior, decoder):
        counts = compat.sdpa_attention_counts(model)
        assert counts["sdpa"] > 0 and counts["einsum"] == 0, counts
    path = MicroDopplerDALLE2(prior=prior, decoder=decoder).save(tmp_path / "chain.pt")
    loaded = MicroDopplerDALLE2.load(path)
    for model in (loaded.prior, loaded.decoder):
        counts = compat.sdpa_attention_counts(model)
        assert counts["sdpa"] > 0 and counts["einsum"] == 0, counts


def test_sampling_and_loss_match_the_einsum_path():
    prior, decoder = small_models()
    with torch.no_grad():
        decoder.unet.to_out.weight.normal_(std=0.3)  # zero-initialised: the U-Net's output would not depend on attention
    model = MicroDopplerDALLE2(prior=prior, decoder=decoder).eval()
    einsum_model = copy.deepcopy(model)
    compat.use_sdpa_attention(einsum_model, enabled=False)
    kwargs = dict(num_samples_per_user=2, seed=3, prior_steps=3, decoder_steps=3, colorize=False, cond_scale=2.0)
    torch.testing.assert_close(model.sample([0, 2], **kwargs), einsum_model.sample([0, 2], **kwargs), atol=1e-4, rtol=0)
    images, embeds = torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 16)
    losses = []
    for m in (model, einsum_model):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            losses.append(m.decoder.train()(images, embeds))
    torch.testing.assert_close(losses[0], losses[1], **TOL)


def test_a_changed_attention_forward_is_named(monkeypatch):
    forward = Attention.forward

    def doubled_bias(self, x, mask=None, attn_bias=None):  # e.g. a new scaling of the rel-pos bias
        return forward(self, x, mask=mask, attn_bias=None if attn_bias is None else attn_bias * 2)

    monkeypatch.setattr(Attention, "forward", doubled_bias)
    problems = compat.check_dependency_surface()
    assert len(problems) == 1 and "Attention.forward no longer matches compat's SDPA forward" in problems[0], problems


def test_a_changed_attention_signature_is_named(monkeypatch):
    def forward(self, x, context, attn_mask=None):
        raise AssertionError("never called by the check")

    monkeypatch.setattr(CrossAttention, "forward", forward)
    problems = compat.check_dependency_surface()
    assert any("CrossAttention.forward signature changed: no parameter mask" in p for p in problems), problems


def test_a_missing_attention_attribute_is_named(monkeypatch):
    build = CrossAttention.__init__

    def without_norm_context(self, *args, **kwargs):
        build(self, *args, **kwargs)
        del self.norm_context

    monkeypatch.setattr(CrossAttention, "__init__", without_norm_context)
    problems = compat.check_dependency_surface()
    assert len(problems) == 1 and "CrossAttention().norm_context is missing" in problems[0], problems


def test_a_unet_whose_self_attention_moved_is_named(monkeypatch):
    import dalle2_pytorch.dalle2_pytorch as d2

    class OtherAttention(Attention):
        pass

    monkeypatch.setattr(d2, "Attention", OtherAttention)  # what Unet and CausalTransformer build
    problems = compat.check_dependency_surface()
    assert any("Unet's self-attention is no longer an Attention" in p for p in problems), problems
    assert any("DiffusionPriorNetwork's self-attention is no longer an Attention" in p for p in problems), problems
