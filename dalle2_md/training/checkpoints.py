"""Training checkpoints: where a run keeps them, finding the latest, loading one safely (plain
types, `weights_only=True`) and the RNG state saved in each, so a resumed run continues the same
stream.

Checkpoint layout (`run_dir/checkpoints/step_000100.pt`, read with `weights_only=True`):

    {"format": "dalle2-md", "format_version": 1, "kind": "checkpoint", "stage": "decoder",
     "config": {...model constructor arguments (model_config)...}, "state_dict": {...},
     "ema": {...}, "optimizer": {...}, "scheduler": {...}, "scaler": {...} | None,
     "step": 100, "position": 1600, "epoch": 3, "rng": [{...per process...}],
     "train_config": {...TrainConfig...}, "versions": {...}, "label_map": None, "meta": {}}

The bundle header keys mean `bundle.load_bundle(path, kind="checkpoint")` also reads these files
(`config` + `state_dict` are the raw, non-EMA weights).
"""

from __future__ import annotations

import json
import random
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dalle2_md.models.bundle import load_bundle
from dalle2_md.models.schedules import formulation_fields
from dalle2_md.utils import BundleError, UserError, exists, say

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
_CKPT_NAME = re.compile(r"^step_(\d+)\.pt$")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if exists(state.get("cuda")) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextmanager
def kept_global_rng():
    """Run a block without changing the global torch / numpy / Python (and CUDA) RNG states."""
    saved = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(saved)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def _list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run: the one `checkpoints/latest.json` names, or, if that
    pointer is missing or names a file that is gone, the highest-numbered `step_*.pt`.

    Args:
        run_dir: the folder `train` wrote into.
    """
    pointer = checkpoint_dir(run_dir) / LATEST
    if pointer.is_file():
        try:
            target = checkpoint_dir(run_dir) / json.loads(pointer.read_text())["file"]
            if target.is_file():
                return target
        except (ValueError, KeyError, TypeError):
            pass
    found = _list_checkpoints(run_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path, *, stage: str | None = None) -> dict:
    """Read a training checkpoint with `weights_only=True` (nothing in it can run code).

    Args:
        path: a `step_*.pt` file written by `train`.
        stage: if given, the stage the checkpoint must belong to.

    Returns the checkpoint dict (layout in this module's docstring). Raises `BundleError` for a
    missing, truncated, foreign or wrong-stage file.
    """
    path = Path(path)
    ckpt = load_bundle(path, kind="checkpoint")
    needed = ("stage", "step", "position", "ema", "optimizer", "scheduler", "train_config")
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise BundleError(f"{path}: is not a complete training checkpoint (no {', '.join(missing)}); "
                          "resume from another checkpoint or start a new run.")
    if exists(stage) and ckpt["stage"] != stage:
        raise BundleError(f"{path}: is a checkpoint of the {ckpt['stage']!r} stage, not of {stage!r}; "
                          "give a checkpoint from this stage's run folder.")
    return ckpt


def _resolve_resume(resume: str | Path, run_dir: Path) -> Path | None:
    if str(resume) != "latest":
        return Path(resume)
    return latest_checkpoint(run_dir)


def _read_resume(resume, run_dir: Path, stage: str, config, accelerator) -> dict | None:
    """The checkpoint to continue from (None for a fresh run), read before anything is built so a
    bad file fails fast; `ckpt["_path"]` names it."""
    if not exists(resume):
        if accelerator.is_main_process and _list_checkpoints(run_dir):
            warnings.warn(f"{checkpoint_dir(run_dir)} already holds checkpoints; this fresh run will overwrite "
                          "them step by step (resume='latest' continues the old run instead).", stacklevel=3)
        return None
    path = _resolve_resume(resume, run_dir)
    if path is None:
        say(f"no checkpoint in {checkpoint_dir(run_dir)}; starting a new run.")
        return None
    try:
        ckpt = load_checkpoint(path, stage=stage)
    except BundleError as e:
        # a damaged newest checkpoint is reported, not skipped: silently going back in
        # time would hide lost steps; the user picks the older file explicitly
        older = [p for _, p in _list_checkpoints(run_dir) if p != path]
        if str(resume) != "latest" or not older:
            raise
        raise BundleError(f"{e} The newest checkpoint cannot be used; to continue from the one "
                          f"before it, resume from {older[-1]}.") from None
    ckpt["_path"] = path
    _warn_config_change(ckpt["train_config"], config, path, stacklevel=4)
    return ckpt


# model fields that leave the weights loadable but change what they mean, and the values a
# checkpoint written before a field existed was trained with (eps + P2, the first decoders')
FORMULATION_LEGACY = formulation_fields("eps")


def check_same_formulation(ckpt: dict | None, model_config: dict | None) -> None:
    """UserError when a run would resume weights trained under another diffusion formulation
    (e.g. an eps decoder resumed after the default became v): they would load and silently
    train towards another target."""
    if ckpt is None or not model_config:
        return
    old = ckpt.get("config") or {}
    changed = {k: old.get(k, legacy) for k, legacy in FORMULATION_LEGACY.items()
               if k in model_config and old.get(k, legacy) != model_config[k]}
    if changed:
        if "residual" in model_config:  # an upsampler: one CLI flag sets its residual mode and prediction
            flags = "--upsampler_residual" if old.get("residual", True) else "--no_upsampler_residual"
        else:
            flags = " ".join(f"--{k} {v}" if not isinstance(v, bool) else f"--{'' if v else 'no_'}{k}"
                             for k, v in changed.items())
        raise UserError(f"{ckpt['_path']} was trained with {flags}, not what this run asks for; resume with "
                        f"{flags}, or start a new run (without --resume).")


def _load_weights(model: nn.Module, ckpt: dict) -> None:
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise BundleError(f"{ckpt['_path']}: its weights do not fit this model "
                          f"({str(e).splitlines()[0][:200]}); was it trained with another model config?"
                          ) from None


def _warn_config_change(old: dict, new, path: Path, *, stacklevel: int = 3) -> None:
    # length of training may change on resume; anything else changes the run it continues
    ignore = {"max_steps", "epochs", "log_every", "sample_every", "checkpoint_every", "keep_last", "num_workers", "max_seconds"}
    changed = [f"{k}: {old.get(k)!r} -> {v!r}"
               for k, v in new.to_dict().items() if k not in ignore and old.get(k) != v]
    if changed:
        warnings.warn(f"resuming from {path} with changed settings ({'; '.join(changed)}); a new lr "
                      "applies from here, other optimizer settings come from the checkpoint.", stacklevel=stacklevel)
