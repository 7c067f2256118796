"""Crash safety and the NaN guard, through the command line.

A prior run is killed with SIGKILL in the middle of training, and again in the middle of writing a
checkpoint (the child pauses inside the atomic write, after the bytes are in the temporary file
and before the rename, and is killed there). Each time the newest checkpoint must load, a resumed
run must continue the step count, at most one checkpoint interval may be lost, and the data set
and earlier outputs must be untouched. A diverging run must stop with a message naming the step,
keep its last good checkpoint, and resume from it with a lower --lr."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dalle2_md.cli.main import cli
from dalle2_md.cli.options import join_variadic
from dalle2_md.training.checkpoints import check_same_formulation, latest_checkpoint, load_checkpoint
from dalle2_md.utils import UserError

TINY_CLIP = ["--clip_dim", "16", "--clip_widths", "8,16", "--clip_dim_image", "32"]
TINY_PRIOR = ["--depth", "1", "--heads", "2", "--dim_head", "8", "--timesteps", "50", "--sample_timesteps", "4"]
EVERY = 3  # checkpoint interval of the killed runs

# The child: the real CLI, plus a line on stdout per finished optimizer step (so the parent knows
# how far training got when it killed it) and, on request, a pause inside the Nth checkpoint write.
CHILD = r'''
import contextlib, os, sys, time
import ema_pytorch
import dalle2_md.training.loop as training

_update = ema_pytorch.EMA.update
def update(self, *args, **kwargs):
    out = _update(self, *args, **kwargs)
    print("STEP", flush=True)
    return out
ema_pytorch.EMA.update = update

pause_at = int(os.environ.get("PAUSE_IN_CHECKPOINT_WRITE", "0"))
_atomic = training.atomic_write
written = []
@contextlib.contextmanager
def paused_atomic_write(path, mode="wb"):
    with _atomic(path, mode) as f:
        yield f
        if str(path).endswith(".pt"):
            written.append(path)
            if len(written) == pause_at:
                f.flush()
                print("WRITING", os.path.basename(str(path)), flush=True)
                time.sleep(600)
training.atomic_write = paused_atomic_write

from dalle2_md.cli.main import main
main(sys.argv[1:])
'''



def invoke(*args):
    return CliRunner().invoke(cli, join_variadic([str(a) for a in args]))


def tree_hash(*roots):
    h = hashlib.sha256()
    for root in roots:
        root = Path(root)
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            h.update(str(p).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dalle2_md.data.synthesize import synthesize_dataset

    root = tmp_path_factory.mktemp("crash")
    synthesize_dataset(root / "data", num_users=3, images_per_user=4, image_size=16, layout="kaggle", progress=False)
    result = invoke("train-clip", "--data_root", root / "data", "--output_dir", root, "--experiment_name", "emb",
                    "--image_size", 16, "--max_steps", 1, "--batch_size", 4, "--no-progress", *TINY_CLIP)
    assert result.exit_code == 0, result.output
    (root / "child.py").write_text(CHILD)
    return root


def prior_args(setup, *extra):
    return ["train-prior", "--data_root", setup / "data", "--output_dir", setup / "runs", "--experiment_name", "prior",
            "--clip_path", setup / "emb" / "clip_final.pt", "--image_size", 16, "--batch_size", 4, "--no-progress",
            "--keep_last", 2, *TINY_PRIOR, *map(str, extra)]


class Child:
    """The training CLI in a subprocess, its stdout lines collected as they come."""

    def __init__(self, setup, args, env=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, str(setup / "child.py"), *map(str, args)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                       daemon=True)
        self.reader.start()

    def wait_for(self, ready, timeout=120.0):
        deadline = time.time() + timeout
        while not ready():
            assert self.proc.poll() is None, "child ended early:\n" + "".join(self.lines[-40:])
            assert time.time() < deadline, "timed out:\n" + "".join(self.lines[-40:])
            time.sleep(0.02)

    def kill(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        return sum(line.strip() == "STEP" for line in self.lines)


def latest_step(run_stage: Path) -> int:
    pointer = run_stage / "checkpoints" / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.is_file() else 0


@pytest.mark.slow
def test_sigkill_mid_training_and_mid_checkpoint_write_then_resume(setup, monkeypatch):
    run = setup / "runs" / "prior"
    stage = run / "prior"
    guarded = tree_hash(setup / "data", setup / "emb")

    # 1. killed in the middle of training, once two checkpoints exist
    child = Child(setup, prior_args(setup, "--max_steps", 300, "--checkpoint_every", EVERY))
    child.wait_for(lambda: latest_step(stage) >= 2 * EVERY)
    done = child.kill()
    saved = latest_step(stage)
    assert saved % EVERY == 0 and saved >= 2 * EVERY
    assert saved <= done <= saved + EVERY  # at most one checkpoint interval lost
    ckpt = load_checkpoint(latest_checkpoint(stage), stage="prior")
    assert ckpt["step"] == saved and ckpt["position"] == saved * 4
    assert not (run / "prior_final.pt").exists()  # nothing looks finished
    assert tree_hash(setup / "data", setup / "emb") == guarded

    # a fresh run must not write over the interrupted one's checkpoints
    files = {p.name: p.read_bytes() for p in (stage / "checkpoints").iterdir()}
    refused = invoke(*prior_args(setup, "--max_steps", 2))
    assert refused.exit_code == 2 and "--resume latest" in refused.output and "--overwrite" in refused.output
    assert {p.name: p.read_bytes() for p in (stage / "checkpoints").iterdir()} == files

    # 2. resumed, then killed inside its second checkpoint write (temporary file written, not renamed)
    child = Child(setup, prior_args(setup, "--max_steps", 300, "--checkpoint_every", EVERY, "--resume", "latest"),
                  env={"PAUSE_IN_CHECKPOINT_WRITE": "2"})
    child.wait_for(lambda: any(line.startswith("WRITING") for line in child.lines))
    done_second = child.kill()
    torn = saved + 2 * EVERY
    assert any(line.strip() == f"WRITING step_{torn:06d}.pt" for line in child.lines)
    assert done_second == 2 * EVERY  # the step count went on from the checkpoint
    assert list((stage / "checkpoints").glob(f".step_{torn:06d}.pt.*.tmp"))  # killed mid-write...
    assert not (stage / "checkpoints" / f"step_{torn:06d}.pt").exists()  # ...so never under its name
    assert latest_step(stage) == saved + EVERY  # the pointer still names the last complete file
    ckpt = load_checkpoint(latest_checkpoint(stage), stage="prior")
    assert ckpt["step"] == saved + EVERY
    assert tree_hash(setup / "data", setup / "emb") == guarded

    # 3. resumed to the end: continues from the last good checkpoint and finishes
    import ema_pytorch

    steps = []
    real_update = ema_pytorch.EMA.update
    monkeypatch.setattr(ema_pytorch.EMA, "update", lambda self, *a, **k: (steps.append(1), real_update(self, *a, **k)))
    target = saved + EVERY + 4
    result = invoke(*prior_args(setup, "--max_steps", target, "--checkpoint_every", EVERY, "--resume", "latest"))
    assert result.exit_code == 0, result.output
    assert len(steps) == 4  # only the steps after the checkpoint were trained again
    assert latest_step(stage) == target and (run / "prior_final.pt").is_file()
    assert load_checkpoint(latest_checkpoint(stage))["position"] == target * 4
    assert tree_hash(setup / "data", setup / "emb") == guarded

    # 4. a finished run is never overwritten without --overwrite; with it, the old checkpoints go
    final = (run / "prior_final.pt").read_bytes()
    refused = invoke(*prior_args(setup, "--max_steps", 2))
    assert refused.exit_code == 2 and "prior_final.pt already exists" in refused.output
    assert (run / "prior_final.pt").read_bytes() == final
    again = invoke(*prior_args(setup, "--max_steps", 2, "--checkpoint_every", 1, "--overwrite"))
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (stage / "checkpoints").glob("step_*.pt")) == ["step_000001.pt", "step_000002.pt"]
    assert tree_hash(setup / "data", setup / "emb") == guarded


@pytest.mark.parametrize("lr, what, step", [("1e30", "the loss", 2), ("1e38", "the weight update", 1)])
def test_absurd_lr_stops_with_the_step_and_the_usual_fixes(setup, lr, what, step):
    name = f"lr{lr}"
    result = invoke(*prior_args(setup, "--max_steps", 5, "--lr", lr, "--experiment_name", name,
                                "--checkpoint_every", 1, "--max_grad_norm", 0))
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith(f"Error: training diverged at step {step}: {what} is not finite")
    assert "--lr" in message and "--mixed-precision no" in message and "--max-grad-norm" in message
    run = setup / "runs" / name
    assert not (run / "prior_final.pt").exists()
    kept = sorted(p.name for p in (run / "prior" / "checkpoints").glob("step_*.pt"))
    assert kept == [f"step_{s:06d}.pt" for s in range(1, step)]  # nothing saved from the bad step on
    if not kept:
        assert "no checkpoint was written before it" in message


def test_nan_loss_stops_at_its_step_keeps_the_last_checkpoint_and_resumes_with_lower_lr(setup, monkeypatch):
    from dalle2_md.models.prior import UserConditionedDiffusionPrior

    calls = []
    real_forward = UserConditionedDiffusionPrior.forward

    def poisoned(self, *args, **kwargs):  # the 4th batch yields a NaN loss, as a bad batch or overflow would
        calls.append(1)
        loss = real_forward(self, *args, **kwargs)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(UserConditionedDiffusionPrior, "forward", poisoned)
    args = ["--experiment_name", "nan", "--checkpoint_every", 1, "--max_steps", 6]
    result = invoke(*prior_args(setup, *args))
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    stage = setup / "runs" / "nan" / "prior"
    assert message.startswith("Error: training diverged at step 4: the loss is not finite")
    assert f"the last good checkpoint is {stage / 'checkpoints' / 'step_000003.pt'}" in message
    assert "lower --lr" in message and "--mixed-precision no" in message and "--max-grad-norm 1.0" in message
    assert not (setup / "runs" / "nan" / "prior_final.pt").exists()
    assert latest_step(stage) == 3
    good = load_checkpoint(latest_checkpoint(stage), stage="prior")
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values())

    monkeypatch.undo()
    resumed = invoke(*prior_args(setup, *args, "--resume", "latest", "--lr", "1e-4"))
    assert resumed.exit_code == 0, resumed.output
    last = load_checkpoint(latest_checkpoint(stage))
    assert last["step"] == 6 and last["position"] == 6 * 4
    # the lower --lr reached the resumed optimizer (it is not taken from the checkpoint)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert (setup / "runs" / "nan" / "prior_final.pt").is_file()


@pytest.mark.parametrize("old, asked, flag", [
    ({"prediction": "v", "zero_terminal_snr": True, "loss_weighting": "min_snr"},
     {"prediction": "eps", "zero_terminal_snr": False, "loss_weighting": "p2"},
     "--prediction v --zero_terminal_snr --loss_weighting min_snr"),
    ({}, {"prediction": "v", "zero_terminal_snr": False, "loss_weighting": "p2"}, "--prediction eps"),  # pre-field decoder
    ({"residual": True, "prediction": "v"}, {"residual": False, "prediction": "eps"}, "--upsampler_residual"),
    ({"residual": False, "prediction": "eps"}, {"residual": True, "prediction": "v"}, "--no_upsampler_residual"),
])
def test_resume_under_another_formulation_names_the_flags_that_resume_it(old, asked, flag):
    ckpt = {"_path": "run/step_000004.pt", "config": old}
    with pytest.raises(UserError, match="step_000004.pt") as err:
        check_same_formulation(ckpt, asked)
    assert f"resume with {flag}," in str(err.value)
    check_same_formulation({"_path": "x", "config": asked}, asked)  # the same formulation resumes
