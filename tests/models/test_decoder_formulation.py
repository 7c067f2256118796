"""The decoder's formulation fields (`zero_terminal_snr`, `loss_weighting`, `min_snr_gamma`):
defaults that leave dalle2-pytorch's schedule as it was, checks, training, sampling from the last
step, and bundles (tiny models, CPU)."""

import pytest
import torch

from dalle2_md.models import compat
from dalle2_md.models.decoder import DecoderConfig, MicroDopplerDecoder
from dalle2_md.utils import UserError

D = 8
ZSNR = dict(prediction="v", zero_terminal_snr=True, loss_weighting="min_snr", min_snr_gamma=5.0)


def tiny(**kw):
    args = dict(image_size=16, channels=1, image_embed_dim=D, dim=16, dim_mults=(1, 2), attn_heads=2,
                attn_dim_head=8, num_resnet_blocks=1, timesteps=100, sample_timesteps=6)
    torch.manual_seed(0)
    return MicroDopplerDecoder(config=DecoderConfig(**{**args, **kw}))


def test_defaults_leave_the_library_schedule_and_p2_weights_as_they_were():
    m = tiny()
    c = m.config
    assert (c.zero_terminal_snr, c.loss_weighting) == (False, "p2")
    library = compat.NoiseScheduler(beta_schedule=c.beta_schedule, timesteps=c.timesteps, loss_type=c.loss_type,
                                    p2_loss_weight_gamma=c.p2_loss_weight_gamma)
    ours = dict(m.noise_scheduler.named_buffers())
    assert set(ours) == {name for name, _ in library.named_buffers()}
    for name, value in library.named_buffers():
        assert torch.equal(ours[name], value), name


def test_an_eps_config_round_trips_and_old_configs_get_the_defaults(tmp_path):
    m = tiny(p2_loss_weight_gamma=0.5)
    m.save(tmp_path / "eps.pt")
    loaded = MicroDopplerDecoder.load(tmp_path / "eps.pt")
    assert loaded.config == m.config
    old = m.config.to_dict()
    for field in ("zero_terminal_snr", "loss_weighting", "min_snr_gamma"):
        del old[field]  # a bundle written before the fields existed
    assert DecoderConfig.from_dict(old) == m.config
    x = torch.nn.functional.normalize(torch.randn(2, D), dim=-1)
    assert torch.equal(loaded.sample(x, seed=1), m.eval().sample(x, seed=1))


@pytest.mark.parametrize("fields, flag", [
    (dict(zero_terminal_snr=True), "--zero_terminal_snr"),
    (dict(zero_terminal_snr=True, prediction="v", learned_variance=True), "--zero_terminal_snr"),
    (dict(loss_weighting="snr"), "--loss_weighting"),
    (dict(loss_weighting="min_snr", min_snr_gamma=0.0), "--min_snr_gamma"),
])
def test_bad_formulations_are_refused_naming_the_flag(fields, flag):
    with pytest.raises(UserError, match=flag):
        tiny(**fields)


def test_the_formulation_rescales_the_schedule_and_sets_min_snr_weights():
    s = tiny(**ZSNR).noise_scheduler
    snr = compat.snr(s)
    assert s.alphas_cumprod[-1] == 0 and s.has_p2_loss_reweighting
    # the training loop refuses to save a state_dict with a non-finite value, buffers included
    assert all(torch.isfinite(v).all() for v in tiny(**ZSNR).state_dict().values() if v.is_floating_point())
    torch.testing.assert_close(s.p2_loss_weight.double(), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1),
                               rtol=1e-5, atol=1e-7)
    # P2 on the rescaled schedule is recomputed from it: 1 / (1 + SNR), so 1 at the last step
    p2 = tiny(prediction="v", zero_terminal_snr=True).noise_scheduler
    assert p2.p2_loss_weight[-1] == 1 and p2.alphas_cumprod[-1] == 0


class _OracleV(torch.nn.Module):
    """The v that turns x_t back into `target` exactly (a perfect v network)."""

    def __init__(self, target, alphas_cumprod):
        super().__init__()
        self.target, self.abar, self.self_cond = target, alphas_cumprod, False

    def forward(self, x, t, **_):
        a = self.abar[t].float().view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.target


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_zero_terminal_snr_samples_from_the_last_step_whatever_sample_start(sampler):
    """sample_start is ignored with zero terminal SNR: sampling starts at T - 1, where a perfect
    v network's first x_0 estimate is already the target."""
    target = torch.rand(2, 1, 16, 16) * 1.6 - 0.8

    for start in (0.5, 0.96, 1.0):
        m = tiny(**ZSNR, sample_start=start)
        compat.set_decoder_unet(m.decoder, _OracleV(target, compat.alphas_cumprod(m.noise_scheduler)))
        seen = []
        out = m.sample(torch.randn(2, D), seed=0, sampler=sampler, callback=seen.append)
        assert seen[0]["t"] == 99 and len(seen) == 6
        torch.testing.assert_close(seen[0]["x_start"], target, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out * 2 - 1, target, atol=1e-3, rtol=1e-3)
    eps_start = []
    tiny(sample_start=0.5).sample(torch.randn(2, D), seed=0, callback=eps_start.append)
    assert eps_start[0]["t"] == 50  # the eps formulation still reads it


def test_a_tiny_zero_terminal_snr_decoder_trains_samples_and_reloads(tmp_path):
    m = tiny(**ZSNR, user_conditioning=True, num_users=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    e = torch.nn.functional.normalize(torch.randn(4, D), dim=-1)
    users = torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        loss = m(x, e, users)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in m.parameters())
    m.eval()
    for sampler in ("ddim", "dpmpp_2m"):
        a = m.sample(e, user_indices=users, seed=7, sampler=sampler, cond_scale=3.0)
        b = m.sample(e, user_indices=users, seed=7, sampler=sampler, cond_scale=3.0)
        assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b)
    assert not torch.equal(a, m.sample(e, user_indices=users, seed=8, cond_scale=3.0))
    m.save(tmp_path / "zsnr.pt")
    loaded = MicroDopplerDecoder.load(tmp_path / "zsnr.pt")
    assert loaded.config == m.config and loaded.noise_scheduler.alphas_cumprod[-1] == 0
    assert torch.equal(loaded.noise_scheduler.p2_loss_weight, m.noise_scheduler.p2_loss_weight)
    assert torch.equal(loaded.sample(e, user_indices=users, seed=7, sampler="dpmpp_2m", cond_scale=3.0), a)


def test_a_new_decoders_formulation_follows_what_the_user_named():
    """train-decoder's rule (schedules.formulation_fields): nothing named gives v + zero terminal
    SNR + min-SNR; a named prediction brings its own schedule end and weighting, so `--prediction
    eps` alone is the earlier eps + P2 decoder; what is named explicitly is kept."""
    from dalle2_md.defaults import DECODER_FORMULATION
    from dalle2_md.models.schedules import formulation_fields

    assert formulation_fields() == DECODER_FORMULATION == dict(prediction="v", zero_terminal_snr=True,
                                                              loss_weighting="min_snr")
    assert formulation_fields("eps") == dict(prediction="eps", zero_terminal_snr=False, loss_weighting="p2")
    assert formulation_fields("edm") == dict(prediction="edm", zero_terminal_snr=False, loss_weighting="p2")
    assert formulation_fields("v", zero_terminal_snr=False) == dict(prediction="v", zero_terminal_snr=False,
                                                                    loss_weighting="min_snr")
    assert formulation_fields(None, None, "p2")["loss_weighting"] == "p2"
    for named in (dict(), dict(prediction="eps"), dict(prediction="edm")):  # every rule's result builds
        DecoderConfig(image_size=16, image_embed_dim=D, dim=16, dim_mults=(1, 2), **formulation_fields(**named))

