"""The EDM formulation (models/edm.py) and EDM's Heun sampler (sampling.sample_heun): the level
<-> time map of the schedule, the preconditioning, the sampler on data whose exact denoiser is
known, the decoder's checks and its bundle (that a tiny EDM decoder learns two users:
test_decoder.test_v_and_edm_decoders_learn_two_users)."""

import pytest
import torch

from dalle2_md.models.compat import alphas_cumprod
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.models.edm import (SIGMA_DATA, edm_denoise, edm_loss, karras_sigmas, preconditioning,
                                  sampling_levels, schedule_sigmas, sigma_to_time, vp_model_fn)
from dalle2_md.sampling import sample_heun
from dalle2_md.utils import UserError

D = 16
TINY = dict(image_size=16, channels=1, image_embed_dim=D, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
            num_resnet_blocks=1, timesteps=100, sample_timesteps=10)


def tiny_edm(**kw):
    torch.manual_seed(0)
    return MicroDopplerDecoder(config=DecoderConfig(**{**TINY, "prediction": "edm", **kw}))


def test_levels_and_times_of_the_schedule_map_back_and_forth():
    m = tiny_edm()
    sigmas = schedule_sigmas(alphas_cumprod(m.noise_scheduler))
    assert torch.all(sigmas[1:] > sigmas[:-1])  # noise grows with time
    times = torch.tensor([0, 1, 37, 99])
    torch.testing.assert_close(sigma_to_time(sigmas[times], sigmas), times.float(), atol=1e-4, rtol=0)
    between = sigma_to_time((sigmas[10] * sigmas[11]).sqrt().view(1), sigmas)  # halfway in log sigma
    torch.testing.assert_close(between, torch.tensor([10.5]), atol=1e-4, rtol=0)
    # outside the schedule's range: its ends
    assert sigma_to_time(torch.tensor([1e-9, 1e9]), sigmas).tolist() == [0.0, 99.0]


def test_preconditioning_with_unit_data_spread_is_v_prediction():
    """With sigma_data = 1, c_in x is the VP input sqrt(a) x_ve and D = c_skip x + c_out F is the
    v-prediction x_0 estimate with F = -v: EDM differs from v by the data's own spread."""
    a = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    sigma = ((1 - a) / a).sqrt()
    c_skip, c_out, c_in = (c.flatten().double() for c in preconditioning(sigma, sigma_data=1.0))
    torch.testing.assert_close(c_in, a.sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(c_skip * c_in.reciprocal(), a.sqrt(), rtol=1e-5, atol=0)  # c_skip x_ve = sqrt(a) x_vp
    torch.testing.assert_close(c_out, (1 - a).sqrt(), rtol=1e-5, atol=0)
    # EDM's own spread: c_skip -> 1 as sigma -> 0 (the input is the answer), c_out -> sigma_data at high noise
    c_skip, c_out, _ = preconditioning(torch.tensor([1e-4, 1e4]))
    assert c_skip.flatten()[0] == pytest.approx(1.0, abs=1e-6) and c_out.flatten()[1] == pytest.approx(SIGMA_DATA, rel=1e-4)


def test_heun_with_the_exact_denoiser_of_gaussian_data_draws_that_gaussian():
    """For x_0 ~ N(mu, s^2) the denoiser is known in closed form; EDM's sampler with it must
    give samples of mean mu and spread s from EDM's own levels (the spread's error shrinks as a
    second-order method's does: 8 % at 18 steps, 2 % at 40)."""
    mu, s = 0.3, 0.2
    denoise = lambda x, sigma: mu + s ** 2 / (s ** 2 + sigma.view(-1, 1) ** 2) * (x - mu)
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = karras_sigmas(40, 0.002, 80.0).double()
    out = sample_heun(denoise, noise, levels)
    assert out.mean().item() == pytest.approx(mu, abs=0.01)
    assert out.std().item() == pytest.approx(s, rel=0.03)
    # Euler alone (no correction) with the same levels is visibly worse: the correction is used
    euler = noise * levels[0]
    for a, b in zip(levels[:-1], levels[1:]):
        euler = euler + (b - a) * (euler - denoise(euler, torch.full((len(euler),), float(a)))) / a
    assert abs(euler.std().item() - s) > 2 * abs(out.std().item() - s)


def test_karras_levels_run_from_max_to_min_then_zero_and_stay_in_the_schedule():
    levels = karras_sigmas(5, 0.01, 10.0)
    assert len(levels) == 6 and levels[-1] == 0
    assert levels[0].item() == pytest.approx(10.0) and levels[-2].item() == pytest.approx(0.01)
    assert torch.all(levels[:-1] > levels[1:])
    sigmas = schedule_sigmas(alphas_cumprod(tiny_edm().noise_scheduler))
    inside = sampling_levels(sigmas, 9)  # 5 Heun steps: 9 network evaluations
    assert len(inside) == 6 and float(sigmas[0]) <= inside[-2] and inside[0] <= min(80.0, float(sigmas[-1]))


def test_the_loss_target_makes_a_perfect_denoiser_score_zero():
    """F's target is (x_0 - c_skip x) / c_out: a network that outputs it exactly has zero loss,
    and its denoised estimate is x_0 itself."""
    m = tiny_edm()
    sigmas = schedule_sigmas(alphas_cumprod(m.noise_scheduler))
    x0, noise = torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 1, 16, 16)
    state = {}

    def oracle(inp, t):  # recovers x from c_in x, then answers with F's target for the sample's own x_0
        sigma = sigmas.double()[t.round().long()].float() if torch.allclose(t, t.round()) else state["sigma"]
        c_skip, c_out, c_in = preconditioning(sigma)
        return (x0 - c_skip * (inp / c_in)) / c_out

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        log_sigma = -1.2 + 1.2 * torch.randn(4, dtype=torch.float64)
        state["sigma"] = log_sigma.exp().clamp(float(sigmas[0]), float(sigmas[-1]))
        torch.manual_seed(0)
        assert edm_loss(oracle, x0, sigmas, noise).item() < 1e-8
    x = x0 + state["sigma"].float().view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(edm_denoise(oracle, x, state["sigma"], sigmas), x0, atol=1e-4, rtol=0)
    # and through the VP view the DDIM / DPM-Solver samplers use, at integer times
    t = torch.tensor([5, 20, 50, 90])
    a = alphas_cumprod(m.noise_scheduler)[t].float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    torch.testing.assert_close(vp_model_fn(lambda x, s: edm_denoise(oracle, x, s, sigmas),
                                           alphas_cumprod(m.noise_scheduler))(x_t, t), x0, atol=1e-3, rtol=0)


@pytest.mark.parametrize("fields", [dict(zero_terminal_snr=True), dict(learned_variance=True),
                                    dict(loss_weighting="min_snr"), dict(loss_type="l1")])
def test_edm_refuses_what_brings_its_own_levels_or_weights(fields):
    with pytest.raises(UserError, match="--prediction edm"):
        DecoderConfig(**{**TINY, "prediction": "edm", **fields})


def test_an_edm_bundle_round_trips_and_samples_alike(tmp_path):
    m = tiny_edm()
    m.save(tmp_path / "d.pt")
    loaded = MicroDopplerDecoder.load(tmp_path / "d.pt")
    assert loaded.config.prediction == "edm"
    e = torch.randn(2, D)
    assert torch.equal(loaded.sample(e, seed=1), m.sample(e, seed=1))
    # the default is the shared DPM-Solver++ (through the VP view); Heun and DDIM when named
    assert torch.equal(m.sample(e, seed=1), m.sample(e, seed=1, sampler="dpmpp_2m"))
    assert not torch.equal(m.sample(e, seed=1, sampler="heun"), m.sample(e, seed=1))
    for sampler in ("ddim", "dpmpp_2m", "heun"):
        out = m.sample(e, seed=1, sampler=sampler, timesteps=4)
        assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
