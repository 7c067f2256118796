"""Small helpers shared by every stage: existence defaults, seeding, user-facing errors,
atomic file writes and the package-version stamp that goes into every saved artefact."""

from __future__ import annotations

import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def exists(val):
    return val is not None


def default(val, d):
    if exists(val):
        return val
    return d() if callable(d) else d


def cycle(loader):
    while True:
        yield from loader


class UserError(Exception):
    """A problem the user can fix (bad data, wrong file, bad flag).

    The CLI prints the message alone, without a traceback, and exits with status 2. Messages
    say what is wrong, which file, and what to do about it.
    """


class DataError(UserError):
    """The data set on disk cannot be used as it is."""


class BundleError(UserError):
    """A saved model file is missing, damaged, or of the wrong kind."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    import torch

    torch.manual_seed(seed)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a saved model, stored beside its weights."""
    from importlib.metadata import PackageNotFoundError, version

    from .version import __version__

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
