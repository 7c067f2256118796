"""accelerate's process-wide settings and wrapped optimizers, and torch schedulers, as the
training loop needs to see through them."""

from __future__ import annotations



# --- accelerate ---
# accelerate keeps its settings in process-wide singletons and wraps optimizers; training.py needs
# to see through both. Every attribute used below is listed in ACCELERATE_ATTRIBUTES, which
# tests/models/test_compat_accelerate.py checks against the installed version.

ACCELERATE_ATTRIBUTES = (
    # (where, attribute, why)
    ("accelerate.state.AcceleratorState", "_shared_state", "the process-wide settings dict"),
    ("accelerate.state.AcceleratorState", "_reset_state", "forgets those settings"),
    ("accelerate.optimizer.AcceleratedOptimizer (instance)", "optimizer", "the wrapped torch optimizer"),
    ("accelerate.Accelerator (instance)", "scaler", "the fp16 GradScaler, or None"),
)


def accelerate_version() -> str:
    """The installed accelerate version, for messages."""
    import accelerate

    return getattr(accelerate, "__version__", "unknown")


def allow_mixed_precision(mixed_precision: str) -> None:
    """Let the next `Accelerator(mixed_precision=...)` in this process use `mixed_precision`.

    accelerate stores its precision in the `AcceleratorState` singleton and refuses a second
    Accelerator with another precision. A single-process session that trains two stages with
    different `--mixed-precision` (the demo, the tests) therefore forgets the old settings first;
    under `accelerate launch` (several processes) the launcher's settings are kept.

    Args:
        mixed_precision: "no", "fp16" or "bf16".
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and state.get("num_processes", 1) == 1:
        AcceleratorState._reset_state()


def unwrap_optimizer(optimizer):
    """The torch optimizer inside an `accelerator.prepare`d optimizer (itself if not wrapped).

    An LR scheduler must step the inner optimizer: accelerate's own scheduler wrapper steps once
    per process, which would stretch a warmup by the number of processes.
    """
    return getattr(optimizer, "optimizer", optimizer)


def grad_scaler(accelerator):
    """The accelerator's fp16 `GradScaler` (None without fp16), whose state goes into checkpoints."""
    return accelerator.scaler


def set_base_lr(scheduler, optimizer, lr: float) -> None:
    """Make a `LambdaLR` (and its optimizer) continue with base learning rate `lr`.

    Used on resume with a new `--lr` (the usual cure for a diverged run): the scheduler restored
    from the checkpoint still holds the old base rate in `base_lrs`, and each parameter group its
    `initial_lr`; both are torch `LRScheduler` attributes without a public setter.

    Args:
        scheduler: a `torch.optim.lr_scheduler.LambdaLR` over `optimizer`.
        optimizer: the optimizer (wrapped by accelerate or not).
        lr: the new base learning rate; the current factor of the schedule still applies.
    """
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in unwrap_optimizer(optimizer).param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor

