"""The generic training loop, exercised with a tiny regression model instead of a real stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dalle2_md.training.loop import TrainConfig, train
from dalle2_md.training.checkpoints import latest_checkpoint, load_checkpoint
from dalle2_md.utils import BundleError, UserError


class ToyRegression(nn.Module):
    """forward(x, y) -> MSE loss. Dropout and input noise make the loss depend on the global RNG,
    so resume tests also check that RNG state travels with the checkpoint."""

    def __init__(self, dim: int = 4, hidden: int = 16, dropout: float = 0.1, noise: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.noise = noise
        self.calls = 0
        self.nan_after: int | None = None

    def forward(self, x, y):
        self.calls += 1
        x = x + self.noise * torch.randn_like(x)
        loss = nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        if self.nan_after is not None and self.calls > self.nan_after:
            loss = loss * float("nan")
        return loss


def toy_data(n: int = 22, dim: int = 4) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, generator=g)
    return torch.utils.data.TensorDataset(x, x @ w + 0.5)


def make_model(**kw) -> ToyRegression:
    torch.manual_seed(7)
    return ToyRegression(**kw)


def cfg(**kw) -> TrainConfig:
    base = dict(batch_size=4, lr=1e-2, log_every=2, seed=3, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def run(tmp: Path, config: TrainConfig, model=None, **kw):
    return train(model or make_model(), toy_data(), config, run_dir=tmp, stage="toy", progress=False,
                 model_config={"dim": 4, "hidden": 16}, **kw)


def test_loss_decreases_ema_returned_and_checkpoints_pruned(tmp_path):
    res = run(tmp_path, cfg(max_steps=60, checkpoint_every=10, keep_last=2))
    assert res.step == 60 and len(res.losses) == 60
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)

    raw, ema = weights(res.model), weights(res.ema_model)
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    assert res.ema_model is not res.model

    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert files == ["step_000050.pt", "step_000060.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000060.pt" == res.checkpoint
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 60

    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["step"] == 60 and ckpt["stage"] == "toy" and ckpt["config"] == {"dim": 4, "hidden": 16}
    assert ckpt["train_config"]["max_steps"] == 60
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] == 60
    for k, v in raw.items():
        assert torch.equal(ckpt["state_dict"][k], v)
        assert torch.equal(ckpt["ema"][f"ema_model.{k}"], ema[k])
    assert isinstance(ckpt["rng"][0]["torch"], torch.Tensor)
    assert "torch" in ckpt["versions"]


def test_resume_continues_exactly_mid_epoch(tmp_path):
    # 22 samples / batch 4 -> step 10 ends mid-epoch; warmup makes the scheduler state matter
    common = dict(checkpoint_every=10, warmup_steps=5)
    straight = run(tmp_path / "a", cfg(max_steps=20, **common))

    first = run(tmp_path / "b", cfg(max_steps=10, **common))
    assert first.step == 10
    second = run(tmp_path / "b", cfg(max_steps=20, **common), resume="latest")

    assert second.start_step == 10 and second.step == 20 == straight.step
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=1e-6, rel=0)
    for a, b in ((straight.model, second.model), (straight.ema_model, second.ema_model)):
        wa, wb = weights(a), weights(b)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    a = load_checkpoint(straight.checkpoint)
    b = load_checkpoint(second.checkpoint)
    assert a["position"] == b["position"] == 20 * 4


def test_in_memory_run_is_the_same_run_and_leaves_no_files(tmp_path, monkeypatch):
    on_disk = run(tmp_path / "disk", cfg(max_steps=8))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    in_memory = run(None, cfg(max_steps=8))
    assert in_memory.losses == on_disk.losses and in_memory.checkpoint is None
    for k, v in weights(on_disk.ema_model).items():
        assert torch.equal(weights(in_memory.ema_model)[k], v)
    assert not any((tmp_path / "scratch").iterdir())
    with pytest.raises(UserError, match="run_dir"):
        run(None, cfg(max_steps=8), resume="latest")


def test_tensorboard_scalars_and_sample_grid(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def sample_fn(ema_model, step):
        assert not ema_model.training and not torch.is_grad_enabled()
        return torch.rand(3, 1, 8, 8)

    res = run(tmp_path, cfg(max_steps=4, sample_every=2), sample_fn=sample_fn)
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss", "lr", "grad_norm", "samples_per_s"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [2, 4]
    assert acc.Scalars("lr")[-1].value == pytest.approx(1e-2)
    assert "samples" in tags["images"] and [e.step for e in acc.Images("samples")] == [2, 4]
    pngs = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert pngs == ["step_000002.png", "step_000004.png"] and len(res.samples) == 2
    assert (tmp_path / "samples" / "step_000004.png").read_bytes()[:4] == b"\x89PNG"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = make_model()
    model.nan_after = 12  # the 13th forward returns NaN
    with pytest.raises(UserError) as err:
        run(tmp_path, cfg(max_steps=30, checkpoint_every=5), model=model)
    msg = str(err.value)
    assert "step 13" in msg and "--lr" in msg and "--mixed-precision no" in msg and "step_000010.pt" in msg
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert files == ["step_000005.pt", "step_000010.pt"]
    ckpt = load_checkpoint(latest_checkpoint(tmp_path), stage="toy")
    assert ckpt["step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_gradient_accumulation_matches_bigger_batch(tmp_path):
    # no dropout/noise: two micro-batches of 4 average to the same gradient as one batch of 8
    accumulated = make_model(dropout=0.0, noise=0.0)
    res_acc = run(tmp_path / "acc", cfg(max_steps=5, batch_size=4, gradient_accumulation_steps=2), model=accumulated)
    res_big = run(tmp_path / "big", cfg(max_steps=5, batch_size=8), model=make_model(dropout=0.0, noise=0.0))
    assert accumulated.calls == 10 and res_acc.step == 5 and len(res_acc.losses) == 5
    assert res_acc.losses == pytest.approx(res_big.losses, rel=1e-5)
    wa, wb = weights(res_acc.model), weights(res_big.model)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-5)
    assert load_checkpoint(res_acc.checkpoint)["position"] == 5 * 8


def test_epochs_set_step_count(tmp_path):
    res = run(tmp_path, cfg(epochs=2, batch_size=4))  # ceil(2 * 22 / 4) = 11
    assert res.step == 11
    with pytest.raises(UserError):
        TrainConfig(max_steps=5, epochs=1)


def test_corrupt_or_foreign_checkpoint_is_bundle_error(tmp_path):
    res = run(tmp_path, cfg(max_steps=2))
    path = res.checkpoint
    with pytest.raises(BundleError, match="not of 'decoder'"):
        load_checkpoint(path, stage="decoder")
    with pytest.raises(BundleError, match="'toy' stage"):
        train(make_model(), toy_data(), cfg(max_steps=4), run_dir=tmp_path, stage="prior", resume="latest",
              progress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="step_000002.pt"):
        load_checkpoint(path)
    with pytest.raises(BundleError, match="truncated"):
        run(tmp_path, cfg(max_steps=4), resume="latest")


def test_corrupt_latest_names_the_previous_checkpoint(tmp_path):
    run(tmp_path, cfg(max_steps=4, checkpoint_every=2))
    latest = latest_checkpoint(tmp_path)
    latest.write_bytes(b"not a checkpoint")
    with pytest.raises(BundleError, match="resume from .*step_000002.pt"):
        run(tmp_path, cfg(max_steps=6), resume="latest")
    resumed = run(tmp_path, cfg(max_steps=6), resume=tmp_path / "checkpoints" / "step_000002.pt")
    assert resumed.start_step == 2 and resumed.step == 6


def test_mixed_precision_switch_in_one_process(tmp_path):
    # bf16 autocast on CPU, then full precision again: accelerate's process-wide state must allow it
    bf16 = run(tmp_path / "bf16", cfg(max_steps=3, mixed_precision="bf16"))
    fp32 = run(tmp_path / "fp32", cfg(max_steps=3))
    assert len(bf16.losses) == len(fp32.losses) == 3
    assert all(torch.isfinite(torch.tensor(bf16.losses)))
    assert bf16.losses != fp32.losses  # bf16 rounding shows in the loss
    assert all(v.dtype == torch.float32 for v in bf16.model.state_dict().values())


MULTI = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_training import make_model, toy_data, cfg
from dalle2_md.training.loop import train
from accelerate import PartialState
res = train(make_model(), toy_data(), cfg(max_steps=6, gradient_accumulation_steps=2, checkpoint_every=3),
            run_dir=Path({run!r}), stage="toy", progress=False)
flat = torch.cat([p.detach().flatten() for p in res.model.parameters()])
rank = PartialState().process_index
out = {{"weights": flat, "losses": res.losses, "step": res.step, "world": PartialState().num_processes}}
torch.save(out, Path({run!r}) / f"rank{{rank}}.pt")
"""


@pytest.mark.slow
def test_same_loop_under_accelerate_launch_two_cpu_processes(tmp_path):
    script = tmp_path / "multi.py"
    run_dir = tmp_path / "run"
    script.write_text(MULTI.format(tests=str(Path(__file__).parent), run=str(run_dir)))
    launcher = Path(sys.executable).parent / "accelerate"
    # `accelerate launch --cpu` starts a single process (accelerate 1.x); the torchrun-based
    # launcher plus ACCELERATE_USE_CPU gives two gloo processes on CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(run_dir / "rank0.pt", weights_only=True)
    r1 = torch.load(run_dir / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 6
    assert torch.equal(r0["weights"], r1["weights"])  # DDP kept both replicas identical
    assert r0["losses"] == r1["losses"]  # losses are reduced across processes
    ckpt = load_checkpoint(latest_checkpoint(run_dir), stage="toy")
    assert ckpt["step"] == 6 and len(ckpt["rng"]) == 2
    assert ckpt["position"] == 6 * 2 * 4 * 2  # steps * accumulation * batch * processes
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["step_000003.pt", "step_000006.pt"]


def test_a_batch_stream_trains_by_steps_only_and_on_step_sees_every_step(tmp_path):
    data = toy_data()

    def stream():
        g = torch.Generator().manual_seed(0)
        while True:
            idx = torch.randint(0, len(data), (4,), generator=g)
            yield data[idx]

    seen = []
    result = train(make_model(), stream(), cfg(max_steps=5, lr_schedule="cosine", lr_floor=0.1), run_dir=None,
                   stage="toy", progress=False, on_step=lambda model, step: seen.append((type(model), step)))
    assert seen == [(ToyRegression, s) for s in range(1, 6)] and result.step == 5
    with pytest.raises(UserError, match="in steps, not epochs"):
        train(make_model(), stream(), cfg(epochs=1), run_dir=tmp_path, stage="toy", progress=False)
    with pytest.raises(UserError, match="cannot be resumed"):
        train(make_model(), stream(), cfg(max_steps=2), run_dir=tmp_path, stage="toy", resume="latest", progress=False)


def test_cosine_schedule_decays_to_its_floor():
    from dalle2_md.training.loop import _lr_lambda

    for floor in (0.0, 0.1):
        factor = _lr_lambda(cfg(max_steps=10, lr_schedule="cosine", lr_floor=floor, warmup_steps=2), 10)
        values = [factor(s) for s in range(12)]
        assert values[:3] == [0.5, 1.0, 1.0] and values[-1] == values[10] == pytest.approx(floor)
        assert all(a >= b for a, b in zip(values[1:], values[2:]))
    with pytest.raises(UserError, match="lr_floor"):
        cfg(max_steps=1, lr_floor=1.5)


def test_without_ema_the_trained_weights_are_sampled_saved_and_resumed(tmp_path):
    first = run(tmp_path, cfg(max_steps=4, ema_decay=None, max_grad_norm=None))
    assert first.ema_model is first.model and load_checkpoint(first.checkpoint, stage="toy")["ema"] is None
    resumed = run(tmp_path, cfg(max_steps=8, ema_decay=None, max_grad_norm=None), resume="latest")
    straight = run(tmp_path / "straight", cfg(max_steps=8, ema_decay=None, max_grad_norm=None))
    assert resumed.start_step == 4
    assert all(torch.equal(a, b) for a, b in zip(weights(resumed.model).values(), weights(straight.model).values()))


def test_max_seconds_ends_the_run_as_its_last_step(tmp_path):
    result = run(tmp_path, cfg(max_steps=1000, max_seconds=1e-6))
    assert result.step == 1 and len(result.losses) == 1
    assert load_checkpoint(result.checkpoint, stage="toy")["step"] == 1  # the final checkpoint is written
    with pytest.raises(UserError, match="max_seconds"):
        cfg(max_steps=1, max_seconds=0)


class NoisyMLP(nn.Module):
    """forward(x, y) -> MSE loss with dropout and input noise, and no Python state for
    torch.compile to guard on."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Dropout(0.1), nn.Linear(16, 1))

    def forward(self, x, y):
        x = x + 0.01 * torch.randn_like(x)
        return nn.functional.mse_loss(self.net(x).squeeze(-1), y)


def _train_noisy_mlp(tmp: Path, **kw):
    torch.manual_seed(7)
    return train(NoisyMLP(), toy_data(), cfg(max_steps=6, **kw), run_dir=tmp, stage="toy", progress=False)


def test_compiled_training_captures_graphs_and_is_the_same_run(tmp_path, monkeypatch):
    # a backend that runs the captured graph as it is: the loop's compiled path without the
    # minutes inductor spends generating code (experiments/bench_memory_format.py times inductor)
    captured = []

    def run_as_captured(graph_module, example_inputs):
        captured.append(graph_module)
        return graph_module.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=run_as_captured))
    torch._dynamo.reset()
    compiled = _train_noisy_mlp(tmp_path / "compiled", compile=True)
    eager = _train_noisy_mlp(tmp_path / "eager")
    assert captured, "torch.compile never captured the training step"
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5)
    for name, value in weights(eager.model).items():
        assert torch.allclose(weights(compiled.model)[name], value, atol=1e-6), name
    # the checkpoint holds the plain module's weights, not the compiled wrapper's names
    assert not any("_orig_mod" in k for k in load_checkpoint(latest_checkpoint(tmp_path / "compiled"))["state_dict"])


def test_a_failed_compilation_trains_on_eagerly_and_says_so(tmp_path, monkeypatch, capsys):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no working C++ compiler")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken_backend))
    torch._dynamo.reset()
    fell_back = _train_noisy_mlp(tmp_path / "fell_back", compile=True)
    eager = _train_noisy_mlp(tmp_path / "eager")
    said = capsys.readouterr()
    assert "torch.compile failed" in said.out + said.err and "training on without it" in said.out + said.err
    assert fell_back.losses == pytest.approx(eager.losses, rel=1e-6)


def test_a_budget_with_decoder_compile_compiles_the_decoders_only():
    from dalle2_md.training.presets import GeneratorBudget

    budget = GeneratorBudget(decoder_compile=True)
    assert budget.decoder_schedule(seed=0).compile
    assert not budget.schedule(budget.prior_train_steps, budget.batch_size, 0).compile
    assert not GeneratorBudget().decoder_schedule(seed=0).compile


def test_the_fused_optimizer_makes_the_per_tensor_loops_update(tmp_path, monkeypatch):
    # the loop builds AdamW fused (one kernel over all weights); the default per-tensor loop must
    # give the same run
    fused = _train_noisy_mlp(tmp_path / "fused")
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, fused=None, **kw: real_adamw(params, **kw))
    looped = _train_noisy_mlp(tmp_path / "looped")
    assert fused.losses == pytest.approx(looped.losses, rel=1e-5)
    for name, value in weights(looped.model).items():
        assert torch.allclose(weights(fused.model)[name], value, atol=1e-6), name
