"""`--backbone dit`: the patch-transformer denoiser in the decoder's place (same loss, sampler
and bundles as the U-Net)."""

import pytest
import torch
from click.testing import CliRunner

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.dit import DiT
from dalle2_md.utils import UserError

DIT = dict(image_size=16, channels=1, image_embed_dim=8, dim=32, attn_heads=4, backbone="dit", dit_depth=2,
           timesteps=100, sample_timesteps=4)


def test_dit_decoder_learns_to_denoise_a_batch():
    torch.manual_seed(0)
    decoder = MicroDopplerDecoder(config=DecoderConfig(**DIT))
    assert isinstance(decoder.unet, DiT)
    images = torch.nn.functional.interpolate(torch.rand(8, 1, 4, 4), size=16, mode="bilinear") * 2 - 1
    embeds = torch.nn.functional.normalize(torch.randn(8, 8), dim=-1)
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(50):
        loss = decoder(images, embeds)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


def test_untrained_dit_predicts_zero_and_depends_on_the_embedding_once_trained():
    torch.manual_seed(0)
    net = DiT(channels=2, size=8, image_embed_dim=4, dim=16, depth=1, heads=2, patch_size=2)
    x, t, e = torch.randn(3, 2, 8, 8), torch.tensor([1, 50, 99]), torch.randn(3, 4)
    assert torch.equal(net(x, t, image_embed=e), torch.zeros_like(x))  # adaLN-Zero start
    for p in net.parameters():  # leave the zero start: every weight nonzero
        torch.nn.init.normal_(p, std=0.1)
    out = net(x, t, image_embed=e)
    assert out.shape == x.shape and not torch.allclose(out, net(x, t, image_embed=e.flip(0)))
    guided = net.forward_with_cond_scale(x, t, image_embed=e, cond_scale=3.0)
    assert not torch.allclose(guided, out)


def test_decoder_guidance_runs_through_the_dit():
    torch.manual_seed(0)
    decoder = MicroDopplerDecoder(config=DecoderConfig(**DIT)).eval()
    for p in decoder.unet.parameters():  # away from the zero start, so the embedding matters
        torch.nn.init.normal_(p, std=0.1)
    embeds = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    plain, guided = decoder.sample(embeds, seed=0), decoder.sample(embeds, seed=0, cond_scale=3.0)
    assert guided.shape == plain.shape == (2, 1, 16, 16) and not torch.allclose(guided, plain)


def test_dit_config_checks_and_old_configs_default_to_the_unet():
    with pytest.raises(UserError, match="dit_patch_size 3"):
        DecoderConfig(**{**DIT, "dit_patch_size": 3})
    with pytest.raises(UserError, match="divisible by --attn_heads"):
        DecoderConfig(**{**DIT, "attn_heads": 5})
    old = DecoderConfig(image_size=16, image_embed_dim=8, dim_mults=(1, 2)).to_dict()
    for key in ("backbone", "dit_depth", "dit_patch_size"):
        del old[key]  # a bundle written before the option existed
    assert DecoderConfig.from_dict(old).backbone == "unet"


def test_backbone_dit_over_vqgan_latents_from_the_command_line(tmp_path):
    from dalle2_md.data.synthesize import synthesize_dataset

    synthesize_dataset(tmp_path / "data", num_users=3, images_per_user=5, image_size=32, progress=False)
    args = ("train-decoder --data_root {data} --output_dir {out} --experiment_name dit --use_vqgan --vqgan_factor 4 "
            "--vqgan_dim 8 --vqgan_codebook_size 16 --backbone dit --dim 16 --attn_heads 2 --dit_depth 1 "
            "--max_steps 2 --timesteps 50 --sample_timesteps 3 --clip_dim 16 --clip_widths 8 16 --clip_dim_image 32 "
            "--image_size 32 --no-progress").format(data=tmp_path / "data", out=tmp_path)
    result = CliRunner().invoke(cli, join_variadic(args.split()))
    assert result.exit_code == 0, result.output
    decoder = MicroDopplerDecoder.load(tmp_path / "dit" / "decoder_final.pt")
    assert isinstance(decoder.unet, DiT) and decoder.diffused_shape == (8, 8, 8)
    embeds = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    assert decoder.config.user_conditioning  # the command's default: the DiT reads [embedding ; user token]
    assert decoder.sample(embeds, user_indices=torch.tensor([0, 1]), seed=0).shape == (2, 1, 32, 32)
