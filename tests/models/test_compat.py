"""dalle2_md/models/compat/: the installed dalle2-pytorch / x-clip still have every internal we use, a
moved one is named clearly, and the workarounds there are still needed and still work."""

import torch
from dalle2_pytorch import Decoder, Unet, VQGanVAE
from dalle2_pytorch.dalle2_pytorch import CrossAttention, NoiseScheduler, ResnetBlock
from x_clip import CLIP

from dalle2_md.models import compat


def test_installed_dependencies_have_the_whole_surface():
    assert compat.check_dependency_surface() == []


def test_a_missing_method_is_named_with_package_and_version(monkeypatch):
    monkeypatch.delattr(NoiseScheduler, "predict_start_from_v")
    problems = compat.check_dependency_surface()
    assert len(problems) == 1, problems
    installed = compat.installed_version("dalle2-pytorch")
    assert problems[0].startswith(f"dalle2-pytorch {installed}: ")
    assert "NoiseScheduler.predict_start_from_v is missing" in problems[0]


def test_a_missing_instance_attribute_is_named(monkeypatch):
    build = CLIP.__init__

    def without_temperature(self, *args, **kwargs):
        build(self, *args, **kwargs)
        del self.temperature

    monkeypatch.setattr(CLIP, "__init__", without_temperature)
    problems = compat.check_dependency_surface()
    assert len(problems) == 1 and "x-clip" in problems[0] and "CLIP().temperature is missing" in problems[0], problems


def test_a_changed_signature_is_named(monkeypatch):
    def p_losses(self, unet, x_start, times, *, image_embed, noise_scheduler):
        raise AssertionError("never called by the check")

    monkeypatch.setattr(Decoder, "p_losses", p_losses)
    problems = compat.check_dependency_surface()
    assert len(problems) == 1, problems
    assert "Decoder.p_losses signature changed" in problems[0]
    assert "is_latent_diffusion, learned_variance" in problems[0]


def test_a_changed_return_value_is_named(monkeypatch):
    decode = VQGanVAE.decode
    monkeypatch.setattr(VQGanVAE, "decode", lambda self, fmap, return_indices_and_loss=False: decode(self, fmap))
    problems = compat.check_dependency_surface()
    assert len(problems) == 1 and "VQGanVAE.decode" in problems[0] and "no longer returns" in problems[0], problems


def tiny_unet(cond_dim):
    torch.manual_seed(0)
    return Unet(dim=8, image_embed_dim=16, cond_dim=cond_dim, num_image_tokens=2, channels=1, dim_mults=(1, 2),
                attn_heads=1, attn_dim_head=4, cond_on_image_embeds=True)


def test_cond_dim_workaround_is_still_needed():
    # if dalle2-pytorch builds the projection at equal widths one day, unet_cond_dim can go
    assert isinstance(tiny_unet(cond_dim=16).image_to_tokens, torch.nn.Identity)
    assert compat.unet_cond_dim(16, 16) != 16 and compat.unet_cond_dim(24, 16) == 24
    assert not isinstance(tiny_unet(compat.unet_cond_dim(16, 16)).image_to_tokens, torch.nn.Identity)


def test_resize_cross_attention_keeps_the_widths_and_the_forward():
    unet = tiny_unet(cond_dim=8)
    before = [(b.cross_attn.to_q.in_features, b.cross_attn.to_kv.in_features)
              for b in unet.modules() if isinstance(b, ResnetBlock) and b.cross_attn is not None]
    assert before and all(b.to_q.out_features == 8 * 64 for b in unet.modules() if isinstance(b, CrossAttention))
    compat.resize_cross_attention(unet, heads=2, dim_head=4)
    after = [(b.cross_attn.to_q.in_features, b.cross_attn.to_kv.in_features, b.cross_attn.to_q.out_features)
             for b in unet.modules() if isinstance(b, ResnetBlock) and b.cross_attn is not None]
    assert [a[:2] for a in after] == before and {a[2] for a in after} == {2 * 4}
    out = unet(torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2]), image_embed=torch.randn(3, 16))
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()


def test_vqgan_forward_still_drops_the_commitment_loss():
    torch.manual_seed(0)
    vqgan = VQGanVAE(dim=8, image_size=8, channels=1, layers=1, use_vgg_and_gan=False, vq_codebook_size=4,
                     vq_codebook_dim=4, encdec_resnet_groups=8)
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    recon_loss, commit_loss, recon = compat.vqgan_loss_terms(vqgan, images)
    assert recon.shape == images.shape
    torch.testing.assert_close(recon_loss, (recon - images).abs().mean())  # L1 by default
    assert commit_loss > 0
    # why vqgan_loss_terms exists: the library's own loss is the reconstruction term alone
    torch.testing.assert_close(vqgan(images, return_loss=True), recon_loss)


def test_a_moved_cascade_attribute_is_named(monkeypatch):
    build = Decoder.__init__

    def without_lowres_conds(self, *args, **kwargs):
        build(self, *args, **kwargs)
        del self.lowres_conds

    monkeypatch.setattr(Decoder, "__init__", without_lowres_conds)
    problems = compat.check_dependency_surface()
    assert len(problems) == 1, problems
    assert "CascadeDecoder().lowres_conds.1.noise_scheduler is missing" in problems[0]


def test_upsampler_sampling_prepares_the_lowres_image_as_the_decoder_trains_on_it():
    # the upsampler samples with our own loop: its low-res input must be what the Decoder's
    # LowresConditioner feeds the U-Net in training (nearest down, nearest up, then noised)
    from dalle2_md.models.upsampler import MicroDopplerUpsampler, UpsamplerConfig

    model = MicroDopplerUpsampler(config=UpsamplerConfig(lowres_size=8, output_size=16, dim=8, dim_mults=(1, 2),
                                                  attn_heads=1, attn_dim_head=4, timesteps=10, sample_timesteps=2))
    conditioner = model.decoder.lowres_conds[1]
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    ours = compat.nearest_resize(compat.nearest_resize(images, 8), 16)
    conditioner.use_noise = False  # the noise is compared below, on its own
    theirs, _ = conditioner(images, target_image_size=16, downsample_image_size=8, should_blur=False)
    assert torch.equal(ours, theirs)
    levels = torch.tensor([200, 700])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        noised, _ = conditioner.noise_image(ours, levels)
        torch.manual_seed(0)
        again = compat.q_sample(compat.lowres_noise_scheduler(model.decoder, 2), ours, levels, torch.randn_like(ours))
    assert torch.equal(noised, again)
    assert compat.cascade_unet(model.decoder, 2) is model.unet and model.unet.lowres_cond
    assert compat.cascade_noise_scheduler(model.decoder, 2) is model.decoder.noise_schedulers[1]


def test_the_unet_reads_fractional_times():
    """models/edm.py gives the U-Net a noise level as a fractional training time: dalle2-pytorch's
    Unet must embed float times (its SinusoidalPosEmb), integer ones as their float values."""
    unet = tiny_unet(cond_dim=8).eval()
    with torch.no_grad():  # its output layer starts at zero: random weights make every input count
        for p in unet.parameters():
            p.normal_(0, 0.05)
    x, e = torch.randn(2, 1, 8, 8), torch.randn(2, 16)
    with torch.no_grad():
        whole = unet(x, torch.tensor([10, 40]), image_embed=e)
        as_float = unet(x, torch.tensor([10.0, 40.0]), image_embed=e)
        between = unet(x, torch.tensor([10.5, 40.5]), image_embed=e)
    torch.testing.assert_close(as_float, whole)
    assert not torch.allclose(between, whole)
