"""Small helpers shared by every stage: existence defaults, seeding, user-facing errors, the one
rule for reading stored configs (`checked_fields`), short listings for messages, atomic file
writes, a lock file that lets processes share a cache (`claimed`) and the content hash that
names cached files (`content_digest`), the one JSON cleaner (`plain_json`), the package-version stamp that goes into every saved
artefact, the range conversions `to_unit` / `to_signed`, and `say`, the one channel for
user-facing lines.

How the package talks to its user, one rule:
    - progress and information lines (what was read, trained, written, how fast): `say(message)`,
      printed to stdout on the first process only. The CLI commands print their results through
      it too; only the CLI's `Error: ...` line goes to stderr (through click, as the exit status
      says the command failed).
    - `warnings.warn` only for what a library user may want to filter or turn into an error:
      genuine warnings about their data or run
      (DataWarning for skipped images, a colormap that does not fit, changed settings on resume).
    - `logging` only where a test reads the record through caplog (the split's note about users
      too small to split, in splits.py); nothing else uses it.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import numpy as np


def say(message: str) -> None:
    """Print one user-facing progress / information line to stdout (flushed), once per run.

    Under `accelerate launch` every process runs the same code; one copy of each line is enough.
    The rank is read from the launcher's environment: creating accelerate's state here, before
    the training loop's Accelerator, would pin it to a single process.
    """
    rank = next((os.environ[k] for k in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK") if k in os.environ), "0")
    if int(rank) == 0:
        print(message, flush=True)


def exists(val):
    return val is not None


class UserError(Exception):
    """A problem the user can fix (bad data, wrong file, bad flag).

    The CLI prints the message alone, without a traceback, and exits with status 2. Messages
    say what is wrong, which file, and what to do about it.
    """


def read_json_file(path, *, what: str, fix: str):
    """A JSON file the package wrote earlier, or one DataError naming the file (`what`: "label map
    file", "split file"; `fix`: what the user should do when it is unreadable)."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path} is not readable JSON ({e}); {fix}") from None


class DataError(UserError):
    """The data set on disk cannot be used as it is."""


class BundleError(UserError):
    """A saved model file is missing, damaged, or of the wrong kind."""


def checked_fields(cls, d: Any, *, what: str, retired: Iterable[str] = (),
                   error: type[UserError] = BundleError) -> dict:
    """The entries of a stored dict that are fields of dataclass `cls`: the one rule every
    `from_dict` follows.

    A key the class does not know is refused with one message naming it (the file was written by
    a newer dalle2-md, or is damaged); keys in `retired` (fields older versions wrote and this
    one no longer reads) are dropped quietly, so old bundles still load. Missing keys are left
    to the dataclass defaults.

    Args:
        cls: the dataclass to rebuild.
        d: the stored dict.
        what: what the dict is, for the message ("decoder config", "label map in model.pt").
        retired: keys to drop without complaint.
        error: the UserError subclass to raise (BundleError for saved models).
    """
    if not isinstance(d, Mapping):
        raise error(f"{what} is malformed: expected a JSON object, got {type(d).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(known) - set(retired))
    if unknown:
        raise error(
            f"{what} has unknown keys {unknown} (this dalle2-md reads {known}); it was written by a newer "
            "dalle2-md or is damaged: upgrade dalle2-md or re-create the file"
        )
    return {k: v for k, v in d.items() if k in known}


def short_list(items: Iterable[Any], limit: int = 8) -> str:
    """"a, b, c, ... (N more)": a listing for messages that stays one line."""
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    import torch

    torch.manual_seed(seed)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a saved model, stored beside its weights."""
    from importlib.metadata import PackageNotFoundError, version

    from dalle2_md.version import __version__

    found = {"dalle2-md": __version__}
    for name in ("torch", "dalle2-pytorch", "x-clip", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file beside `path` and move it into place only once fully written,
    so a crash mid-write never leaves a truncated file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def content_digest(tensors: Iterable[Any], settings: Any, *, default: Callable = str) -> str:
    """16 hex digits of a SHA-256 over the tensors' bytes, then `settings` as sorted JSON (its
    non-JSON values through `default`): the name part of every cached file, so a file is found
    again only for exactly the same inputs and settings."""
    import hashlib
    import json

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=default).encode())
    return h.hexdigest()[:16]


def _holder_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return True  # being written this instant: treat as held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def claimed(path: str | os.PathLike, *, wait: bool = True, poll_seconds: float = 5.0,
            on_wait: Callable[[str], None] | None = None):
    """Hold `<path>.lock` while this process makes `path`, so processes that share a cache
    folder never make the same file twice. Yields True once the lock is held. When a live
    process holds it: with `wait`, wait until it lets go (the caller then usually finds `path`
    made); without, yield False at once so the caller can do other work. A lock left by a dead
    process is taken over."""
    lock = Path(f"{os.fspath(path)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _holder_alive(lock):
                lock.unlink(missing_ok=True)
                continue
            if not wait:
                yield False
                return
            if on_wait and not told:
                on_wait(f"waiting for process {lock.read_text().strip() or '?'} to finish {Path(path).name}")
                told = True
            time.sleep(poll_seconds)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def to_unit(x):
    """Model space [-1, 1] -> display space [0, 1] (tensors and arrays alike)."""
    return (x + 1) / 2


def to_signed(x):
    """Display space [0, 1] -> model space [-1, 1] (tensors and arrays alike)."""
    return x * 2 - 1


def plain_json(obj: Any) -> Any:
    """`obj` with JSON types only, so every file the package writes is strict JSON: dict keys as
    strings, tuples as lists, numpy scalars and arrays as Python numbers and lists, NaN / inf as
    None."""
    if isinstance(obj, Mapping):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
