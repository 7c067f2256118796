"""MicroDopplerDALLE2: exact counts, seeding, user conditioning, interpolation, bundles."""

import pytest
import torch

from conftest import fit_decoder_on_ramps
from dalle2_md.models.bundle import save_bundle
from dalle2_md.data.colormap import rgb_to_scalar
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.chain import MicroDopplerDALLE2, slerp
from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior
from dalle2_md.utils import BundleError, UserError

D = 16



def make_model(seed=0, clip_fingerprint="aaaa", label_map=None, **decoder_fields):
    torch.manual_seed(seed)
    prior = UserConditionedDiffusionPrior(
        PriorConfig(num_users=3, dim=D, depth=1, heads=2, dim_head=8, timesteps=100, sample_timesteps=5)
    )
    prior.meta = {"clip_fingerprint": clip_fingerprint}
    decoder = MicroDopplerDecoder(
        config=DecoderConfig(
            image_size=16, channels=1, image_embed_dim=D, dim=8, dim_mults=(1, 2), timesteps=100,
            sample_timesteps=5, attn_heads=2, attn_dim_head=8, num_resnet_blocks=1, **decoder_fields,
        )
    )
    decoder.meta = {"clip_fingerprint": clip_fingerprint, "colormap": "jet"}
    return MicroDopplerDALLE2(prior=prior, decoder=decoder, label_map=label_map).eval()


def test_sample_returns_exactly_the_requested_count_in_rgb():
    model = make_model()
    for users, n in (([0], 1), ([0, 1, 2], 2), ([2, 2], 3)):
        images = model.sample(users, num_samples_per_user=n, seed=1, prior_steps=3, decoder_steps=3)
        assert images.shape == (len(users) * n, 3, 16, 16)
        assert images.min() >= 0 and images.max() <= 1
    scalars = model.sample([0, 1], num_samples_per_user=2, seed=1, colorize=False)
    assert scalars.shape == (4, 1, 16, 16)


def test_colorized_output_is_the_jet_image_of_the_scalar_output():
    model = make_model()
    scalars = model.sample([0, 1], seed=4, colorize=False)
    rgb = model.sample([0, 1], seed=4)
    back, residual = rgb_to_scalar((rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8"))
    assert residual < 1.0
    assert abs(back - scalars[:, 0].numpy()).max() <= 2.5 / 255


def test_same_seed_same_images_and_batch_composition_does_not_matter():
    model = make_model()
    a = model.sample([0, 1, 2], num_samples_per_user=2, seed=7)
    b = model.sample([0, 1, 2], num_samples_per_user=2, seed=7)
    assert torch.equal(a, b)
    alone = model.sample([1], num_samples_per_user=2, seed=7)
    torch.testing.assert_close(alone, a[2:4], atol=1e-5, rtol=0)
    assert not torch.allclose(model.sample([0], seed=8), a[:1])


def test_users_samples_have_independent_noise_even_unconditionally():
    """Guidance 0 makes both stages ignore the user, so any difference between sample 0 of two
    users can only come from their noise: with noise shared by sample index they were equal."""
    model = make_model()
    fit_decoder_briefly(model)
    embeds = model.sample_image_embeds([0, 1, 0], prior_cond_scale=0.0, sample_indices=[0, 0, 0], seed=3)
    assert not torch.allclose(embeds[0], embeds[1], atol=1e-4)
    torch.testing.assert_close(embeds[0], embeds[2])  # the same (user, sample, seed): the same noise
    images = model.sample([0, 1], cond_scale=0.0, prior_cond_scale=0.0, seed=3, colorize=False)
    assert (images[0] - images[1]).abs().max() > 1e-3


def test_stochastic_samples_do_not_depend_on_the_batch_either():
    model = make_model()
    a = model.sample([0, 1, 2], num_samples_per_user=2, seed=7, eta=1.0, colorize=False)
    alone = model.sample([1], num_samples_per_user=2, seed=7, eta=1.0, colorize=False)
    torch.testing.assert_close(alone, a[2:4], atol=1e-5, rtol=0)
    assert not torch.allclose(a, model.sample([0, 1, 2], num_samples_per_user=2, seed=7, colorize=False), atol=1e-4)


def test_mixed_batches_of_users_and_sample_indices_give_the_same_rows():
    model = make_model()
    full = model.sample([0, 2], num_samples_per_user=3, seed=5, colorize=False)
    mixed = model.sample([2, 0, 2], sample_indices=[2, 1, 0], seed=5, colorize=False)
    torch.testing.assert_close(mixed, full[[5, 1, 3]], atol=1e-5, rtol=0)


def fit_decoder_briefly(model, steps=15):
    fit_decoder_on_ramps(model, D, steps=steps)


def test_different_users_under_the_same_noise_give_different_images():
    model = make_model()
    fit_decoder_briefly(model)
    images = model.sample([0, 1, 2], seed=3, colorize=False)
    embeds = model.sample_image_embeds([0, 1, 2], seed=3)
    assert not torch.allclose(embeds[0], embeds[1])
    assert (images[0] - images[1]).abs().max() > 1e-3
    assert (images[1] - images[2]).abs().max() > 1e-3


def test_interpolation_endpoints_equal_samples_of_each_user():
    model = make_model()
    frames = model.interpolation_frames(0, 2, steps=5, seed=11)
    assert frames.shape == (5, 3, 16, 16)
    torch.testing.assert_close(frames[0], model.sample([0], seed=11)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[-1], model.sample([2], seed=11)[0], atol=1e-5, rtol=0)
    with pytest.raises(UserError):
        model.interpolation_frames(0, 1, steps=1)


def test_a_user_conditioned_decoder_gets_each_rows_user_through_the_chain():
    """The chain hands the decoder the user it sampled the embedding for: the same embedding and
    noise under another user token give another image, the rows equal a direct decode with those
    users, and interpolation frames still start and end at each user's sample."""
    model = make_model(user_conditioning=True, num_users=3)
    torch.nn.init.normal_(model.decoder.user_embed.weight, std=3.0)  # tokens far apart, so they matter
    fit_decoder_briefly(model)
    images = model.sample([0, 2], num_samples_per_user=2, seed=4, colorize=False)
    embeds = model.sample_image_embeds([0, 2], num_samples_per_user=2, seed=4)
    keys = [("0", 0), ("0", 1), ("2", 0), ("2", 1)]
    torch.testing.assert_close(images, model.decode(embeds, seed=4, keys=keys, user_indices=[0, 0, 2, 2],
                                                    colorize=False), atol=1e-5, rtol=0)
    swapped = model.decode(embeds, seed=4, keys=keys, user_indices=[1, 1, 1, 1], colorize=False)
    assert (swapped - images).abs().amax() > 1e-3
    with pytest.raises(UserError, match="user-conditioned"):
        model.decode(embeds, seed=4, keys=keys)
    frames = model.interpolation_frames(0, 2, steps=3, seed=11)
    torch.testing.assert_close(frames[0], model.sample([0], seed=11)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[-1], model.sample([2], seed=11)[0], atol=1e-5, rtol=0)


def test_slerp_keeps_norm_path_and_endpoints():
    a, b = torch.randn(8), torch.randn(8) * 3
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    assert mid.norm().item() == pytest.approx((a.norm() + b.norm()).item() / 2, rel=1e-5)
    cos = lambda u, v: torch.nn.functional.cosine_similarity(u, v, dim=0)  # noqa: E731
    assert cos(mid, a).item() == pytest.approx(cos(mid, b).item(), abs=1e-5)


def test_save_load_gives_identical_samples(tmp_path):
    model = make_model(label_map={"names": ["ID_1", "ID_2", "ID_3"], "ids": [1, 2, 3], "layout": "hierarchical"})
    path = model.save(tmp_path / "model.pt")
    loaded = MicroDopplerDALLE2.load(path)
    assert torch.equal(loaded.sample([0, 2], num_samples_per_user=2, seed=5), model.sample([0, 2], num_samples_per_user=2, seed=5))
    assert loaded.user_index("ID_3") == 2 and loaded.colormap == "jet"
    with pytest.raises(UserError, match="ID_1"):
        loaded.user_index("ID_9")


def test_parts_saved_separately_chain_and_mismatched_embeddings_are_refused(tmp_path):
    model = make_model()
    model.prior.save(tmp_path / "prior_final.pt", meta={"clip_fingerprint": "aaaa"})
    model.decoder.save(tmp_path / "decoder_final.pt", meta={"clip_fingerprint": "aaaa", "colormap": "jet"})
    chained = MicroDopplerDALLE2.from_parts(prior_path=tmp_path / "prior_final.pt", decoder_path=tmp_path / "decoder_final.pt")
    assert torch.equal(chained.sample([1], seed=2), model.sample([1], seed=2))

    other = make_model(seed=1, clip_fingerprint="bbbb")
    other.decoder.save(tmp_path / "other_decoder.pt", meta={"clip_fingerprint": "bbbb"})
    with pytest.raises(BundleError, match="different embedding models"):
        MicroDopplerDALLE2.from_parts(prior_path=tmp_path / "prior_final.pt", decoder_path=tmp_path / "other_decoder.pt")


def test_loading_a_file_of_the_wrong_kind_is_one_clear_error(tmp_path):
    model = make_model()
    model.prior.save(tmp_path / "prior.pt")
    with pytest.raises(BundleError, match="'prior' model"):
        MicroDopplerDALLE2.load(tmp_path / "prior.pt")
    with pytest.raises(BundleError, match="'prior' model"):
        MicroDopplerDALLE2.from_parts(prior_path=tmp_path / "prior.pt", decoder_path=tmp_path / "prior.pt")
    save_bundle(tmp_path / "x.pt", kind="vqgan", config={}, state_dict={})
    with pytest.raises(BundleError, match="vqgan"):
        MicroDopplerDALLE2.load(tmp_path / "x.pt")


def test_unknown_user_index_is_refused():
    model = make_model()
    with pytest.raises(UserError, match="0..2"):
        model.sample([3])
    with pytest.raises(UserError):
        model.sample([0], num_samples_per_user=0)
