"""Reading gait kinematics back from a scalar spectrogram: torso velocity, limb envelopes, cadence.

Works on any (H, W) image in [0, 1] with rows = Doppler (positive velocity on top, zero Doppler
at row H // 2) and columns = time: simulated, real or generated, after the colormap has been
inverted. Values come in pixel units (rows above zero Doppler, steps per column) and, when the
image axes are known (see `data.simulator.image_axes`), in m/s and steps/s too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Kinematics:
    """What a spectrogram says about the walk.

    Pixel velocities are rows above zero Doppler (positive = towards the radar); `*_mps` and
    `cadence_steps_per_s` are None when no axes were given."""

    torso_px: float  # median over columns of the torso line
    torso_line_px: np.ndarray  # (W,) torso line per column
    upper_envelope_px: np.ndarray  # (W,) highest row above the threshold, per column
    lower_envelope_px: np.ndarray  # (W,) lowest row above the threshold, per column
    max_envelope_px: float  # 95th percentile of the upper envelope
    bandwidth_px: float  # mean upper - lower envelope
    cadence_steps_per_col: float  # dominant frequency of the upper envelope
    torso_mps: float | None = None
    max_envelope_mps: float | None = None
    bandwidth_mps: float | None = None
    cadence_steps_per_s: float | None = None

    def summary(self) -> dict:
        """Scalar values only, for tables and JSON."""
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, np.ndarray)}


def _envelopes(img: np.ndarray, peak_rows: np.ndarray, threshold: float, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the extent of the above-threshold run that contains the peak, bridging gaps of
    up to `max_gap` rows: isolated noise speckles above the threshold do not count as limbs."""
    h, w = img.shape
    top = np.empty(w)
    bottom = np.empty(w)
    above = img >= (img[peak_rows, np.arange(w)] - threshold)[None, :]
    for c in range(w):
        rows = np.flatnonzero(above[:, c])
        # split the above-threshold rows into runs separated by more than max_gap rows
        breaks = np.flatnonzero(np.diff(rows) > max_gap + 1)
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(rows) - 1]])
        run = np.searchsorted(rows[ends], peak_rows[c])
        top[c] = rows[starts[run]]
        bottom[c] = rows[ends[run]]
    return top, bottom


def _dominant_frequency(x: np.ndarray, lo: float, hi: float, pad: int = 16, subharmonic: float | None = None) -> float:
    """Frequency (cycles per sample) of the strongest spectral peak of x within [lo, hi],
    refined by parabolic interpolation on the zero-padded, Hann-windowed spectrum.

    With `subharmonic`, a peak at half the frequency (still in the band) that reaches this
    fraction of the strongest one wins: sharp limb flashes put energy in the harmonics."""
    x = x - np.polyval(np.polyfit(np.arange(len(x)), x, 1), np.arange(len(x)))
    n = len(x) * pad
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    freqs = np.fft.rfftfreq(n)
    band = np.flatnonzero((freqs >= lo) & (freqs <= hi))
    if len(band) == 0:
        return float("nan")
    i = band[np.argmax(spec[band])]
    if subharmonic is not None:
        half = np.flatnonzero((freqs >= max(lo, 0.4 * freqs[i])) & (freqs <= 0.6 * freqs[i]))
        if len(half) and spec[half].max() >= subharmonic * spec[i]:
            i = half[np.argmax(spec[half])]
    if 0 < i < len(spec) - 1:
        a, b, c = np.log(spec[i - 1 : i + 2] + 1e-12)
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom < 0 else 0.0
        return float((i + shift) / n)
    return float(freqs[i])


def read_kinematics(
    scalar_image: np.ndarray,
    *,
    axes: dict | None = None,
    threshold_db: float = 20.0,
    dynamic_range_db: float = 40.0,
    clutter_band: float = 0.02,
    max_gap_px: int | None = None,
    cadence_range_steps_per_s: tuple[float, float] = (1.0, 3.5),
) -> Kinematics:
    """Torso velocity, limb envelopes and cadence of one spectrogram.

    Args:
        scalar_image: (H, W) in [0, 1]; rows Doppler with zero at row H // 2 and positive on
            top, columns time; 1 = peak, 0 = `dynamic_range_db` below it.
        axes: optional physical axes with `mps_per_row`, `s_per_col` and `zero_row` (as in
            `data.simulator.image_axes` and the simulator's ground truth); without them values are in
            pixel units only and zero Doppler is taken to be row H // 2.
        threshold_db: envelopes hold the rows within this many dB of the column peak.
        dynamic_range_db: the dB span that [0, 1] covers, to turn `threshold_db` into scalar units.
        clutter_band: half-width, as a fraction of H, of the band around zero Doppler that the
            torso search skips: static clutter sits there and can outshine the walker.
        max_gap_px: gaps (rows) bridged inside an envelope; default H // 32, at least 1.
        cadence_range_steps_per_s: search band for the step rate when `s_per_col` is known;
            without axes the band is 2 to W / 4 steps per image.
    """
    img = np.asarray(scalar_image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D scalar spectrogram (H, W), got shape {img.shape}")
    h, w = img.shape
    zero_row = float(axes["zero_row"]) if axes else float(h // 2)
    threshold = threshold_db / dynamic_range_db
    gap = max_gap_px if max_gap_px is not None else max(1, h // 32)

    # torso: per-column peak outside the clutter band, refined to sub-row by a parabola
    band = max(1, int(np.ceil(clutter_band * h)))
    masked = img.copy()
    z = int(round(zero_row))
    masked[max(0, z - band) : z + band + 1] = -np.inf
    peak = masked.argmax(axis=0)
    cols = np.arange(w)
    inner = (peak > 0) & (peak < h - 1)
    pk = np.clip(peak, 1, h - 2)
    a, b, c = img[pk - 1, cols], img[pk, cols], img[pk + 1, cols]
    denom = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(inner & (denom < 0), 0.5 * (a - c) / denom, 0.0)
    torso_line = zero_row - (peak + np.clip(shift, -0.5, 0.5))
    torso_px = float(np.median(torso_line))

    top, bottom = _envelopes(img, peak, threshold, gap)
    upper = zero_row - top
    lower = zero_row - bottom

    if axes and "s_per_col" in axes:
        lo, hi = (f * axes["s_per_col"] for f in cadence_range_steps_per_s)
        cadence_col = _dominant_frequency(upper, lo, hi)
    else:
        # no time scale: search widely and guard against locking onto the second harmonic
        cadence_col = _dominant_frequency(upper, 2.0 / w, 0.25, subharmonic=0.8)

    out = dict(
        torso_px=torso_px,
        torso_line_px=torso_line,
        upper_envelope_px=upper,
        lower_envelope_px=lower,
        max_envelope_px=float(np.percentile(upper, 95)),
        bandwidth_px=float(np.mean(upper - lower)),
        cadence_steps_per_col=cadence_col,
    )
    if axes and "mps_per_row" in axes:
        m = float(axes["mps_per_row"])
        out.update(torso_mps=torso_px * m, max_envelope_mps=out["max_envelope_px"] * m, bandwidth_mps=out["bandwidth_px"] * m)
    if axes and "s_per_col" in axes:
        out["cadence_steps_per_s"] = cadence_col / float(axes["s_per_col"])
    return Kinematics(**out)
