"""GPU fast paths for sampling: bf16 autocast, channels_last memory format and torch.compile.

Each is asked for by a flag and used only where it helps (CUDA); anywhere else the request
falls back to the plain fp32 path with one line saying so, so the same command line works on a
laptop and on a GPU box. Training gets bf16 through the existing `--mixed_precision bf16`
(accelerate's autocast), not from here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from dalle2_md.utils import say as say_line


@dataclass(frozen=True)
class FastPaths:
    """Which fast paths to try when sampling.

    Args:
        bf16: run the networks under bf16 autocast (CUDA only; the samplers' arithmetic stays
            fp32/fp64).
        channels_last: store the U-Net's weights and activations as NHWC (CUDA only).
        compile: torch.compile the U-Net and the prior network (CUDA only; the first batch
            pays the compilation).
    """

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


def apply_fast_paths(model: nn.Module, device: torch.device | str, paths: FastPaths,
                     say: Callable[[str], None] = say_line) -> contextlib.AbstractContextManager:
    """Prepare `model` (a `MicroDopplerDALLE2`) for fast sampling on `device` and return the
    context to sample in. On a CPU every requested path falls back, one line each.

    Args:
        model: has `.decoder.unet` and `.prior.net`.
        device: where it samples.
        paths: what was asked for.
        say: where the fallback lines go.
    """
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    asked = [name for name in ("bf16", "channels_last", "compile") if getattr(paths, name)]
    if not on_cuda:
        for name in asked:
            say(f"{name}: CUDA only, falling back to the plain fp32 path on {device.type}")
        return contextlib.nullcontext()
    if paths.channels_last:
        model.decoder.unet.to(memory_format=torch.channels_last)
    if paths.compile:
        if not hasattr(torch, "compile"):
            say("compile: this PyTorch has no torch.compile, falling back to eager")
        else:
            model.decoder.unet.forward = torch.compile(model.decoder.unet.forward)
            model.prior.net.forward = torch.compile(model.prior.net.forward)
    if paths.bf16 and not torch.cuda.is_bf16_supported():
        say("bf16: this GPU has no bf16 support, falling back to fp32")
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16) if paths.bf16 else contextlib.nullcontext()
