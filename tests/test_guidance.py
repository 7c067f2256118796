"""Classifier-free guidance in one batched forward equals the two-forward result."""

import torch

from dalle2_md.decoder import DecoderConfig, MicroDopplerDecoder, guided_unet_forward
from dalle2_md.prior import PriorConfig, UserConditionedDiffusionPrior

D = 16


def test_decoder_batched_guidance_equals_two_forwards():
    torch.manual_seed(0)
    decoder = MicroDopplerDecoder(config=DecoderConfig(
        image_size=16, channels=1, image_embed_dim=D, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
        num_resnet_blocks=1, timesteps=100)).eval()
    unet = decoder.unet
    with torch.no_grad():  # the U-Net's output conv starts at zero: give it weights, or every branch is 0
        for p in unet.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05)
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
