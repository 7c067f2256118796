"""Colormap conversion: scalar spectrogram values in [0, 1] <-> colour-mapped RGB.

Published micro-Doppler images are a single scalar (dB magnitude) drawn through a colormap,
usually jet. Inverting the colormap lets the models learn one channel instead of three; the
colour is put back on output. Lookup tables come from matplotlib so they match the images
researchers made with it.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

LUT_SIZE = 256

# Mean RGB distance (0-255 scale) from each pixel to its nearest colormap entry above which
# an image is judged not to be drawn with that colormap. Colormap images that went through
# resampling or JPEG stay well below it; greyscale or photographic images land far above.
NOT_COLORMAP_RESIDUAL = 12.0


@lru_cache(maxsize=8)
def lookup_table(name: str = "jet") -> np.ndarray:
    """(LUT_SIZE, 3) float32 RGB in [0, 255] for a matplotlib colormap."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise ValueError(f"unknown colormap {name!r}: use a matplotlib colormap name such as 'jet'")
    cmap = colormaps[name].resampled(LUT_SIZE)
    return (cmap(np.arange(LUT_SIZE))[:, :3] * 255.0).astype(np.float32)


@lru_cache(maxsize=8)
def _distinct_colours(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The table's distinct 8-bit colours and, for each, the mean of the indices that share it.

    Some colormaps repeat a colour (jet holds pure blue for 5 entries); mapping such a colour
    to the middle of its run keeps the round-trip error at half the run length."""
    lut = np.rint(lookup_table(name))
    colours, inverse = np.unique(lut, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    index_of = np.bincount(inverse, weights=np.arange(LUT_SIZE)) / np.bincount(inverse)
    return colours.astype(np.float32), index_of.astype(np.float32)


def _nearest(colours: np.ndarray, lut: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(colours), dtype=np.int64)
    lut_sq = (lut**2).sum(1)
    for start in range(0, len(colours), chunk):
        c = colours[start : start + chunk]
        d = (c**2).sum(1, keepdims=True) - 2.0 * c @ lut.T + lut_sq
        out[start : start + chunk] = d.argmin(1)
    return out


def scalar_to_rgb(values: np.ndarray, name: str = "jet") -> np.ndarray:
    """Map scalars in [0, 1] of any shape (...) to uint8 RGB (..., 3)."""
    lut = lookup_table(name)
    idx = np.clip(np.rint(np.asarray(values, dtype=np.float32) * (LUT_SIZE - 1)), 0, LUT_SIZE - 1)
    return np.rint(lut[idx.astype(np.int64)]).astype(np.uint8)


def rgb_to_scalar(rgb: np.ndarray, name: str = "jet") -> tuple[np.ndarray, float]:
    """Invert a colormap: uint8 RGB (..., 3) -> (scalars in [0, 1] of shape (...), residual).

    The residual is the mean RGB distance (0-255) between each pixel and the colour its scalar
    maps back to: about 0 for colormap images, large for anything else.

    Args:
        rgb: uint8 or float array in [0, 255] whose last axis is RGB.
        name: matplotlib colormap name.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB array with last axis 3, got shape {rgb.shape}")
    colours, index_of = _distinct_colours(name)
    flat = rgb.reshape(-1, 3)
    # spectrograms hold few distinct colours: solve once per colour
    seen, inverse = np.unique(flat.astype(np.uint8), axis=0, return_inverse=True)
    idx = _nearest(seen.astype(np.float32), colours)[inverse.reshape(-1)]
    residual = float(np.linalg.norm(colours[idx] - flat.astype(np.float32), axis=1).mean())
    scalars = (index_of[idx] / (LUT_SIZE - 1)).reshape(rgb.shape[:-1])
    return scalars, residual


def check_colormap_residual(residual: float, source: str, name: str = "jet") -> None:
    """Warn, naming the file and the measured residual, when an image does not look drawn
    with the colormap it is being inverted through."""
    if residual > NOT_COLORMAP_RESIDUAL:
        warnings.warn(
            f"{source}: does not look like a {name!r} colormap image (mean colour residual "
            f"{residual:.1f}/255 > {NOT_COLORMAP_RESIDUAL}); if the images are not colour-mapped "
            "spectrograms, pass --colormap none to keep RGB.",
            stacklevel=2,
        )
