"""Tests for dalle2_md.models.prior: user-conditioned diffusion prior, DDIM sampler, bundles, learning."""

import pytest
import torch
import torch.nn.functional as F

from dalle2_md.models.bundle import save_bundle
from dalle2_md.models.prior import PriorConfig, UserConditionedDiffusionPrior
from dalle2_md.sampling import sample_ddim
from dalle2_md.utils import BundleError, UserError

DIM = 16



def make_prior(**kw):
    torch.manual_seed(0)
    cfg = dict(num_users=5, dim=DIM, depth=1, heads=2, dim_head=8, timesteps=100, sample_timesteps=4)
    cfg.update(kw)
    return UserConditionedDiffusionPrior(PriorConfig(**cfg))


@pytest.mark.parametrize(
    "users, n",
    [([0], 1), ([0, 1, 2], 3), ([4, 4, 1], 2), (torch.tensor([3, 0]), 4), ([], 2)],
)
def test_sample_count_and_shape(users, n):
    prior = make_prior(num_user_tokens=2)
    out = prior.sample(users, n, seed=0)
    assert out.shape == (len(users) * n, DIM)
    assert torch.isfinite(out).all()


def test_sample_is_user_major():
    prior = make_prior()
    noise = torch.randn(6, DIM, generator=torch.Generator().manual_seed(1))
    both = prior.sample([2, 3], 3, noise=noise)
    first = prior.sample([2], 3, noise=noise[:3])
    second = prior.sample([3], 3, noise=noise[3:])
    torch.testing.assert_close(both, torch.cat((first, second)), atol=1e-5, rtol=1e-5)


def test_user_changes_sample_for_same_noise():
    prior = make_prior()
    noise = torch.randn(1, DIM, generator=torch.Generator().manual_seed(2))
    a = prior.sample([0], noise=noise)
    a_again = prior.sample([0], noise=noise)
    b = prior.sample([1], noise=noise)
    assert torch.equal(a, a_again)
    assert (a - b).abs().max() > 1e-3


def test_cond_scale_one_is_conditional_and_guidance_is_cfg_formula():
    prior = make_prior(num_user_tokens=2).eval()
    x, t, ids = torch.randn(4, DIM), torch.tensor([0, 10, 50, 99]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        cond = prior.net(x, t, user_indices=ids)
        null = prior.net(x, t, user_indices=ids, cond_drop_prob=1.0)
        assert torch.equal(prior.net.forward_with_cond_scale(x, t, user_indices=ids, cond_scale=1.0), cond)
        guided = prior.net.forward_with_cond_scale(x, t, user_indices=ids, cond_scale=3.0)
    assert (guided - cond).abs().max() > 1e-3
    torch.testing.assert_close(guided, null + 3.0 * (cond - null), atol=1e-5, rtol=1e-5)
    noise = torch.randn(2, DIM)
    assert not torch.allclose(prior.sample([0, 1], noise=noise), prior.sample([0, 1], noise=noise, cond_scale=3.0))


def test_cond_drop_prob_one_ignores_users_in_training():
    x, t = torch.randn(8, DIM), torch.randint(0, 100, (8,))
    a, b = torch.zeros(8, dtype=torch.long), torch.arange(8) % 5
    for drop, should_depend in ((1.0, False), (0.0, True)):
        prior = make_prior(cond_drop_prob=drop).train()
        out_a = prior.net(x, t, user_indices=a, text_cond_drop_prob=prior.text_cond_drop_prob)
        out_b = prior.net(x, t, user_indices=b, text_cond_drop_prob=prior.text_cond_drop_prob)
        assert torch.equal(out_a, out_b) != should_depend
        # the same through the training loss, with the diffusion noise/times drawn identically
        with torch.random.fork_rng():
            torch.manual_seed(5)
            loss_a = prior(x, a)
            torch.manual_seed(5)
            loss_b = prior(x, b)
        assert torch.equal(loss_a, loss_b) != should_depend


def test_training_does_not_mutate_input_and_backprops():
    prior = make_prior()
    x = F.normalize(torch.randn(6, DIM), dim=-1)
    before = x.clone()
    loss = prior(x, [0, 1, 2, 3, 4, 0])
    loss.backward()
    assert torch.equal(x, before)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert prior.net.user_embed.weight.grad.abs().sum() > 0


def test_seeded_sampling_reproducible_and_leaves_global_rng_alone():
    prior = make_prior()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = prior.sample([0, 1], 2, seed=7, eta=1.0)
    b = prior.sample([0, 1], 2, seed=7, eta=1.0)
    c = prior.sample([0, 1], 2, seed=8, eta=1.0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(prior.sample([0, 1], 2, generator=g, eta=1.0), a)


def test_unknown_user_is_a_user_error():
    prior = make_prior()
    with pytest.raises(UserError, match="out of range"):
        prior.sample([5])


def test_save_load_roundtrip(tmp_path):
    prior = make_prior(num_user_tokens=2)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.01 * torch.randn_like(p))  # differ from a fresh init with the same seed
    path = prior.save(tmp_path / "prior.pt", label_map={"alice": 0, "bob": 1}, meta={"clip_fingerprint": "abc123"})
    loaded = UserConditionedDiffusionPrior.load(path)
    assert loaded.config == prior.config
    assert loaded.label_map == {"alice": 0, "bob": 1}
    assert loaded.meta == {"clip_fingerprint": "abc123"}
    assert torch.equal(loaded.sample([0, 4], 2, seed=3), prior.sample([0, 4], 2, seed=3))
    # a re-save keeps label map and meta
    again = UserConditionedDiffusionPrior.load(loaded.save(tmp_path / "again.pt"))
    assert again.label_map == loaded.label_map and again.meta == loaded.meta


def test_load_wrong_kind_raises(tmp_path):
    prior = make_prior()
    path = save_bundle(tmp_path / "d.pt", kind="decoder", config={}, state_dict=prior.state_dict())
    with pytest.raises(BundleError, match="prior"):
        UserConditionedDiffusionPrior.load(path)
    bad = save_bundle(tmp_path / "p.pt", kind="prior", config={"num_users": 2, "bogus": 1}, state_dict={})
    with pytest.raises(BundleError):
        UserConditionedDiffusionPrior.load(bad)


def test_sample_ddim_reproduces_gaussian_data_with_exact_denoiser():
    # data ~ N(0, s^2 I): the exact x0 estimate is sqrt(a) s^2 / (a s^2 + 1 - a) * x_t,
    # so correct DDIM updates over all 1000 steps must return samples with std s (eta 0 and 1;
    # with 50 steps discretisation shrinks it to ~0.48 / ~0.47)
    prior = make_prior(timesteps=1000)
    alphas = prior.noise_scheduler.alphas_cumprod
    s = 0.5

    def denoiser(x, t):
        a = alphas[t].unsqueeze(-1)
        return a.sqrt() * s**2 / (a * s**2 + 1 - a) * x

    for eta in (0.0, 1.0):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn((4000, 8), generator=g)
        out = sample_ddim(denoiser, noise, alphas, 1000, eta=eta, generator=g)
        assert abs(out.std().item() - s) < 0.01, (eta, out.std().item())


def test_prior_learns_user_clusters():
    """Synthetic CLIP-like embeddings: 6 users, each a cluster of unit vectors around its own
    direction (within-user cosine ~0.9). After a short CPU run, samples must land nearest their
    own user's centroid."""
    num_users, dim = 6, 32
    g = torch.Generator().manual_seed(0)
    centroids = F.normalize(torch.randn(num_users, dim, generator=g), dim=-1)

    def batch(n):
        ids = torch.randint(0, num_users, (n,), generator=g)
        return F.normalize(centroids[ids] + 0.45 * torch.randn(n, dim, generator=g) / dim**0.5, dim=-1), ids

    torch.manual_seed(0)
    prior = UserConditionedDiffusionPrior(
        PriorConfig(num_users=num_users, dim=dim, depth=2, heads=2, dim_head=16, sample_timesteps=16)
    )
    opt = torch.optim.Adam(prior.parameters(), lr=1e-3)
    for _ in range(300):
        x, ids = batch(64)
        loss = prior(x, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()

    samples = prior.sample(list(range(num_users)), 20, seed=0)
    nearest = (F.normalize(samples, dim=-1) @ centroids.T).argmax(-1)
    truth = torch.arange(num_users).repeat_interleave(20)
    accuracy = (nearest == truth).float().mean().item()
    assert accuracy >= 0.9, accuracy
