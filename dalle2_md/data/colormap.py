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
    """Invert a colormap: RGB (..., 3) -> (float32 scalars in [0, 1] of shape (...), residual).

    The one colormap inversion of the package (the data loader, the generated-folder reader and
    the kinematics all come here). The residual is the mean RGB distance (0-255) between each
    pixel and the colour its scalar maps back to: about 0 for colormap images, large for
    anything else.

    Args:
        rgb: uint8 array whose last axis is RGB; float arrays in [0, 255] are rounded to 8 bits.
        name: matplotlib colormap name.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB array with last axis 3, got shape {rgb.shape}")
    pixels = rgb.reshape(-1, 3)
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    # a spectrogram holds at most a few hundred distinct colours: solve once per colour, found
    # by packing each pixel into one int (np.unique over rows is far slower)
    packed = (pixels[:, 0].astype(np.int32) << 16) | (pixels[:, 1].astype(np.int32) << 8) | pixels[:, 2]
    uniq, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    seen = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=-1).astype(np.float32)
    colours, index_of = _distinct_colours(name)
    nearest = _nearest(seen, colours)
    distance = np.linalg.norm(colours[nearest] - seen, axis=1)
    residual = float((distance * counts).sum() / max(int(counts.sum()), 1))
    scalars = (index_of[nearest] / (LUT_SIZE - 1))[inverse.reshape(-1)]
    return scalars.reshape(rgb.shape[:-1]).astype(np.float32), residual


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
