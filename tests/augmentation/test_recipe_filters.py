"""Recipe options beyond the default: the kinematic filter (kinematic sifting of the candidates
against the K real images' ranges) and a mix of SDEdit strengths."""

import pytest
import torch

from dalle2_md.augmentation import recipe as recipe_module
from dalle2_md.augmentation.recipe import AugmentRecipe, draw_synthetic, sampling_key
from dalle2_md.data.simulator import get_profile
from dalle2_md.evaluation.protocol import simulate
from dalle2_md.utils import UserError


@pytest.fixture(scope="module")
def walks():
    """(images, user indices): 2 gait31 users, 6 walks each, 32 px (kinematics need some pixels)."""
    return simulate(2, 6, 32, 0, get_profile("gait31"))


@pytest.mark.parametrize("fields, message", [
    (dict(source="prior", strengths=(0.3, 0.7)), "strengths apply to source 'sdedit'"),
    (dict(source="sdedit", condition="partner", strengths=(0.3, 0.7)), "condition 'own'"),
    (dict(source="sdedit", strengths=(0.3, 1.5)), "strength must lie in"),
    (dict(filter="sift"), "filter 'sift' is not one of"),
])
def test_recipe_refuses_bad_strengths_and_filters(fields, message):
    with pytest.raises(UserError, match=message):
        AugmentRecipe(**fields)


def test_a_strength_mix_draws_its_own_candidates():
    one = AugmentRecipe(source="sdedit", strength=0.5)
    mix = AugmentRecipe(source="sdedit", strengths=(0.3, 0.5, 0.7))
    assert sampling_key(one) != sampling_key(mix)
    assert sampling_key(mix) == sampling_key(AugmentRecipe(source="sdedit", strengths=(0.3, 0.5, 0.7), filter="kinematic"))


def test_strength_mix_takes_copy_j_of_each_image_from_strength_j_mod_s(monkeypatch):
    calls = []

    def fake_sdedit(model, images, *, strength, n, seed, image_embeds, user_indices, **_):
        calls.append((strength, n, seed))
        out = torch.full((len(images) * n, 1, 2, 2), strength)
        out[:, 0, 0, 0] = torch.arange(len(images)).repeat_interleave(n).float()  # which source image
        return out

    monkeypatch.setattr("dalle2_md.generation.variations.sdedit", fake_sdedit)
    mix = AugmentRecipe(source="sdedit", strengths=(0.3, 0.5, 0.7))
    own = torch.zeros(2, 1, 2, 2)
    out = recipe_module._sdedit_copies(mix, mix, own, None, torch.zeros(2, dtype=torch.long), dict(n=5, seed=11))
    assert out.shape == (10, 1, 2, 2)
    for r in range(2):
        for j in range(5):
            assert out[r * 5 + j, 0, 0, 0] == r and out[r * 5 + j, 0, 1, 1].item() == pytest.approx(mix.strengths[j % 3])
    assert [c[0] for c in calls] == [0.3, 0.5, 0.7] and all(c[1] == 2 for c in calls)
    assert len({c[2] for c in calls}) == 3  # each strength its own noise stream


def test_kinematic_filter_keeps_walks_in_their_users_range_and_drops_blank_images(walks):
    images, ids = walks
    shot = (images, ids)
    blank = torch.full((6, 1, 32, 32), -1.0)  # no walker: no envelope, no cadence
    candidates = (torch.cat([images[ids == 0], blank[:3], images[ids == 1], blank[3:]]),
                  torch.tensor([0] * 9 + [1] * 9))
    sift = AugmentRecipe(source="respeckle", filter="kinematic", m_per_k=1.0, oversample=1.5)
    drawn = draw_synthetic(None, sift, None, shot, seed=0, candidates=candidates)
    # the real walks lie in their own range (margin >= 0); every blank image is dropped
    assert len(drawn["images"]) == 12 and not (drawn["images"] == -1.0).flatten(1).all(1).any()
    assert drawn["acceptance"] == {0: pytest.approx(6 / 9), 1: pytest.approx(6 / 9)}
    no_filter = draw_synthetic(None, AugmentRecipe(source="respeckle", m_per_k=1.0), None, shot, seed=0,
                               candidates=candidates)
    assert no_filter["acceptance"] == {0: 1.0, 1: 1.0}
