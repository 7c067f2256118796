"""The accelerate (and torch LR-scheduler) internals behind dalle2_md/models/compat/ still exist on the
installed versions; a failure names the attribute and the version, so an upgrade that moves one is
found here, not as a stage failing deep inside training."""

import importlib

import pytest
import torch

from dalle2_md.models import compat


def _instances() -> dict:
    """Live objects for the attributes that only instances carry."""
    from accelerate import Accelerator

    compat.allow_mixed_precision("no")
    accelerator = Accelerator(mixed_precision="no")
    layer = torch.nn.Linear(2, 1)
    _, optimizer = accelerator.prepare(layer, torch.optim.AdamW(layer.parameters(), lr=0.1))
    return {"accelerate.optimizer.AcceleratedOptimizer (instance)": optimizer,
            "accelerate.Accelerator (instance)": accelerator}


def _owner(where: str, instances: dict):
    if where in instances:
        return instances[where]
    module, name = where.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("where,attribute,why", compat.ACCELERATE_ATTRIBUTES,
                         ids=[f"{w.split()[0]}.{a}" for w, a, _ in compat.ACCELERATE_ATTRIBUTES])
def test_each_accelerate_attribute_exists(where, attribute, why):
    owner = _owner(where, _instances())
    assert hasattr(owner, attribute), (
        f"{where}.{attribute} ({why}) is gone in accelerate {compat.accelerate_version()}; "
        "update the accelerate block of dalle2_md/models/compat/ or pin accelerate below this version.")


def test_unwrap_optimizer_reaches_the_torch_optimizer():
    optimizer = _instances()["accelerate.optimizer.AcceleratedOptimizer (instance)"]
    inner = compat.unwrap_optimizer(optimizer)
    assert isinstance(inner, torch.optim.AdamW), (
        f"AcceleratedOptimizer.optimizer is a {type(inner).__name__}, not the wrapped torch optimizer, in "
        f"accelerate {compat.accelerate_version()}")
    assert compat.unwrap_optimizer(inner) is inner  # a plain optimizer passes through


def test_a_second_accelerator_may_change_mixed_precision():
    from accelerate import Accelerator

    compat.allow_mixed_precision("no")
    Accelerator(mixed_precision="no")
    compat.allow_mixed_precision("bf16")
    try:
        assert Accelerator(mixed_precision="bf16").mixed_precision == "bf16", (
            f"AcceleratorState._reset_state no longer forgets the precision in accelerate "
            f"{compat.accelerate_version()}")
    finally:
        compat.allow_mixed_precision("no")


def test_set_base_lr_moves_the_schedule_and_the_optimizer():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    for attribute in ("base_lrs", "lr_lambdas", "last_epoch"):
        assert hasattr(scheduler, attribute), (
            f"LambdaLR.{attribute} is gone in torch {torch.__version__}; update compat.set_base_lr.")
    compat.set_base_lr(scheduler, optimizer, 0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.05)
