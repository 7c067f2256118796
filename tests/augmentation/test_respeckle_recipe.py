"""The generator-free control recipe: the K real images re-speckled, drawn per user from the
user's own seed, run by the harness and the command line without training a generator."""

import json

import pytest
import torch
from click.testing import CliRunner

from dalle2_md.augmentation import harness
from dalle2_md.augmentation.harness import augmentation_gain
from dalle2_md.augmentation.recipe import (AugmentRecipe, default_source, draw_candidates, draw_synthetic, sampling_key,
                                           score_recipe)
from dalle2_md.cli.main import cli
from dalle2_md.data.simulator import get_profile
from dalle2_md.data.synthesize import synthesize_dataset
from dalle2_md.evaluation.augmentations import bright_mask
from dalle2_md.evaluation.protocol import simulate
from dalle2_md.evaluation.recogniser import RecogniserTrainConfig
from dalle2_md.utils import UserError

K = 4
RESPECKLE = AugmentRecipe(name="respeckle", source="respeckle", m_per_k=2.0)
TINY_RECOGNISER = dict(recogniser_train=RecogniserTrainConfig(steps=3, batch_size=4),
                       recogniser_shape=dict(widths=(4, 8), feature_dim=8))


@pytest.fixture(scope="module")
def walks():
    """(images, user indices): 3 gait31 users, 8 walks each, 16 px."""
    return simulate(3, 8, 16, 0, get_profile("gait31"))


def _shot(walks, users=(0, 1, 2)):
    images, ids = walks
    keep = torch.cat([torch.nonzero(ids == u).flatten()[:K] for u in users])
    return images[keep], ids[keep]


def test_respeckled_copies_keep_each_source_walker_and_need_no_generator(walks):
    shot = _shot(walks)
    drawn = draw_synthetic(None, RESPECKLE, None, shot, seed=0)
    assert drawn["images"].shape == (3 * 2 * K, 1, 16, 16) and drawn["num_drawn"] == 3 * 2 * K
    for u in range(3):
        own, mine = shot[0][shot[1] == u], drawn["images"][drawn["user_indices"] == u]
        for j, x in enumerate(mine):  # copy-major: sample j is a copy of image j mod K
            source = own[j % K]
            bright = bright_mask(source[None])[0]
            assert torch.equal(x[bright], source[bright])
            if source[~bright].std() > 0.05:  # a background clipped all over has nothing to redraw
                assert not torch.equal(x, source)


def test_respeckle_draws_are_per_user_and_prefix_stable(walks):
    shot = _shot(walks)
    small, _ = draw_candidates(None, RESPECKLE, None, shot, 5, seed=3)
    large, ids = draw_candidates(None, RESPECKLE, None, shot, 9, seed=3)
    for u in range(3):  # a larger draw holds the smaller one as its prefix, user by user
        assert torch.equal(large[ids == u][:5], small[5 * u : 5 * u + 5])
    # one user's draws depend only on its own seed, not on which other users are there
    alone, _ = draw_candidates(None, RESPECKLE, None, _shot(walks, users=(1,)), 9, seed=3)
    assert torch.equal(alone, large[ids == 1])
    other, _ = draw_candidates(None, RESPECKLE, None, shot, 9, seed=4)
    assert not torch.equal(other, large)
    # guidance and eta do not apply: every respeckle recipe shares one draw
    assert sampling_key(RESPECKLE) == sampling_key(AugmentRecipe(source="respeckle", cond_scale=1.0, eta=1.0))


def test_harness_runs_generator_free_recipes_without_training_a_generator(walks, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a generator was trained")

    monkeypatch.setattr(harness, "train_generator", refuse)
    monkeypatch.setattr(harness, "cached_generator", refuse)
    images, ids = walks
    is_train = torch.arange(len(ids)) % 8 < 6  # six walks per user train, two test
    train, test = (images[is_train], ids[is_train]), (images[~is_train], ids[~is_train])
    result = augmentation_gain(train, test, num_users=3, work_dir=tmp_path, k=2, seeds=(0,), generator="none",
                               recipes=[RESPECKLE], **TINY_RECOGNISER)
    row = result["per_seed"][0]
    assert result["generator"] == "none" and row["generator_seconds"] == {}
    assert row["recipes"]["respeckle"]["num_generated"] == 3 * 4
    assert default_source("none") == "respeckle"
    with pytest.raises(UserError, match="need a generator"):
        augmentation_gain(train, test, num_users=3, work_dir=tmp_path, k=2, seeds=(0,), generator="none",
                          recipes=[AugmentRecipe(name="sd", source="sdedit")], **TINY_RECOGNISER)
    with pytest.raises(UserError, match="unknown generator"):
        augmentation_gain(train, test, num_users=3, work_dir=tmp_path, k=2, seeds=(0,), generator="bogus", **TINY_RECOGNISER)


def test_augment_eval_cli_respeckle_trains_no_generator(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "train_generator", lambda *a, **kw: pytest.fail("a generator was trained"))
    root = tmp_path / "data"
    synthesize_dataset(root, num_users=3, images_per_user=12, image_size=16, seed=0, progress=False)
    out = tmp_path / "aug"
    result = CliRunner().invoke(cli, [
        "augment-eval", "--data_root", str(root), "--image_size", "16", "--k", "2", "--seeds", "0",
        "--source", "respeckle", "--recogniser_steps", "2", "--output_dir", str(out), "--no-progress",
        "--filter", "kinematic", "--kinematic_margin", "0.2"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "augment.json").read_text())
    recipe = saved["recipes"]["cli"]["recipe"]
    assert saved["generator"] == "none" and recipe["source"] == "respeckle"
    assert (recipe["filter"], recipe["kinematic_margin"], recipe["strengths"]) == ("kinematic", 0.2, [])
    result = CliRunner().invoke(cli, [
        "augment-eval", "--data_root", str(root), "--image_size", "16", "--k", "2", "--seeds", "0",
        "--source", "respeckle", "--recogniser_steps", "2", "--output_dir", str(out), "--no-progress",
        "--respeckle_per_k", "1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "augment.json").read_text())
    assert saved["recipes"]["cli"]["recipe"]["respeckle_per_k"] == 1.0
    # M = 3 K, then K more re-speckled copies, for each of the 3 users
    assert saved["per_seed"][0]["recipes"]["cli"]["num_generated"] == 3 * (6 + 2)


def test_augment_eval_cli_refuses_strengths_without_sdedit(tmp_path):
    root = tmp_path / "data"
    synthesize_dataset(root, num_users=2, images_per_user=6, image_size=16, seed=0, progress=False)
    result = CliRunner().invoke(cli, [
        "augment-eval", "--data_root", str(root), "--image_size", "16", "--k", "2", "--seeds", "0",
        "--source", "respeckle", "--strengths", "0.3,0.7", "--output_dir", str(tmp_path / "aug")])
    assert result.exit_code != 0 and "strengths apply to source 'sdedit'" in result.output
    assert "Traceback" not in result.output


def test_respeckle_per_k_adds_the_control_after_each_users_generated_samples(walks):
    shot = _shot(walks)
    users = torch.arange(3).repeat_interleave(K)
    generated = (torch.full((3 * K, 1, 16, 16), -1.0), users)  # stand-ins for a generator's draws
    both = AugmentRecipe(name="prior_rs", source="prior", m_per_k=1.0, respeckle_per_k=2.0)
    drawn = draw_synthetic(None, both, None, shot, seed=0, candidates=generated)
    assert drawn["images"].shape == (3 * 3 * K, 1, 16, 16) and drawn["num_drawn"] == 3 * K
    alone = draw_synthetic(None, RESPECKLE, None, shot, seed=0)
    for u in range(3):
        mine = drawn["images"][drawn["user_indices"] == u]
        assert torch.equal(mine[:K], generated[0][:K])  # the kept samples first
        copies, own = mine[K:], shot[0][shot[1] == u]
        for j, x in enumerate(copies):  # then 2 K re-speckled copies of the user's own images
            bright = bright_mask(own[j % K][None])[0]
            assert torch.equal(x[bright], own[j % K][bright])
        # from their own seed stream: not the control recipe's copies at the same seed
        assert not torch.equal(copies, alone["images"][alone["user_indices"] == u])
    # the copies do not depend on which generated samples they join
    other = draw_synthetic(None, both, None, shot, seed=0, candidates=(generated[0] + 0.5, users))
    for u in range(3):
        assert torch.equal(other["images"][other["user_indices"] == u][K:], drawn["images"][drawn["user_indices"] == u][K:])
    with pytest.raises(UserError, match="respeckle_per_k"):
        AugmentRecipe(respeckle_per_k=-1.0)


def test_score_recipe_cas_trains_on_k_drawn_images_per_user_spread_evenly_and_never_on_copies(walks, monkeypatch):
    from dalle2_md.evaluation import metrics
    from dalle2_md.evaluation.recogniser import RecogniserConfig, train_recogniser

    seen = {}

    def fake_cas(generated, test, **kwargs):
        seen["images"], seen["ids"] = generated
        return {"CAS": 0.25}

    monkeypatch.setattr(metrics, "classification_accuracy_score", fake_cas)
    shot = _shot(walks)
    m = 3 * K
    # stand-ins for an image-major draw: sample j of every user is filled with the value j / 100
    users = torch.arange(3).repeat_interleave(m)
    index = torch.arange(m).repeat(3).float()
    candidates = (index.view(-1, 1, 1, 1).expand(-1, 1, 16, 16) / 100, users)
    shape = RecogniserConfig(num_users=3, channels=1, image_size=16, widths=(4, 8), feature_dim=8)
    train = RecogniserTrainConfig(steps=2, batch_size=4)
    rec_real = train_recogniser(*shot, num_users=3, config=shape, train=train)
    common = dict(seed=0, rec_real=rec_real, rec_cfg=train, shape=shape, num_users=3, bounds=(0.0, 1.0), cas=True)
    recipe = AugmentRecipe(name="prior_rs", source="prior", respeckle_per_k=1.0)
    row, fake = score_recipe(recipe, None, None, shot, walks, candidates, **common)
    assert row["cas"] == 0.25 and len(fake[0]) == 3 * (m + K)
    assert torch.equal(seen["ids"], torch.arange(3).repeat_interleave(K))  # as many per user as the K real images
    spread = torch.linspace(0, m - 1, K).round()  # evenly over the draw, none of the re-speckled copies
    assert torch.equal(seen["images"][:, 0, 0, 0], (spread / 100).repeat(3))
    assert 0 <= row["background_defects"] <= 1 and 0 <= row["acc_aug"] <= 1
    row, _ = score_recipe(RESPECKLE, None, None, shot, walks, None, **common)
    assert "cas" not in row  # re-speckled copies are no generated data
