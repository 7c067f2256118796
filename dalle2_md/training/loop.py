"""The one training loop every stage (embedding, prior, decoder, VQGAN, recogniser) runs through.

A stage hands in a module whose `forward(*batch)` returns a scalar loss and a dataset whose items
are tuples of tensors (or, like the recogniser, a stream of ready batches); this module owns
everything around that: optimizer, warmup schedule, EMA, gradient accumulation and mixed
precision (through accelerate), TensorBoard logging, sample grids, the NaN guard, and
plain-typed checkpoints that resume exactly.

Data order is a stream: epoch e visits the dataset in the permutation drawn from (seed, e), and
each optimizer micro-step takes the next `batch_size * num_processes` positions of that stream
(rank r takes its own slice). The stream position alone therefore says where training stands,
so a resumed run continues mid-epoch with the very same batches, on one process or several.
Checkpoints: `training.checkpoints`; data order: `training.batches`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from dalle2_md.models.bundle import FORMAT, FORMAT_VERSION
from dalle2_md.models.compat import allow_mixed_precision, grad_scaler, set_base_lr, unwrap_optimizer
from dalle2_md.data.display import image_grid, write_png
from dalle2_md.training.batches import StreamBatchSampler
from dalle2_md.training.checkpoints import (LATEST, _list_checkpoints, _load_weights, _read_resume, _rng_state,
                                            _set_rng_state, check_same_formulation, checkpoint_dir, kept_global_rng,
                                            latest_checkpoint)
from dalle2_md.utils import UserError, atomic_write, checked_fields, exists, package_versions, say, seed_everything

_MIXED = ("no", "fp16", "bf16")
_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one stage. Exactly one of `max_steps` / `epochs` is set; `epochs` becomes a
    step count from the dataset size (one step = one optimizer update of
    `batch_size * num_processes * gradient_accumulation_steps` samples)."""

    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 16  # per process and per micro-step
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine (decays to lr_floor * lr at the last step), after warmup
    lr_floor: float = 0.0  # the cosine schedule's final learning rate, as a fraction of lr
    max_grad_norm: float | None = 1.0
    ema_decay: float | None = 0.995  # None: no EMA copy (the result's ema_model is the trained model)
    ema_update_every: int = 1
    ema_start_step: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16
    # torch.compile the forward and backward (inductor). The first step pays the compilation
    # (minutes on a CPU), so it pays only for long runs (experiments/bench_memory_format.py); a
    # failed compilation trains on without it, with one line saying so
    compile: bool = False
    gradient_accumulation_steps: int = 1
    seed: int = 0
    log_every: int = 10
    sample_every: int = 0  # 0 = never (a final grid is still drawn when sample_fn is given)
    checkpoint_every: int = 0  # 0 = only at the end
    keep_last: int = 3  # 0 = keep every checkpoint
    num_workers: int = 0
    # a wall-clock budget (one process): stop after the first step that ends past it, as if it
    # were the last (equal-compute comparisons; the schedule still spans max_steps)
    max_seconds: float | None = None

    def __post_init__(self):
        if (self.max_steps is None) == (self.epochs is None):
            raise UserError("give exactly one of --max-steps or --epochs to set how long to train.")
        for name in ("max_steps", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise UserError("--batch-size and --gradient-accumulation-steps must be at least 1.")
        if self.mixed_precision not in _MIXED:
            raise UserError(f"--mixed-precision must be one of {', '.join(_MIXED)} (got {self.mixed_precision!r}).")
        if self.lr_schedule not in _SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(_SCHEDULES)} (got {self.lr_schedule!r}).")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay <= 1.0:
            raise UserError(f"--ema-decay must lie in [0, 1] (got {self.ema_decay}).")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise UserError(f"max_seconds must be positive (got {self.max_seconds}).")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise UserError(f"lr_floor must lie in [0, 1] (got {self.lr_floor}).")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number (got {self.lr}).")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, what: str = "training config") -> "TrainConfig":
        """Rebuild from `to_dict()` output; unknown keys are refused (`utils.checked_fields`)."""
        return cls(**checked_fields(cls, d, what=what))


@dataclass
class TrainResult:
    model: nn.Module  # unwrapped raw weights
    ema_model: nn.Module  # the EMA copy (the trained model when ema_decay is None): use this one to sample
    step: int  # optimizer steps done in total (including those before a resume)
    losses: list[float]  # one per optimizer step of this call (mean over micro-steps and processes)
    seconds: float
    start_step: int = 0  # step this call resumed from (0 for a fresh run)
    checkpoint: Path | None = None  # the last checkpoint written (None on non-main processes)
    samples: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- data order


# ----------------------------------------------------------------------------- RNG state as plain types


# ----------------------------------------------------------------------------- checkpoints


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _nonfinite_error(step: int, what: str, last: Path | None) -> UserError:
    kept = f"the last good checkpoint is {last}" if exists(last) else "no checkpoint was written before it"
    return UserError(
        f"training diverged at step {step}: {what} is not finite (NaN/inf). Stopped without saving "
        f"these weights; {kept}. Try a lower --lr, full precision (--mixed-precision no), and gradient "
        "clipping (--max-grad-norm 1.0), then resume or restart."
    )


# ----------------------------------------------------------------------------- schedule


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup, schedule, floor = config.warmup_steps, config.lr_schedule, config.lr_floor

    def factor(step: int) -> float:
        # LambdaLR counts finished steps; step s runs with factor(s), so the first step is not at lr 0
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            span = max(1, total_steps - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))
        return 1.0

    return factor


# ----------------------------------------------------------------------------- the loop


def _call(model: nn.Module, batch) -> Tensor:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


class _LossShapeError(TypeError):
    """The model's forward returned no scalar: the model's fault, not the compiler's."""


def _check_scalar(loss: Tensor, stage: str) -> None:
    if loss.ndim != 0:
        raise _LossShapeError(f"the {stage} model's forward must return a scalar loss, got shape {tuple(loss.shape)}")


def _finite_weights(model: nn.Module) -> bool:
    params = [p.detach() for p in model.parameters() if p.is_floating_point()]
    return not params or bool(torch.isfinite(torch.stack([p.sum() for p in params])).all())


def _make_accelerator(config: TrainConfig, run_dir: Path):
    from accelerate import Accelerator

    # a second stage trained in the same single-process session may use another precision
    allow_mixed_precision(config.mixed_precision)
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with="tensorboard",
        project_dir=str(run_dir),
    )


def train(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    config: TrainConfig,
    *,
    run_dir: str | Path | None,
    stage: str,
    resume: str | Path | None = None,
    sample_fn: Callable[[nn.Module, int], Tensor | None] | None = None,
    on_step: Callable[[nn.Module, int], None] | None = None,
    model_config: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` on `dataset` until `config.max_steps` (or `config.epochs`) is reached.

    Runs unchanged on one device or under `accelerate launch --num_processes N`.

    Args:
        model: a module whose `forward(*batch)` returns a scalar loss; `batch` is the dataset item
            tuple collated over the batch (a dict item is passed as keywords).
        dataset: map-style dataset with `__len__`, or an iterator of ready batches: a stream that
            owns its order and augmentation (the recogniser's, drawn with replacement from its own
            generator). A stream needs `config.max_steps` and cannot be resumed.
        config: the training settings.
        run_dir: folder for `checkpoints/`, `tensorboard/` and `samples/`; None trains in memory
            (the same loop, writing into a temporary folder that is deleted afterwards; the result
            then names no checkpoint or sample files).
        stage: stage name stored in checkpoints and checked on resume ("prior", "decoder", ...).
        resume: None for a fresh run, "latest" to continue from the newest checkpoint in
            `run_dir` (fresh if there is none), or the path of a checkpoint.
        sample_fn: called as `sample_fn(ema_model, step)` on the main process every
            `config.sample_every` steps and at the end, under a fixed seed and `no_grad`; returns
            images in [0, 1] shaped (B, C, H, W) (or None) for a TensorBoard grid and a PNG.
        on_step: called as `on_step(model, step)` on the main process after every optimizer step,
            with the raw (unwrapped) model, e.g. to keep the weights that validate best.
        model_config: the model's constructor arguments, stored in every checkpoint.
        progress: show a tqdm bar on the main process.
    """
    kw = dict(stage=stage, sample_fn=sample_fn, on_step=on_step, model_config=model_config, progress=progress)
    if run_dir is None:
        return _train_in_memory(model, dataset, config, resume=resume, **kw)
    started = time.time()
    trainer = _Trainer(dataset, config, run_dir=Path(run_dir), **kw)
    if trainer.n is None and exists(resume):
        raise UserError(f"the {stage} stage draws its own batches; it trains in one go and cannot be resumed.")
    ckpt = _read_resume(resume, trainer.run_dir, stage, config, trainer.accelerator)
    check_same_formulation(ckpt, model_config)
    trainer.build(model, ckpt)
    batches = trainer.batches()
    if ckpt is not None:
        # after the loader exists: building it must not shift the restored RNG
        trainer.restore_rng(ckpt)
    trainer.start_logging(ckpt)
    trainer.run(batches)
    return trainer.result(seconds=time.time() - started)


def _train_in_memory(model, dataset, config: TrainConfig, *, resume, **kw) -> TrainResult:
    import tempfile

    if exists(resume):
        raise UserError("resuming needs the run folder that holds the checkpoints; give run_dir.")
    with tempfile.TemporaryDirectory(prefix=f"dalle2md-{kw['stage']}-") as tmp:
        result = train(model, dataset, config, run_dir=tmp, **kw)
    return replace(result, checkpoint=None, samples=[])


class _Trainer:
    """One `train` call, in the order it runs: build (and restore), batches, logging, then `run`,
    whose loop is a micro-step (forward, backward, optimizer) and, after each optimizer step,
    `after_step` (schedule, EMA, logging, sample grid, checkpoint)."""

    def __init__(self, dataset, config: TrainConfig, *, run_dir: Path, stage: str, sample_fn, on_step,
                 model_config, progress: bool):
        self.dataset, self.config, self.run_dir, self.stage = dataset, config, run_dir, stage
        self.sample_fn, self.on_step, self.model_config, self.progress = sample_fn, on_step, model_config, progress
        self.accelerator = _make_accelerator(config, run_dir)
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.n = None if _is_stream(dataset) else len(dataset)  # None: a stream of ready batches
        if self.n is None and not exists(config.max_steps):
            raise UserError(f"the {stage} stage draws its own batches, so its length is given in steps, not epochs.")
        self.per_step = config.batch_size * self.world * config.gradient_accumulation_steps
        self.total_steps = (config.max_steps if exists(config.max_steps)
                            else math.ceil(config.epochs * self.n / self.per_step))
        if exists(config.max_seconds) and self.world > 1:
            raise UserError("max_seconds stops one process on its own clock; train on one process to use it.")
        self.step = self.position = self.start_step = 0
        self.started, self.out_of_time = time.time(), False
        self.losses: list[float] = []
        self.samples: list[Path] = []
        self.written: Path | None = None  # the last checkpoint this call wrote
        self.last_ckpt: Path | None = None  # the last good checkpoint of the run, for error messages

    # ---- build and restore

    def build(self, model: nn.Module, ckpt: dict | None) -> None:
        """Seed, load the checkpoint's weights, wrap model + optimizer for accelerate, make the
        schedule and the EMA copy, then restore their state from the checkpoint."""
        from ema_pytorch import EMA

        config = self.config
        seed_everything(config.seed + self.rank)
        if ckpt is not None:
            _load_weights(model, ckpt)
        model.train()
        # the fused kernel: one pass over all weights instead of a loop of small ops per tensor
        # (experiments/bench_memory_format.py; the same update: tests/training/test_training.py)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      fused=all(p.is_floating_point() for p in model.parameters()))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        # the compiled wrapper shares the weights; checkpoints, EMA and clipping use self.model
        self.forward_model = torch.compile(self.model) if config.compile else self.model
        self.compiling = config.compile  # until the first compiled step has run forward and backward
        # not prepared: accelerate's scheduler wrapper steps once per process, which would stretch warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(unwrap_optimizer(self.optimizer),
                                                           _lr_lambda(config, self.total_steps))
        self.ema = None
        if exists(config.ema_decay):
            self.ema = EMA(self.unwrapped, beta=config.ema_decay, update_every=config.ema_update_every,
                           update_after_step=config.ema_start_step, include_online_model=False)
            self.ema.ema_model.eval()
        if ckpt is not None:
            self._restore(ckpt)
        self.start_step = self.step

    def _restore(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if exists(self.ema) and exists(ckpt["ema"]):
            self.ema.load_state_dict(ckpt["ema"])
        scaler = grad_scaler(self.accelerator)
        if exists(ckpt.get("scaler")) and exists(scaler):
            scaler.load_state_dict(ckpt["scaler"])
        self.step, self.position = int(ckpt["step"]), int(ckpt["position"])
        if ckpt["train_config"].get("lr") != self.config.lr:
            # a lower --lr is the usual cure for a diverged run, so resuming must apply it
            set_base_lr(self.scheduler, self.optimizer, self.config.lr)

    def batches(self):
        """The endless batch iterator, starting at the restored stream position."""
        config = self.config
        if self.n is None:
            return self.dataset
        sampler = StreamBatchSampler(self.n, batch_size=config.batch_size, num_processes=self.world,
                                     rank=self.rank, seed=config.seed, position=self.position)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=config.num_workers,
            pin_memory=self.accelerator.device.type == "cuda",
            # own generator: creating the iterator must not draw from the global RNG that we restore
            generator=torch.Generator().manual_seed(config.seed + self.position),
        )
        return iter(loader)

    def restore_rng(self, ckpt: dict) -> None:
        states = ckpt.get("rng") or []
        if len(states) == self.world:
            _set_rng_state(states[self.rank])
        else:
            say(f"checkpoint has RNG state for {len(states)} processes, this run has "
                f"{self.world}; random draws will differ from an uninterrupted run.")

    def start_logging(self, ckpt: dict | None) -> None:
        """TensorBoard (the config as text on a fresh run) and the running loss window."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.init_trackers("tensorboard")
        self.writer = self.accelerator.get_tracker("tensorboard", unwrap=True) if self.main else None
        if self.main and self.start_step == 0:
            described = json.dumps({"stage": self.stage, "train": self.config.to_dict(),
                                    "model": self.model_config}, indent=2)
            self.writer.add_text("config", f"```\n{described}\n```", 0)
        self.last_ckpt = ckpt["_path"] if ckpt is not None else latest_checkpoint(self.run_dir)
        self.window: list[float] = []
        self.window_start, self.window_samples = time.time(), 0
        self.acc_loss = torch.zeros((), device=self.accelerator.device)

    # ---- the loop

    def run(self, batches) -> None:
        from tqdm.auto import tqdm

        accelerator, config = self.accelerator, self.config
        # no clipping still logs the norm: an infinite threshold measures without changing anything
        clip = float("inf") if config.max_grad_norm is None else config.max_grad_norm
        self.bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.main),
                        desc=self.stage, dynamic_ncols=True)
        try:
            while self.step < self.total_steps and not self.out_of_time:
                batch = _to_device(next(batches), accelerator.device)
                self.position += config.batch_size * self.world
                done = self._micro_step(batch, clip)
                if done is not None:
                    self._after_step(*done)
        finally:
            self.bar.close()
            accelerator.end_training()

    def _micro_step(self, batch, clip: float) -> tuple[float, Tensor | None] | None:
        """Forward, backward and (on the last micro-step of an accumulation) the optimizer step;
        returns (loss of the optimizer step, gradient norm) then, else None."""
        accelerator, result = self.accelerator, None
        with accelerator.accumulate(self.model):
            loss = self._forward_backward(batch)
            self.acc_loss += loss.detach().float() / self.config.gradient_accumulation_steps
            if accelerator.sync_gradients:
                # one collective per optimizer step; every process sees the same value, so all
                # stop together on NaN instead of one hanging in the next all-reduce
                step_loss = accelerator.reduce(self.acc_loss, reduction="mean").item()
                self.acc_loss.zero_()
                if not math.isfinite(step_loss):
                    raise _nonfinite_error(self.step + 1, "the loss", self.last_ckpt)
                # without clipping the norm is only measured for the steps that log it
                measure = clip != float("inf") or self._logs_at(self.step + 1)
                result = step_loss, accelerator.clip_grad_norm_(self.unwrapped.parameters(), clip) if measure else None
            try:
                self.optimizer.step()
            except RuntimeError as e:
                # an absurd --lr overflows inside AdamW before the loss can turn NaN
                if "overflow" not in str(e):
                    raise
                raise _nonfinite_error(self.step + 1, "the weight update", self.last_ckpt) from None
            self.optimizer.zero_grad(set_to_none=True)
        return result

    def _forward_backward(self, batch) -> Tensor:
        """The loss of one micro-batch, its gradients accumulated. The first compiled step may fail
        to compile (no C++ compiler, an op inductor cannot lower): then the step runs again eagerly
        and so does the rest of the run."""
        try:
            loss = _call(self.forward_model, batch)
            _check_scalar(loss, self.stage)
            self.accelerator.backward(loss)
        except Exception as e:
            if not self.compiling or isinstance(e, (UserError, _LossShapeError)):
                raise
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            say(f"{self.stage}: torch.compile failed ({type(e).__name__}: {first_line}); training on without it")
            self.forward_model, self.compiling = self.model, False
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(batch)
        self.compiling = False
        return loss

    def _after_step(self, step_loss: float, grad_norm: Tensor | None) -> None:
        config, step = self.config, self.step + 1
        self.scheduler.step()
        if exists(self.ema):
            self.ema.update()
        self.step = step
        self.losses.append(step_loss)
        self.window.append(step_loss)
        self.window_samples += self.per_step
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{step_loss:.4g}", refresh=False)
        self.out_of_time = exists(config.max_seconds) and time.time() - self.started >= config.max_seconds
        last = step == self.total_steps or self.out_of_time
        if exists(self.on_step) and self.main:
            self.on_step(self.unwrapped, step)
        if self._logs_at(step):
            self._log(grad_norm)
        if exists(self.sample_fn) and self.main and ((config.sample_every and step % config.sample_every == 0)
                                                      or last):
            out = _sample(self.sample_fn, self.sampled_model, step, config.seed, self.writer, self.run_dir)
            if exists(out):
                self.samples.append(out)
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or last:
            # the fused AdamW writes inf on overflow instead of raising: a step whose update did
            # that is stopped here, before a checkpoint holds it (any earlier one would already
            # have stopped the run through the next step's loss)
            if not _finite_weights(self.unwrapped):
                raise _nonfinite_error(step, "the weight update", self.last_ckpt)
            if (path := self._save()) is not None:
                self.last_ckpt = path
                if config.keep_last:
                    _prune(self.run_dir, config.keep_last)
            self.accelerator.wait_for_everyone()

    def _logs_at(self, step: int) -> bool:
        return step % max(1, self.config.log_every) == 0 or step == self.total_steps or self.out_of_time

    def _log(self, grad_norm: Tensor | None) -> None:
        seconds = max(time.time() - self.window_start, 1e-9)
        self.accelerator.log({
            "loss": sum(self.window) / len(self.window),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if exists(grad_norm) else float("nan"),
            "samples_per_s": self.window_samples / seconds,
            "epoch": self.position / self.n if exists(self.n) else float("nan"),
        }, step=self.step)
        self.window, self.window_start, self.window_samples = [], time.time(), 0

    def _save(self) -> Path | None:
        if not _all_finite(self.unwrapped):
            raise _nonfinite_error(self.step, "a model weight", self.last_ckpt)
        rng = _gather_rng(self.accelerator)
        if not self.main:
            return None
        self.written = _write_checkpoint(
            self.run_dir, stage=self.stage, step=self.step, position=self.position, n=self.n,
            unwrapped=self.unwrapped, ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=grad_scaler(self.accelerator), rng=rng, config=self.config, model_config=self.model_config,
        )
        return self.written

    @property
    def sampled_model(self) -> nn.Module:
        """The weights samples and results use: the EMA copy, or the trained model without one."""
        return self.ema.ema_model if exists(self.ema) else self.unwrapped

    def result(self, *, seconds: float) -> TrainResult:
        written = self.written
        if self.step == self.start_step and self.step > 0 and self.main and written is None:
            # resumed at or past the end: nothing to do, the checkpoint we came from is the last one
            written = self.last_ckpt
        return TrainResult(model=self.unwrapped, ema_model=self.sampled_model, step=self.step, losses=self.losses,
                           seconds=seconds, start_step=self.start_step, checkpoint=written, samples=self.samples)


def _is_stream(dataset) -> bool:
    return isinstance(dataset, Iterator) and not isinstance(dataset, torch.utils.data.Dataset)


def _to_device(batch, device):
    from accelerate.utils import send_to_device

    return send_to_device(batch, device, non_blocking=device.type == "cuda")


def _gather_rng(accelerator) -> list[dict]:
    if accelerator.num_processes == 1:
        return [_rng_state()]
    from accelerate.utils import gather_object

    return gather_object([_rng_state()])


def _sample(sample_fn, ema_model: nn.Module, step: int, seed: int, writer, run_dir: Path) -> Path | None:
    # fixed seed: grids from different steps show the same noise, and sampling never shifts the
    # training RNG (so sample_every does not change the training run)
    with kept_global_rng(), torch.no_grad():
        seed_everything(seed)
        images = sample_fn(ema_model, step)
    if images is None:
        return None
    if images.ndim == 3:
        images = images[:, None]  # (B, H, W) -> (B, 1, H, W)
    # grey, square-ish, and a lone picture without a border (what torchvision's make_grid drew)
    grid = image_grid(images, nrow=max(1, math.ceil(math.sqrt(len(images)))), colormap="none",
                      padding=0 if len(images) == 1 else 2)
    writer.add_image("samples", grid, step, dataformats="HWC")
    return write_png(grid, run_dir / "samples" / f"step_{step:06d}.png")


def _write_checkpoint(run_dir: Path, *, stage, step, position, n, unwrapped, ema, optimizer, scheduler, scaler,
                      rng, config: TrainConfig, model_config) -> Path:
    def cpu(state: dict) -> dict:
        return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "checkpoint",
        "stage": stage,
        "config": json.loads(json.dumps(model_config or {})),
        "state_dict": cpu(unwrapped.state_dict()),
        "ema": cpu(ema.state_dict()) if exists(ema) else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if exists(scaler) else None,
        "step": step,
        "position": position,
        "epoch": position // n if exists(n) else None,
        "rng": rng,
        "train_config": config.to_dict(),
        "versions": package_versions(),
        "label_map": None,
        "meta": {},
    }
    folder = checkpoint_dir(run_dir)
    path = folder / f"step_{step:06d}.pt"
    with atomic_write(path) as f:
        torch.save(payload, f)
    # the pointer moves only once the file it names is complete
    with atomic_write(folder / LATEST, "w") as f:
        json.dump({"file": path.name, "step": step, "stage": stage}, f)
    return path


def _prune(run_dir: Path, keep_last: int) -> None:
    found = _list_checkpoints(run_dir)
    latest = latest_checkpoint(run_dir)
    for _, path in found[:-keep_last]:
        if path != latest:
            path.unlink(missing_ok=True)


