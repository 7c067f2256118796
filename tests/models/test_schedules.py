"""Zero-terminal-SNR rescaling and min-SNR loss weights on dalle2-pytorch's `NoiseScheduler`
(compat's schedule functions, `models.schedules`) and the samplers at alpha_bar_T = 0."""

import math

import pytest
import torch

from dalle2_md.models import compat
from dalle2_md.models.compat import NoiseScheduler
from dalle2_md.sampling import sample_ddim, sample_dpmpp_2m


def scheduler(schedule="cosine", timesteps=1000, gamma=1.0):
    return NoiseScheduler(beta_schedule=schedule, timesteps=timesteps, loss_type="l2", p2_loss_weight_gamma=gamma)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_buffers_recompute_every_buffer_the_noise_scheduler_registers(schedule):
    # relies on NoiseScheduler.__init__ registering betas, alphas_cumprod, ..., posterior_mean_coef2, p2_loss_weight
    s = scheduler(schedule)
    ours = compat.schedule_buffers(s.betas)
    assert set(ours) | {"p2_loss_weight"} == {name for name, _ in s.named_buffers()}
    for name, value in ours.items():
        torch.testing.assert_close(value, getattr(s, name), rtol=1e-3, atol=1e-7, msg=name)
    torch.testing.assert_close(compat.p2_loss_weights(s, 1.0), s.p2_loss_weight, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_rescaled_schedule_ends_at_zero_snr_and_keeps_the_first_step(schedule):
    s, original = scheduler(schedule), scheduler(schedule)
    compat.rescale_to_zero_terminal_snr(s)
    snr, before = compat.snr(s), compat.snr(original)
    assert snr[-1] == 0 and s.alphas_cumprod[-1] == 0 and s.betas[-1] == 1
    assert before[-1] > 0  # the library's own schedule does not end at zero SNR
    assert math.isclose(float(snr[0]), float(before[0]), rel_tol=1e-4)
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    # every derived buffer follows the new betas (NoiseScheduler.q_sample reads these two)
    torch.testing.assert_close(s.sqrt_alphas_cumprod**2, s.alphas_cumprod)
    assert s.sqrt_one_minus_alphas_cumprod[-1] == 1 and s.alphas_cumprod_prev[-1] == s.alphas_cumprod[-2]
    assert torch.isfinite(s.posterior_mean_coef1).all() and torch.isfinite(s.posterior_mean_coef2).all()
    # 1 / sqrt(alpha_bar) is a finite stand-in at alpha_bar = 0 (a state_dict must stay finite) ...
    assert all(torch.isfinite(value).all() for _, value in s.named_buffers())
    assert s.sqrt_recip_alphas_cumprod[-1] > 1e18
    # at t = T - 1, q_sample is pure noise, and x_0 from a v prediction is finite: x_0 = -v
    x0, noise, t = torch.rand(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.full((2,), 999)
    torch.testing.assert_close(compat.q_sample(s, x0, t, noise), noise)
    v = s.calculate_v(x0, t, noise)
    torch.testing.assert_close(compat.x_start_from_v(s, noise, t, v), x0)
    # ... so x_0 from a noise prediction is huge there: why zero terminal SNR needs v
    assert compat.x_start_from_noise(s, noise, t, noise + 0.01).abs().min() > 1e15


def test_min_snr_weights_are_min_snr_gamma_over_snr_plus_one_for_v():
    s = scheduler()
    compat.rescale_to_zero_terminal_snr(s)
    weights = compat.min_snr_loss_weights(s, 5.0, predict_v=True)
    for t in (0, 100, 500, 800, 999):
        abar = float(s.alphas_cumprod[t])
        snr = abar / (1 - abar)
        assert math.isclose(float(weights[t]), min(snr, 5.0) / (snr + 1), rel_tol=1e-5, abs_tol=1e-7), t
    assert weights[0] < 5.0 / float(compat.snr(s)[0]) and weights[-1] == 0
    eps_weights = compat.min_snr_loss_weights(scheduler(), 5.0, predict_v=False)
    assert eps_weights[-1] == 1 and math.isclose(float(eps_weights[0]), 5.0 / float(compat.snr(scheduler())[0]),
                                                 rel_tol=1e-5)


def test_set_loss_weight_is_what_p2_reweigh_loss_multiplies_in():
    # relies on NoiseScheduler.p2_reweigh_loss(loss, times) multiplying p2_loss_weight[times]
    # when has_p2_loss_reweighting (off for p2_loss_weight_gamma = 0)
    s = scheduler(timesteps=10, gamma=0.0)
    loss, times = torch.ones(3, 1), torch.tensor([0, 4, 9])
    assert torch.equal(s.p2_reweigh_loss(loss, times), loss)
    compat.set_loss_weight(s, torch.arange(10.0))
    assert torch.equal(s.p2_reweigh_loss(loss, times), torch.tensor([[0.0], [4.0], [9.0]]))
    assert "p2_loss_weight" in dict(s.named_buffers())  # still saved with the weights


def test_samplers_start_from_zero_terminal_snr():
    """alpha_bar_T = 0: the first step's implied noise is x_T itself; both samplers stay finite
    and, given the exact x_0, land on it."""
    s = scheduler(timesteps=100)
    compat.rescale_to_zero_terminal_snr(s)
    target = torch.rand(2, 1, 4, 4) * 2 - 1
    seen = []

    def model_fn(x, t):
        seen.append(int(t[0]))
        return target

    for sampler in (sample_ddim, sample_dpmpp_2m):
        seen.clear()
        out = sampler(model_fn, torch.randn(2, 1, 4, 4), compat.alphas_cumprod(s), 6)
        assert seen[0] == 99 and torch.isfinite(out).all()
        torch.testing.assert_close(out, target, rtol=1e-4, atol=1e-4)
