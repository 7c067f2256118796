"""The upsampler (models/upsampler.py): its config and bundle, that it learns on a toy set, and
that its samples are the right size, reproducible, keyed per row and off the global RNG."""

import json

import pytest
import torch

from dalle2_md.models.bundle import save_bundle
from dalle2_md.models.upsampler import (MicroDopplerUpsampler, UpsamplerConfig, enlarge, gaussian_blur, random_crops,
                                       resize_images, to_output_size)
from dalle2_md.sampling import keyed_generators
from dalle2_md.utils import BundleError, UserError, plain_json

TINY = UpsamplerConfig(lowres_size=16, output_size=32, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
                       timesteps=100, sample_timesteps=4, crop_size=16)


def toy_images(n: int = 16) -> torch.Tensor:
    """(n, 1, 32, 32) in [-1, 1]: a bright horizontal band at a random height on a dark ground."""
    g = torch.Generator().manual_seed(0)
    images = torch.full((n, 1, 32, 32), -0.8)
    for i, top in enumerate(torch.randint(0, 28, (n,), generator=g).tolist()):
        images[i, :, top:top + 4] = 0.8
    return images


@pytest.fixture(scope="module")
def trained():
    """The tiny upsampler after 60 Adam steps on the toy set, and its losses."""
    images = toy_images()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MicroDopplerUpsampler(config=TINY)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        losses = []
        for _ in range(60):
            loss = model(images[torch.randint(0, len(images), (8,))])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model.eval(), losses


def test_config_round_trips_through_json_and_refuses_unknown_fields():
    again = UpsamplerConfig.from_dict(json.loads(json.dumps(plain_json(TINY.to_dict()))))
    assert again == TINY and isinstance(again.dim_mults, tuple)
    assert TINY.crop == 16 and UpsamplerConfig(lowres_size=16, output_size=32, dim_mults=(1, 2)).crop == 16
    with pytest.raises(BundleError, match="wider"):
        UpsamplerConfig.from_dict({**TINY.to_dict(), "wider": 2})


@pytest.mark.parametrize("fields, message", [
    (dict(lowres_size=32, output_size=32), "larger than the low-res size"),
    (dict(blur=False, lowres_noise=False), "blur or low-res noise"),
    (dict(crop_size=14, dim_mults=(1, 2, 4)), "crop_size 14 is not divisible"),
    (dict(crop_size=64), "crop_size 64 must lie between"),
    (dict(sample_timesteps=200), "sample_timesteps"),
])
def test_config_refuses_what_cannot_be_built(fields, message):
    with pytest.raises(UserError, match=message):
        UpsamplerConfig(**{**TINY.to_dict(), **fields})


def test_loss_is_finite_and_falls_on_a_toy_set(trained):
    _, losses = trained
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_only_the_upsampler_unet_trains():
    model = MicroDopplerUpsampler(config=TINY)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("decoder.unets.0.") for n in frozen)
    assert sum(model.state_dict()[n].numel() for n in frozen) < 20_000  # the placeholder stays small


def test_sample_shape_range_and_wrong_input(trained):
    model, _ = trained
    out = model.sample(torch.rand(3, 1, 16, 16), seed=0)
    assert out.shape == (3, 1, 32, 32) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(UserError, match=r"takes \(B, 1, 16, 16\)"):
        model.sample(torch.rand(2, 1, 32, 32), seed=0)


def test_seeded_samples_repeat_per_row_and_leave_the_global_rng(trained):
    model, _ = trained
    lowres = (toy_images(4)[:, :, ::2, ::2] + 1) / 2
    before = torch.get_rng_state()
    a = model.sample(lowres, seed=3)
    assert torch.equal(before, torch.get_rng_state())
    assert torch.equal(a, model.sample(lowres, seed=3))
    assert not torch.equal(a, model.sample(lowres, seed=4))
    # row i's noise comes from its own generator: other rows and the chunking change nothing
    torch.testing.assert_close(model.sample(lowres, seed=3, batch_size=3), a, atol=1e-5, rtol=0)
    gens = keyed_generators(0, 0, ["a", "b", "c", "d"])
    mixed = model.sample(lowres, generator=gens)
    alone = model.sample(lowres[2:3], generator=keyed_generators(0, 0, ["c"]))
    torch.testing.assert_close(alone, mixed[2:3], atol=1e-5, rtol=0)


def test_samples_follow_the_lowres_image(trained):
    model, _ = trained
    images = torch.full((4, 1, 32, 32), -0.8)
    for i, top in enumerate((2, 10, 18, 26)):
        images[i, :, top:top + 4] = 0.8
    lowres = (torch.nn.functional.avg_pool2d(images, 2) + 1) / 2
    for seed in range(3):
        # shrunk back, each sample is nearest its own low-res image
        shrunk = torch.nn.functional.avg_pool2d(model.sample(lowres, seed=seed), 2).flatten(1)
        distances = torch.cdist(shrunk, lowres.flatten(1))
        assert torch.equal(distances.argmin(dim=1), torch.arange(4)), (seed, distances)


def test_bundle_round_trip_gives_identical_samples_and_refuses_other_kinds(trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "upsampler_final.pt", meta={"image_size": 32})
    loaded = MicroDopplerUpsampler.load(path)
    assert loaded.config == model.config and loaded.meta == {"image_size": 32} and not loaded.training
    lowres = torch.rand(2, 1, 16, 16)
    assert torch.equal(loaded.sample(lowres, seed=1), model.sample(lowres, seed=1))
    other = save_bundle(tmp_path / "decoder_final.pt", kind="decoder", config={}, state_dict={})
    with pytest.raises(BundleError, match="holds a 'decoder' model, but a upsampler model is needed"):
        MicroDopplerUpsampler.load(other)


def test_to_output_size_upsamples_then_resizes(trained):
    model, _ = trained
    base = torch.rand(2, 1, 16, 16)
    assert torch.equal(to_output_size(base), base)
    assert to_output_size(base, output_size=24).shape == (2, 1, 24, 24)
    up = to_output_size(base, upsampler=model)
    assert up.shape == (2, 1, 32, 32) and torch.equal(up, model.sample(base))
    assert to_output_size(base, upsampler=model, output_size=64).shape == (2, 1, 64, 64)
    assert resize_images(torch.ones(1, 1, 8, 8), 4).eq(1).all()


@pytest.mark.parametrize("fields, message", [
    (dict(prediction="x0"), "prediction must be one of"),
    (dict(residual=False, prediction="v"), "predicts eps"),
    (dict(residual_scale=0.0), "residual_scale must be positive"),
    (dict(lowres_noise_max=0.0), "lowres_noise_max"),
])
def test_config_refuses_bad_residual_settings(fields, message):
    with pytest.raises(UserError, match=message):
        UpsamplerConfig(**{**TINY.to_dict(), **fields})


def test_a_config_from_before_the_residual_fields_loads_as_the_image_space_upsampler():
    old = {k: v for k, v in TINY.to_dict().items() if k not in ("residual", "residual_scale", "prediction",
                                                                   "lowres_noise_max")}
    config = UpsamplerConfig.from_dict(old)
    assert (config.residual, config.prediction, config.lowres_noise_max) == (False, "eps", 1.0)
    torch.manual_seed(0)
    model = MicroDopplerUpsampler(config=config)
    assert torch.isfinite(model(toy_images(4)))  # the Decoder's own image-space loss
    out = model.eval().sample(torch.rand(2, 1, 16, 16), seed=0)
    assert out.shape == (2, 1, 32, 32) and 0 <= out.min() and out.max() <= 1


def test_a_residual_upsampler_that_predicts_no_detail_returns_the_bicubic_image(monkeypatch):
    """With a U-Net whose every x_0 estimate is a zero residual, the sample is exactly the
    low-res image enlarged by bicubic: the residual is added to that image, in image space."""
    from dalle2_md.models.compat import alphas_cumprod, cascade_noise_scheduler

    model = MicroDopplerUpsampler(config=TINY).eval()
    a_bar = alphas_cumprod(cascade_noise_scheduler(model.decoder, 2))

    def no_detail(x, t, **_):  # the v whose x_0 = sqrt(a) x_t - sqrt(1 - a) v is zero
        a = a_bar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x / (1 - a).sqrt()

    monkeypatch.setattr(MicroDopplerUpsampler, "unet", property(lambda self: no_detail))
    lowres = torch.rand(3, 1, 16, 16)
    expected = (enlarge(lowres * 2 - 1, 32) + 1) / 2
    torch.testing.assert_close(model.sample(lowres, seed=0), expected, atol=1e-5, rtol=0)


def test_gaussian_blur_keeps_flat_images_and_spreads_a_point():
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 0.6, 3), flat)
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(point, 0.6, 3)
    assert blurred.sum().item() == pytest.approx(1.0) and 0 < blurred[0, 0, 4, 4] < 1
    assert blurred[0, 0, 4, 3] == blurred[0, 0, 3, 4] > 0 and blurred[0, 0, 4, 6] == 0


def test_random_crops_cut_the_same_window_from_every_tensor():
    a = torch.arange(2 * 16 * 16, dtype=torch.float).view(2, 1, 16, 16)
    torch.manual_seed(0)
    ca, cb = random_crops((a, -a), 8)
    assert ca.shape == (2, 1, 8, 8) and torch.equal(cb, -ca)
    for i in range(2):  # each crop is a contiguous window of its own row
        top, left = divmod(int(ca[i, 0, 0, 0].item()) - i * 256, 16)
        assert torch.equal(ca[i], a[i, :, top:top + 8, left:left + 8])


def test_the_sampling_input_noise_level_is_an_argument(trained):
    model, _ = trained
    lowres = (toy_images(3)[:, :, ::2, ::2] + 1) / 2
    default = model.sample(lowres, seed=5)
    # the config's own level given explicitly is the default; another level changes what the U-Net reads
    assert torch.equal(model.sample(lowres, seed=5, lowres_noise_level=model.config.lowres_noise_level), default)
    assert not torch.equal(model.sample(lowres, seed=5, lowres_noise_level=0.0), default)
    assert model.config.lowres_noise_level == TINY.lowres_noise_level  # the model's config is left alone
    with pytest.raises(ValueError, match=r"level in \[0, 1\)"):
        model.sample(lowres, seed=5, lowres_noise_level=1.0)
