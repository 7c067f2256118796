"""Single-stage baseline: shapes, seeded sampling, bundle round trip, and that it is
conditioned on the user."""

import pytest
import torch

from dalle2_md.models.single_stage import SingleStageBaseline, is_baseline_bundle
from dalle2_md.training.fit import train_baseline
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.training.loop import TrainConfig
from dalle2_md.utils import BundleError, UserError

SIZE = 16


def tiny_config(**kw) -> DecoderConfig:
    base = dict(image_size=SIZE, channels=1, image_embed_dim=8, dim=8, dim_mults=(1, 2), num_resnet_blocks=1,
                attn_heads=1, attn_dim_head=8, timesteps=50, sample_timesteps=4, num_image_tokens=1, cond_drop_prob=0.1)
    return DecoderConfig(**(base | kw))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SingleStageBaseline(num_users=3, config=tiny_config()).eval()


def test_loss_and_sample_shapes(model):
    images = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    loss = model.train()(images, torch.tensor([0, 1, 2, 0]))
    model.eval()
    assert loss.ndim == 0 and torch.isfinite(loss)
    out = model.sample([0, 2], num_samples_per_user=3, steps=2, seed=0)
    assert out.shape == (6, 1, SIZE, SIZE)
    assert out.min() >= 0 and out.max() <= 1


def test_seeded_sampling_is_reproducible_and_batch_independent(model):
    a = model.sample([0, 1], num_samples_per_user=2, steps=2, seed=5)
    b = model.sample([0, 1], num_samples_per_user=2, steps=2, seed=5)
    c = model.sample([0, 1], num_samples_per_user=2, steps=2, seed=6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # user 1's samples do not depend on which other users share the batch
    alone = model.sample([1], num_samples_per_user=2, steps=2, seed=5)
    assert torch.allclose(alone, a[2:], atol=1e-5)


def test_bad_users_and_guidance_without_dropout():
    m = SingleStageBaseline(num_users=2, config=tiny_config(cond_drop_prob=0.0))
    with pytest.raises(UserError, match="out of range"):
        m.sample([2], steps=1)
    with pytest.raises(UserError, match="cond_drop_prob"):
        m.sample([0], steps=1, cond_scale=3.0)


def test_bundle_round_trip(model, tmp_path):
    path = model.save(tmp_path / "baseline.pt", meta={"steps": 0})
    assert is_baseline_bundle(path)
    loaded = SingleStageBaseline.load(path)
    assert loaded.num_users == 3 and loaded.meta["steps"] == 0
    assert torch.equal(model.sample([1], steps=2, seed=3), loaded.sample([1], steps=2, seed=3))
    # a plain decoder loader refuses the extra weights instead of silently dropping the user table
    with pytest.raises(BundleError):
        MicroDopplerDecoder.load(path)
    plain = MicroDopplerDecoder(config=tiny_config()).save(tmp_path / "decoder.pt")
    assert not is_baseline_bundle(plain)
    with pytest.raises(BundleError, match="not a single-stage baseline"):
        SingleStageBaseline.load(plain)


def test_training_reaches_the_user_table_and_the_denoiser_depends_on_the_user(tmp_path):
    # a wiring check (a few steps cannot teach the tiny decoder two users apart): the loop must
    # update the user table, and the trained denoiser must answer differently per user
    g = torch.Generator().manual_seed(0)
    images = torch.cat([-0.7 + 0.05 * torch.randn(8, 1, SIZE, SIZE, generator=g),
                        0.7 + 0.05 * torch.randn(8, 1, SIZE, SIZE, generator=g)]).clamp(-1, 1)
    ids = torch.tensor([0] * 8 + [1] * 8)
    config = TrainConfig(max_steps=30, batch_size=8, lr=3e-3, seed=0, log_every=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        init = SingleStageBaseline(num_users=2, config=tiny_config()).user_embed.weight.detach().clone()
    model, result = train_baseline(images, ids, num_users=2, decoder_config=tiny_config(), train_config=config,
                                   run_dir=tmp_path / "run", progress=False)
    assert result.step == 30 and model.meta["num_train_images"] == 16
    assert not torch.allclose(result.model.user_embed.weight.detach(), init)
    net = result.model.eval()
    x, t = torch.randn(2, 1, SIZE, SIZE, generator=g), torch.tensor([25, 25])
    with torch.no_grad():
        e = net.embed(torch.tensor([0, 1]))
        same = [net.decoder.unet(x, t, image_embed=e[[0, 0]]) for _ in range(2)]
        other = net.decoder.unet(x, t, image_embed=e[[1, 1]])
    assert torch.equal(same[0], same[1])
    assert (same[0] - other).abs().mean() > 1e-4


def test_baseline_bundles_have_their_own_kind_and_old_decoder_kind_ones_still_load(model, tmp_path):
    from dalle2_md.models.bundle import load_bundle, save_bundle

    path = model.save(tmp_path / "new.pt")
    assert load_bundle(path)["kind"] == "baseline"
    with pytest.raises(BundleError, match="holds a 'baseline' model"):
        MicroDopplerDecoder.load(path)
    reference = model.sample([2], steps=2, seed=4)
    # as written before issue 11: kind "decoder", a plain decoder config, the flag in the meta ...
    flagged = save_bundle(tmp_path / "old.pt", kind="decoder", config=model.config.to_dict(),
                          state_dict=model.state_dict(), meta={"baseline": True, "num_users": 3, "colormap": "jet"})
    # ... and one whose meta was lost: the user table in the weights still tells it apart
    unflagged = save_bundle(tmp_path / "old_no_meta.pt", kind="decoder", config=model.config.to_dict(),
                            state_dict=model.state_dict())
    for old in (flagged, unflagged):
        assert is_baseline_bundle(old)
        loaded = SingleStageBaseline.load(old)
        assert loaded.num_users == 3
        assert torch.equal(loaded.sample([2], steps=2, seed=4), reference)
