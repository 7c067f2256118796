"""Self-describing model files ("bundles").

Every trained part (embedding, prior, decoder, upsampler, VQGAN, chained model) is one `.pt`
file holding plain types only, so `torch.load(weights_only=True)` reads it and nothing in it can
run code:

    {"format": "dalle2-md", "format_version": 1, "kind": "decoder",
     "config": {...constructor arguments...}, "state_dict": {...tensors...},
     "label_map": {...} | None, "versions": {...}, "meta": {...}}

`load_bundle(path, kind=...)` turns every way a file can be wrong into one `BundleError` that
names the file and says what to do.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from dalle2_md.utils import BundleError, atomic_write, package_versions, plain_json

FORMAT = "dalle2-md"
FORMAT_VERSION = 1
KINDS = ("clip", "prior", "decoder", "upsampler", "vqgan", "dalle2", "checkpoint", "recogniser", "baseline")


def save_bundle(
    path: str | Path,
    *,
    kind: str,
    config: dict,
    state_dict: dict[str, torch.Tensor],
    label_map: dict | None = None,
    meta: dict | None = None,
) -> Path:
    """Write a bundle atomically (temporary file + rename)."""
    if kind not in KINDS:
        raise ValueError(f"unknown bundle kind {kind!r}; expected one of {KINDS}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": plain_json(config),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "label_map": plain_json(label_map) if label_map is not None else None,
        "versions": package_versions(),
        "meta": plain_json(meta or {}),
    }
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def load_bundle(path: str | Path, kind: str | tuple[str, ...] | None = None) -> dict:
    """Read a bundle with `weights_only=True`; check it is a dalle2-md file of the wanted kind."""
    path = Path(path)
    wanted = (kind,) if isinstance(kind, str) else kind
    what = f"a {'/'.join(wanted)} model" if wanted else "a dalle2-md model"
    if not path.exists():
        raise BundleError(f"{path}: no such file; give the path of {what} (a .pt written by dalle2-md).")
    if path.is_dir():
        raise BundleError(f"{path}: is a folder; give the path of {what} file inside it.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BundleError(
            f"{path}: refused to load: the file holds Python objects that could run code "
            f"({str(e).splitlines()[0][:200]}). dalle2-md only loads files it wrote itself; "
            "re-save the model with dalle2-md."
        ) from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file fails in many ways (KeyError from old pickles)
        first = str(e).splitlines()[0].split(". ")[0][:160] if str(e) else "empty"
        raise BundleError(
            f"{path}: cannot be read ({type(e).__name__}: {first}); "
            "the file is truncated or not a PyTorch file. Use an earlier checkpoint or retrain."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BundleError(
            f"{path}: is not a dalle2-md model file (no '{FORMAT}' header); "
            f"give {what} written by dalle2-md."
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(
            f"{path}: written by a newer dalle2-md (format {payload['format_version']}); upgrade dalle2-md."
        )
    if wanted and payload.get("kind") not in wanted:
        raise BundleError(
            f"{path}: holds a {payload.get('kind')!r} model, but {what} is needed here; check the path."
        )
    return payload


def state_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """Short hash of a model's weights: names a trained embedding model, so that caches and the
    stages trained on its embeddings can check they agree."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().reshape(-1).contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
