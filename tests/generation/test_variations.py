"""Image variations and SDEdit: shapes, seeding, strength 0 = the input, the truncated schedule,
and the `variations` command with its bad inputs."""

from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dalle2_md.cli.main import cli
from dalle2_md.defaults import SAMPLE_TIMESTEPS, SamplingConfig
from dalle2_md.utils import UserError
from dalle2_md.generation.variations import EmbeddingDecoder, sdedit, sdedit_timesteps, variations_of
from conftest import fit_decoder_on_ramps
from test_curate import LABELS, tiny_chain


def fit_briefly(model, steps=20):
    """A few decoder steps on smooth ramps, so its x_0 estimates stay in range."""
    torch.manual_seed(0)
    return fit_decoder_on_ramps(model, 16, steps=steps, normalize=True)


@pytest.fixture(scope="module")
def model_and_images():
    model = tiny_chain(LABELS.to_dict())
    images = fit_briefly(model)
    return model, images[:3].clone()


def test_variations_shapes_seeding_and_independence_of_other_images(model_and_images):
    model, images = model_and_images
    a = variations_of(model, images, n=2, seed=1)
    assert a.shape == (6, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, variations_of(model, images, n=2, seed=1))
    assert not torch.allclose(a, variations_of(model, images, n=2, seed=2))
    assert not torch.allclose(a[0], a[1])  # two variations of one image differ
    # batch composition changes float rounding only (guidance 3 amplifies it a little)
    torch.testing.assert_close(variations_of(model, images[:1], n=2, seed=1), a[:2], atol=2e-4, rtol=0)


def test_sdedit_strength_zero_is_the_input_and_noise_grows_with_strength(model_and_images):
    model, images = model_and_images
    assert torch.equal(sdedit(model, images, 0.0, seed=0), images)
    distance = {s: (sdedit(model, images, s, seed=0) - images).abs().mean().item() for s in (0.01, 0.3, 1.0)}
    assert distance[0.01] < 0.05
    assert distance[0.01] < distance[0.3] < distance[1.0]
    out = sdedit(model, images, 0.5, seed=3, n=2)
    assert out.shape == (6, 1, 16, 16) and torch.equal(out, sdedit(model, images, 0.5, seed=3, n=2))


def test_sdedit_runs_only_the_remaining_steps():
    times = sdedit_timesteps(100, 0.5, 10)
    assert times[0] == 49 and times == sorted(times, reverse=True) and len(set(times)) == len(times)
    assert all(t < 49 for t in times[1:]) and times[-1] == 0 and 4 <= len(times) <= 7
    assert sdedit_timesteps(100, 0.0, 10) == [] and sdedit_timesteps(100, 1.0, 10)[0] == 99
    with pytest.raises(UserError, match="strength"):
        sdedit_timesteps(100, 1.5, 10)


def test_a_model_without_its_embedding_model_or_wrong_sized_images_are_refused(model_and_images):
    model, images = model_and_images
    with pytest.raises(UserError, match="clip_path"):
        variations_of(EmbeddingDecoder(decoder=model.decoder, clip=None), images)
    with pytest.raises(UserError, match="16, 16"):
        sdedit(model, torch.zeros(1, 1, 8, 8), 0.5)


@pytest.fixture(scope="module")
def files(tmp_path_factory, model_and_images):
    model, images = model_and_images
    root = tmp_path_factory.mktemp("var")
    path = model.save(root / "chain.pt")
    model.decoder.save(root / "decoder.pt", meta=model.decoder.meta)
    from dalle2_md.data.display import colourise

    rgb = colourise((images[:1] + 1) / 2, "jet")[0]
    Image.fromarray(rgb).save(root / "real.png")
    Image.fromarray(rgb).resize((32, 32)).save(root / "big.png")
    return {"root": root, "model": path, "decoder": root / "decoder.pt"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_writes_variations_sdedit_and_a_grid(files):
    out = files["root"] / "out"
    r = invoke("variations", "--model_path", files["model"], "--image", files["root"] / "real.png", "--n", 3, "--output_dir", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["real_grid.png", "real_variation_000.png", "real_variation_001.png",
                                                     "real_variation_002.png"]
    with Image.open(out / "real_variation_000.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    r = invoke("variations", "--model_path", files["model"], "--image", files["root"] / "big.png", "--resize", "--n", 2,
               "--strength", 0.3, "--output_dir", out)
    assert r.exit_code == 0, r.output
    assert (out / "big_sdedit_001.png").is_file() and (out / "big_grid.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--image", "missing.png"], "missing.png does not exist"),
    (["--image", "big.png"], "pass --resize"),
    (["--image", "real.png", "--strength", "1.5"], "--strength must lie in [0, 1]"),
    (["--image", "real.png", "--n", "0"], "--n must be at least 1"),
])
def test_cli_bad_inputs_are_one_clear_error(files, args, message):
    args = [files["root"] / a if a.endswith(".png") else a for a in args]
    r = invoke("variations", "--model_path", files["model"], "--output_dir", files["root"] / "bad", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_cli_decoder_without_its_embedding_model_is_one_clear_error(files):
    r = invoke("variations", "--decoder_path", files["decoder"], "--image", files["root"] / "real.png")
    assert r.exit_code == 2 and "--clip_path" in r.output


def test_the_augmentation_recipe_gets_model_space_variations_of_each_users_own_images(model_and_images):
    from dalle2_md.training.presets import GeneratorBudget
    from dalle2_md.augmentation.recipe import AugmentRecipe, _candidates

    model, images = model_and_images
    shot = (images, torch.tensor([0, 0, 2]))
    recipe = AugmentRecipe(source="variations", filter="none", cond_scale=1.0)
    x, ids = _candidates(model, recipe, GeneratorBudget(sampling=SamplingConfig(decoder_steps=3, prior_steps=SAMPLE_TIMESTEPS)), [0, 2], shot, 3, seed=5)
    assert ids.tolist() == [0, 0, 0, 2, 2, 2]
    assert x.shape == (6, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[3:], variations_of(model, images[2:], n=3, seed=5 + 7919 * 2, cond_scale=1.0, steps=3),
                               atol=2e-4, rtol=0)


def test_sdedit_is_a_recipe_source_that_keeps_each_users_own_images(model_and_images):
    from dalle2_md.training.presets import GeneratorBudget
    from dalle2_md.augmentation.recipe import AugmentRecipe, draw_candidates, sampling_key

    model, images = model_and_images
    # two "users" with clearly different real images: ramps and their mirror images
    shot = (torch.cat([images[:2], images[:2].flip(-2)]), torch.tensor([0, 0, 1, 1]))
    budget = GeneratorBudget(sampling=SamplingConfig(decoder_steps=4, prior_steps=SAMPLE_TIMESTEPS))
    recipe = AugmentRecipe(source="sdedit", strength=0.1)
    fake, users = draw_candidates(model, recipe, budget, shot, 3, seed=0)
    assert fake.shape == (6, 1, 16, 16) and users.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(fake, draw_candidates(model, recipe, budget, shot, 3, seed=0)[0])
    # at low strength each candidate stays nearest one of its own user's real images
    nearest = torch.cdist(fake.flatten(1), shot[0].flatten(1)).argmin(1)
    assert torch.equal(shot[1][nearest], users)
    assert sampling_key(recipe) != sampling_key(AugmentRecipe(source="sdedit", strength=0.7))
    prior_a, prior_b = AugmentRecipe(source="prior", strength=0.1), AugmentRecipe(source="prior", strength=0.7)
    assert sampling_key(prior_a) == sampling_key(prior_b)  # the prior source ignores the strength
    with pytest.raises(UserError, match="strength"):
        AugmentRecipe(source="sdedit", strength=0.0)


def test_sdedit_conditions_other_than_the_own_embedding(model_and_images):
    """"partner" conditions lie between two of the user's own embeddings; "prior" conditions are the
    prior's samples; both change the outputs, both depend on the user's own seed only."""
    import torch.nn.functional as F

    from dalle2_md.training.presets import GeneratorBudget
    from dalle2_md.augmentation.recipe import AugmentRecipe, _sdedit_conditions, sampling_key
    from dalle2_md.generation.variations import embed

    model, images = model_and_images
    own_embeds = embed(model, images)
    partner = AugmentRecipe(source="sdedit", condition="partner")
    cond = _sdedit_conditions(model, partner, images, 0, 2, seed=11)
    assert cond.shape == (6, own_embeds.shape[1])
    torch.testing.assert_close(cond.norm(dim=-1), torch.ones(6))
    # each condition is on the great circle between its source image's embedding and another image's
    source = own_embeds.repeat_interleave(2, dim=0)
    def off_plane(c, a, b):  # distance of c from the plane spanned by a and b
        span = torch.stack([a, b]).T
        return (c - span @ torch.linalg.pinv(span) @ c).norm()

    cos = lambda a, b: F.cosine_similarity(a, b, dim=0)
    for c, (i, s) in zip(cond, enumerate(source)):
        o = min((own_embeds[j] for j in range(3) if j != i // 2), key=lambda o: off_plane(c, s, o))
        # in the plane of the two, and on the arc between them, not beyond either end
        assert off_plane(c, s, o) < 1e-4
        assert cos(c, s) >= cos(s, o) - 1e-5 and cos(c, o) >= cos(s, o) - 1e-5
    assert torch.equal(cond, _sdedit_conditions(model, partner, images, 0, 2, seed=11))
    assert _sdedit_conditions(model, AugmentRecipe(source="sdedit"), images, 0, 2, seed=11) is None
    prior = _sdedit_conditions(model, AugmentRecipe(source="sdedit", condition="prior"), images, 2, 2, seed=11)
    torch.testing.assert_close(prior, model.sample_image_embeds([2] * 6, sample_indices=list(range(6)), seed=11))
    # the conditions reach the decoder: same noise, other embeddings, other images
    assert not torch.allclose(sdedit(model, images, 0.8, seed=0, n=2, steps=4),
                              sdedit(model, images, 0.8, seed=0, n=2, steps=4, image_embeds=cond))
    torch.testing.assert_close(sdedit(model, images, 0.8, seed=0, n=2, steps=4),
                               sdedit(model, images, 0.8, seed=0, n=2, steps=4, image_embeds=source), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="embeddings"):
        sdedit(model, images, 0.5, n=2, image_embeds=cond[:4])
    assert len({sampling_key(AugmentRecipe(source="sdedit", condition=c)) for c in ("own", "partner", "prior")}) == 3
    with pytest.raises(UserError, match="condition"):
        AugmentRecipe(condition="neighbour")
    budget = GeneratorBudget(sampling=SamplingConfig(decoder_steps=3, prior_steps=SAMPLE_TIMESTEPS))
    from dalle2_md.augmentation.recipe import draw_candidates

    shot = (images, torch.tensor([0, 0, 2]))
    x, ids = draw_candidates(model, partner, budget, shot, 2, seed=1)
    alone = draw_candidates(model, partner, budget, (images[2:], torch.tensor([2])), 2, seed=1)
    assert ids.tolist() == [0, 0, 2, 2]
    torch.testing.assert_close(x[2:], alone[0], atol=2e-4, rtol=0)


def test_variations_and_sdedit_of_a_user_conditioned_decoder_use_the_users_given_or_read_by_the_embedding_model():
    from dalle2_md.models.decoder import MicroDopplerDecoder
    from dalle2_md.generation.variations import embed, users_for

    model = tiny_chain(LABELS.to_dict())
    model.decoder = MicroDopplerDecoder(config=replace(model.decoder.config, user_conditioning=True, num_users=3))
    torch.nn.init.normal_(model.decoder.user_embed.weight, std=3.0)  # tokens far apart, so they matter
    images = fit_briefly(model)[:3].clone()
    read = users_for(model, embed(model, images))
    tokens = model.clip.embed_users(torch.arange(3))
    assert torch.equal(read, (embed(model, images) @ tokens.T).argmax(-1))
    given = (read + 1) % 3
    for draw in (lambda **kw: variations_of(model, images, n=2, seed=1, cond_scale=1.0, steps=3, **kw),
                 lambda **kw: sdedit(model, images, strength=0.6, n=2, seed=1, cond_scale=1.0, steps=3, **kw)):
        torch.testing.assert_close(draw(), draw(user_indices=read), atol=1e-5, rtol=0)
        assert (draw(user_indices=given) - draw(user_indices=read)).abs().amax() > 1e-3
    with pytest.raises(UserError, match="one per image"):
        variations_of(model, images, n=1, user_indices=[0])
