"""Classifier-free guidance in one batched forward equals the two-forward result."""

import torch

from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.guidance import guided_unet_forward
from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior

D = 16


def test_decoder_batched_guidance_equals_two_forwards():
    unet = _tiny_decoder().unet
    x, t, e = torch.randn(3, 1, 16, 16), torch.tensor([5, 50, 99]), torch.randn(3, D)
    with torch.no_grad():
        two = unet.forward_with_cond_scale(x, t, image_embed=e, cond_scale=3.0)  # dalle2-pytorch: 2 calls
        one = guided_unet_forward(unet, x, t, e, 3.0)
        cond = guided_unet_forward(unet, x, t, e, 1.0)
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-4)
    assert (one - cond).abs().max() > 1e-3  # guidance changed something: the null half was used
    # the hooks are gone afterwards: a plain call is the conditional prediction again
    torch.testing.assert_close(unet(x, t, image_embed=e), cond)


def test_prior_batched_guidance_equals_two_forwards():
    torch.manual_seed(0)
    prior = UserConditionedDiffusionPrior(PriorConfig(num_users=3, dim=D, depth=1, heads=2, dim_head=8,
                                                      timesteps=100)).eval()
    net = prior.net
    x, t, users = torch.randn(4, D), torch.tensor([1, 20, 60, 99]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond = net(x, t, user_indices=users)
        null = net(x, t, text_embed=net.null_tokens(4))
        one = net.forward_with_cond_scale(x, t, user_indices=users, cond_scale=2.5)
    torch.testing.assert_close(one, null + (cond - null) * 2.5, atol=1e-5, rtol=1e-4)
    assert (one - cond).abs().max() > 1e-3


def _tiny_decoder(**kw):
    torch.manual_seed(0)
    decoder = MicroDopplerDecoder(config=DecoderConfig(
        image_size=16, channels=1, image_embed_dim=D, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
        num_resnet_blocks=1, timesteps=100, sample_timesteps=4, **kw)).eval()
    with torch.no_grad():  # zero-initialised layers would make every guidance scale give the same output
        for p in decoder.unet.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05)
    return decoder


def test_guidance_interval_guides_only_the_steps_inside_it(monkeypatch):
    """Times 99, 66, 33, 0 (t / 99 = 1, 0.67, 0.33, 0): the interval (0.3, 0.7) guides the middle
    two; an interval holding no sampling time is exactly the unguided sample."""
    import dalle2_md.models.decoder as decoder_module

    decoder, e = _tiny_decoder(), torch.randn(2, D)
    scales, real = [], decoder_module.guided_unet_forward

    def spy(unet, x, t, image_embeds, cond_scale):
        scales.append(cond_scale)
        return real(unet, x, t, image_embeds, cond_scale)

    monkeypatch.setattr(decoder_module, "guided_unet_forward", spy)
    inside = decoder.sample(e, cond_scale=3.0, seed=0, sampler="ddim", guidance_interval=(0.3, 0.7))
    assert scales == [1.0, 3.0, 3.0, 1.0]
    unguided = decoder.sample(e, cond_scale=1.0, seed=0, sampler="ddim")
    empty = decoder.sample(e, cond_scale=3.0, seed=0, sampler="ddim", guidance_interval=(0.4, 0.6))
    everywhere = decoder.sample(e, cond_scale=3.0, seed=0, sampler="ddim")  # the stored (0, 1)
    assert torch.equal(empty, unguided)
    assert not torch.allclose(inside, unguided) and not torch.allclose(inside, everywhere)


def test_guidance_interval_is_stored_checked_and_old_configs_guide_everywhere(tmp_path):
    from dalle2_md.utils import UserError

    decoder = _tiny_decoder(guidance_interval=(0.15, 0.7))
    decoder.save(tmp_path / "d.pt")
    assert MicroDopplerDecoder.load(tmp_path / "d.pt").config.guidance_interval == (0.15, 0.7)
    old = decoder.config.to_dict()
    del old["guidance_interval"]  # a bundle written before the field
    assert DecoderConfig.from_dict(old).guidance_interval == (0.0, 1.0)
    assert decoder.set_guidance_interval(["0.2", "0.9"]).config.guidance_interval == (0.2, 0.9)
    assert decoder.set_guidance_interval("0.3,0.8").config.guidance_interval == (0.3, 0.8)  # the flag's text
    for bad in ((0.8, 0.2), (0.1, 1.5), ("a", "b"), (0.5,)):
        try:
            decoder.set_guidance_interval(bad)
        except UserError as e:
            assert "--guidance_interval" in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
