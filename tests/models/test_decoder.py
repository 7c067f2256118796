"""Decoder and VQGAN: shapes, the cond_dim == image_embed_dim workaround, seeding, guidance,
bundles, size checks, and a two-user learning test (tiny models, CPU)."""

import pytest
import torch

from dalle2_md.models.bundle import load_bundle
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder, build_decoder
from dalle2_md.utils import UserError
from dalle2_md.models.vqgan import VQGanConfig, encode_latents, load_vqgan, psnr, reconstruct, save_vqgan
from dalle2_md.training.fit import train_vqgan

D = 16



def tiny(channels=1, use_vqgan=False, **kw):
    vq = VQGanConfig(image_size=16, channels=channels, dim=8, layers=1, codebook_size=32, codebook_dim=8)
    args = dict(
        image_size=16, channels=channels, image_embed_dim=D, dim=16, dim_mults=(1, 2),
        attn_heads=2, attn_dim_head=8, num_resnet_blocks=1, timesteps=100, sample_timesteps=4,
        use_vqgan=use_vqgan, vqgan=vq if use_vqgan else None,
    )
    args.update(kw)
    torch.manual_seed(0)
    return MicroDopplerDecoder(config=DecoderConfig(**args))


def images(n, channels=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("use_vqgan", [False, True])
def test_shapes_loss_and_sample(channels, use_vqgan):
    m = tiny(channels, use_vqgan)
    x, e = images(3, channels), torch.randn(3, D)
    loss = m(x, e)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.unet.init_conv.convs[0].weight.grad is not None
    if use_vqgan:
        # the frozen VQGAN gets no gradient; cached latents give a loss too
        assert all(p.grad is None for p in m.vqgan.parameters())
        assert m.diffused_shape == (8, 8, 8)
        assert torch.isfinite(m(None, e, latents=m.encode_latents(x)))
    out = m.sample(e, timesteps=2, seed=0)
    assert out.shape == (3, channels, 16, 16)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("cond_dim", [None, D])
def test_cond_dim_equal_to_embed_dim(cond_dim):
    # dim == image_embed_dim, or cond_dim given equal to it: dalle2-pytorch's Unet would make
    # image_to_tokens an Identity and crash (batch 3) or mix samples (batch 4 == tokens)
    m = tiny(dim=D, cond_dim=cond_dim)
    assert m.config.unet_cond_dim != D
    assert isinstance(m.unet.image_to_tokens[0], torch.nn.Linear)
    for b in (3, 4):
        assert torch.isfinite(m(images(b), torch.randn(b, D)))
    torch.nn.init.normal_(m.unet.to_out.weight)  # the last conv starts at zero
    x, t, e = images(4), torch.full((4,), 50), torch.randn(4, D)
    e2 = e.clone()
    e2[3] = torch.randn(D)
    with torch.no_grad():
        a, b = m.unet(x, t, image_embed=e), m.unet(x, t, image_embed=e2)
    assert torch.equal(a[:3], b[:3])  # each sample sees only its own embedding
    assert not torch.allclose(a[3], b[3])


def test_seed_reproducible_and_global_rng_untouched():
    m = tiny()
    e = torch.randn(2, D)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = m.sample(e, timesteps=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, m.sample(e, timesteps=3, seed=7))
    assert not torch.equal(a, m.sample(e, timesteps=3, seed=8))
    noise = torch.randn(2, 1, 16, 16)
    assert torch.equal(m.sample(e, timesteps=3, noise=noise), m.sample(e, timesteps=3, noise=noise))
    # eta > 0 draws per-step noise from the same private generator
    assert torch.equal(m.sample(e, timesteps=3, seed=7, eta=1.0), m.sample(e, timesteps=3, seed=7, eta=1.0))


def test_embedding_and_guidance_change_output(two_users):
    m, centres = two_users["model"], two_users["centres"]
    a = m.sample(centres[[0, 0]], timesteps=4, seed=0)
    assert not torch.allclose(a, m.sample(centres[[1, 1]], timesteps=4, seed=0), atol=1e-3)
    assert not torch.allclose(a, m.sample(centres[[0, 0]], timesteps=4, seed=0, cond_scale=3.0), atol=1e-3)
    with pytest.raises(UserError, match="cond_drop_prob"):
        tiny(cond_drop_prob=0.0).sample(centres, cond_scale=2.0)
    with pytest.raises(UserError, match=r"expected \(2, 16\)"):
        m.sample(torch.randn(2, D + 1))


@pytest.mark.parametrize("use_vqgan", [False, True])
def test_save_load_identical_samples(tmp_path, two_users, use_vqgan):
    if use_vqgan:
        vq_config = VQGanConfig(image_size=16, channels=1, dim=8, layers=1, codebook_size=32, codebook_dim=8)
        vq, _ = train_vqgan(two_users["x"], vq_config, steps=5, batch_size=16, seed=0)
        m = MicroDopplerDecoder(config=tiny(use_vqgan=True).config, vqgan=vq)
        m.fit_latent_scale(two_users["x"])
        assert m.latent_scale.item() != 1.0
    else:
        m = two_users["model"]
    e = two_users["centres"]
    path = m.save(tmp_path / "decoder.pt", meta={"clip_fingerprint": "0123456789abcdef"})
    loaded = MicroDopplerDecoder.load(path)
    assert loaded.config == m.config
    assert loaded.meta["clip_fingerprint"] == "0123456789abcdef"
    assert torch.equal(loaded.latent_scale, m.latent_scale)
    assert torch.equal(m.sample(e, timesteps=3, seed=5), loaded.sample(e, timesteps=3, seed=5))
    assert load_bundle(path, kind="decoder")["kind"] == "decoder"


def test_image_size_not_divisible():
    with pytest.raises(UserError, match=r"image_size 20 .* use image_size 16 or 24"):
        DecoderConfig(image_size=20, dim_mults=(1, 2, 4, 8))
    vq = VQGanConfig(image_size=24, layers=2)  # 6 px latent
    with pytest.raises(UserError, match=r"latent is 6 px.*use image_size 16 or 32"):
        DecoderConfig(image_size=24, dim_mults=(1, 2, 4), use_vqgan=True, vqgan=vq)
    with pytest.raises(UserError, match="divisible by 2\\*\\*layers"):
        VQGanConfig(image_size=18, layers=2)


def test_vqgan_train_save_load_and_decoder_from_path(tmp_path):
    cfg = VQGanConfig(image_size=16, channels=1, dim=8, layers=1, codebook_size=32, codebook_dim=8)
    x = images(32)
    state = torch.get_rng_state()
    vq, losses = train_vqgan(x, cfg, steps=30, batch_size=8, lr=1e-3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert encode_latents(vq, x).shape == (32, cfg.latent_channels, 8, 8)
    path = save_vqgan(tmp_path / "vq.pt", vq, cfg)
    vq2, cfg2 = load_vqgan(path)
    assert cfg2 == cfg
    assert torch.equal(reconstruct(vq, x), reconstruct(vq2, x))
    assert psnr(x, x) == float("inf")

    dcfg = tiny(use_vqgan=True).config
    m = build_decoder(DecoderConfig(**{**dcfg.__dict__, "vqgan": None, "vqgan_path": str(path)}))
    assert m.config.vqgan == cfg
    assert torch.equal(m.encode_latents(x), encode_latents(vq, x))


def test_learns_two_users(two_users):
    """The trained decoder draws each user's band: a nearest-centroid classifier fitted on the
    real images labels the generated samples with the user they were conditioned on."""
    m, x, y, centres, g = (two_users[k] for k in ("model", "x", "y", "centres", "generator"))
    q = torch.arange(2).repeat_interleave(8)
    eq = centres[q] + 0.05 * torch.randn(16, D, generator=g)
    generated = m.sample(eq, seed=3) * 2 - 1
    real_centroids = torch.stack([x[y == k].mean(0).flatten() for k in (0, 1)])
    predicted = torch.cdist(generated.flatten(1), real_centroids).argmin(1)
    accuracy = (predicted == q).float().mean().item()
    assert accuracy >= 0.8, accuracy


class _OracleNet(torch.nn.Module):
    """Predicts exactly the eps or v that turns x_t back into `target` (what a perfect network
    would): the sampler's x_0 estimate then equals `target` at every step."""

    def __init__(self, target, alphas_cumprod, prediction):
        super().__init__()
        self.target, self.abar, self.prediction = target, alphas_cumprod, prediction
        self.self_cond = False

    def forward(self, x, t, **_):
        a = self.abar[t].float().view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        return eps if self.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * self.target


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sampler_reads_the_prediction_kind(prediction):
    """With a perfect eps or v network every x_0 estimate, the first included, is
    the target, and so is the sample; a v network read as eps (or the reverse) misses the target
    at the first step (the sampler can still drift back to it by t = 0, as x_t itself nears x_0)."""
    from dalle2_md.models.compat import alphas_cumprod, set_decoder_unet

    def first_estimate_and_sample(config_prediction):
        m = tiny(prediction=config_prediction)
        set_decoder_unet(m.decoder, _OracleNet(target, alphas_cumprod(m.noise_scheduler), prediction))
        seen = []
        out = m.sample(torch.randn(2, D), timesteps=10, seed=0, callback=lambda s: seen.append(s["x_start"]))
        return seen[0], out * 2 - 1

    target = images(2) * 0.9
    first, out = first_estimate_and_sample(prediction)
    assert torch.allclose(first, target, atol=1e-3) and torch.allclose(out, target, atol=1e-3)
    first_wrong, _ = first_estimate_and_sample("eps" if prediction == "v" else "v")
    assert (first_wrong - target).abs().mean() > 0.3


class _BiasedEpsNet(_OracleNet):
    """The perfect eps network plus a small constant error, as a trained one has."""

    def forward(self, x, t, **_):
        return super().forward(x, t) + 0.01


def test_sample_start_keeps_the_first_estimate_bounded():
    """From t = T - 1 an eps error of 0.01 is magnified by 1 / sqrt(abar_T) and the first x_0
    estimate is clamped flat; from sample_start 0.96 it stays near the target. The sampled times
    start where the config says, and a sampling-only override leaves the config as it was."""
    from dalle2_md.models.compat import alphas_cumprod, set_decoder_unet

    target = images(2) * 0.5

    def run(start):
        m = tiny(sample_start=start)
        set_decoder_unet(m.decoder, _BiasedEpsNet(target, alphas_cumprod(m.noise_scheduler), "eps"))
        seen = []
        m.sample(torch.randn(2, D), timesteps=10, seed=0, callback=seen.append)
        return seen

    late, early = run(1.0), run(0.96)
    assert late[0]["t"] == 99 and early[0]["t"] == 95 and len(early) == 10
    assert (late[0]["x_start"] - target).abs().mean() > 0.4  # saturated at the clamp
    assert (early[0]["x_start"] - target).abs().mean() < 0.2

    m = tiny()
    assert m.config.sample_start == 0.96
    with m.sampling_config_for(sample_start=0.5):
        assert m.config.sample_start == 0.5
    assert m.config.sample_start == 0.96
    old = m.config.to_dict()
    del old["sample_start"]  # bundles written before the field: sampling-only, they get the default
    assert DecoderConfig.from_dict(old).sample_start == 0.96
    with pytest.raises(UserError, match="sample_start"):
        tiny(sample_start=0.0)


def test_offset_noise_shifts_each_images_noise_by_one_level(monkeypatch):
    """offset_noise adds one Gaussian per image and channel to the training noise: the images'
    noise means spread by about that std (plain noise: by 1 / sqrt(pixels))."""
    import dalle2_md.models.decoder as decoder_module

    seen = []
    monkeypatch.setattr(decoder_module, "decoder_p_losses", lambda *a, noise, **k: seen.append(noise) or noise.sum())
    x, e = images(64), torch.randn(64, D)
    tiny()(x, e)
    tiny(offset_noise=0.5)(x, e)
    plain, offset = (n.mean(dim=(2, 3)).std().item() for n in seen)
    assert plain < 0.15 and 0.35 < offset < 0.65


def test_prediction_field_round_trips_and_old_configs_read_as_eps(tmp_path):
    m = tiny(prediction="v")
    m.save(tmp_path / "d.pt")
    assert MicroDopplerDecoder.load(tmp_path / "d.pt").config.prediction == "v"
    old = m.config.to_dict()
    del old["prediction"]  # a bundle written before the field existed
    assert DecoderConfig.from_dict(old).prediction == "eps"
    with pytest.raises(UserError, match="--prediction"):
        tiny(prediction="x0")


@pytest.mark.parametrize("prediction", ["v", "edm"])
def test_v_and_edm_decoders_learn_two_users(two_users, prediction):
    """Tiny v-prediction and EDM decoders (models/edm.py, Heun sampling), trained as the eps one in
    conftest, also draw each user's band, and their background stays at the real images' level."""
    x, y, centres, g = (two_users[k] for k in ("x", "y", "centres", "generator"))
    e = centres[y] + 0.05 * torch.randn(len(y), D, generator=g)
    m = MicroDopplerDecoder(config=DecoderConfig(
        image_size=16, channels=1, image_embed_dim=D, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
        num_resnet_blocks=1, timesteps=100, sample_timesteps=10, prediction=prediction))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(100):
            idx = torch.randint(0, len(y), (16,))
            loss = m(x[idx], e[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    q = torch.arange(2).repeat_interleave(8)
    generated = m.sample(centres[q] + 0.05 * torch.randn(16, D, generator=g), seed=3) * 2 - 1
    real_centroids = torch.stack([x[y == k].mean(0).flatten() for k in (0, 1)])
    assert (torch.cdist(generated.flatten(1), real_centroids).argmin(1) == q).float().mean() >= 0.8
    middle_rows = generated[:, :, 6:10]  # between the two users' bands: background in every real image
    assert abs(middle_rows.mean().item() - x[:, :, 6:10].mean().item()) < 0.25


def test_user_conditioned_decoder_draws_the_user_its_token_names(two_users):
    """With one shared, uninformative image embedding for every image, only the user token says
    which band to draw: a user-conditioned decoder trained briefly draws user k's band for token
    k, and reads the token from the training triples, not from the embedding."""
    x, y = two_users["x"], two_users["y"]
    shared = torch.nn.functional.normalize(torch.ones(1, D), dim=-1)
    m = tiny(user_conditioning=True, num_users=2, sample_timesteps=10)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(100):
            idx = torch.randint(0, len(y), (16,))
            loss = m(x[idx], shared.expand(16, D), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    q = torch.arange(2).repeat_interleave(8)
    generated = m.eval().sample(shared.expand(16, D), user_indices=q, seed=3) * 2 - 1
    real_centroids = torch.stack([x[y == k].mean(0).flatten() for k in (0, 1)])
    assert (torch.cdist(generated.flatten(1), real_centroids).argmin(1) == q).float().mean() >= 0.8


def test_user_tokens_are_required_blendable_and_saved(tmp_path):
    m = tiny(user_conditioning=True, num_users=3)
    e = torch.nn.functional.normalize(torch.randn(2, D), dim=-1)
    with pytest.raises(UserError, match="user-conditioned"):
        m.sample(e, seed=0)
    with pytest.raises(UserError, match="0..2"):
        m.sample(e, user_indices=torch.tensor([0, 3]), seed=0)
    with pytest.raises(UserError, match="not user-conditioned"):
        tiny().sample(e, user_indices=torch.tensor([0, 1]), seed=0)
    with pytest.raises(UserError, match="num_users"):
        tiny(user_conditioning=True)
    # one-hot weights are the indices; a half blend is the mean of the two tokens
    users = torch.tensor([2, 0])
    assert torch.equal(m.condition(e, users), m.condition(e, torch.eye(3)[users]))
    half = m.condition(e, torch.tensor([[0.5, 0.5, 0.0]] * 2))[:, D:]
    assert torch.allclose(half, m.user_embed.weight[:2].mean(0).expand(2, D))
    assert torch.equal(m.sample(e, user_indices=users, seed=0), m.sample(e, user_indices=torch.eye(3)[users], seed=0))
    m.save(tmp_path / "d.pt")
    loaded = MicroDopplerDecoder.load(tmp_path / "d.pt")
    assert loaded.config.user_conditioning and loaded.config.num_users == 3
    assert torch.equal(loaded.sample(e, user_indices=users, seed=0), m.eval().sample(e, user_indices=users, seed=0))
