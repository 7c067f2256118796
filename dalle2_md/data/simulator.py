"""Physics-based gait micro-Doppler simulator: per-user walkers -> radar return -> jet spectrogram.

Owns the body model (point scatterers at Winter segment centres), the Boulic-style walking
kinematics, the per-user identity and per-recording variation (`RecordingVariation`), the radar
signal and STFT, and the named profiles (`PROFILES`: `default`, 8 easy users; `gait31`, 31
overlapping users with realistic walk-to-walk variation). Writing data sets: `synthesize`.
The profiles and their physics: docs/guide/simulator.md.

Image convention (shared with `kinematics`): rows are Doppler with positive radial velocity
(towards the radar) at the top and zero Doppler at row `image_size // 2`; columns are time.
Values are dB relative to the image peak, clipped to [-dynamic_range_db, 0] and mapped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from dalle2_md.utils import UserError

SPEED_OF_LIGHT = 299_792_458.0

# Winter's segment lengths as fractions of body height H.
HIP_HEIGHT = 0.53
SHOULDER_HEIGHT = 0.818
HEAD_HEIGHT = 0.93
UPPER_ARM = 0.186
FOREARM = 0.254
THIGH = 0.245
SHANK = 0.246
FOOT = 0.152
HIP_HALF_WIDTH = 0.055
SHOULDER_HALF_WIDTH = 0.12

# sqrt(RCS) of each scatterer relative to the torso.
AMPLITUDES = {
    "head": 0.3,
    "torso": 1.0,
    "upper_arm": 0.15,
    "forearm": 0.1,
    "thigh": 0.3,
    "shank": 0.2,
    "foot": 0.1,
}
# order of the 12 scatterers in the signal sum; paired segments are (right, left)
SCATTERERS = ("head", "torso") + tuple(
    f"{seg}_{side}" for seg in ("upper_arm", "forearm", "thigh", "shank", "foot") for side in "RL"
)


@dataclass(frozen=True)
class UserGait:
    """Identity of one simulated walker: fixed for all of that user's samples.

    Angles are in degrees; `asymmetry` scales the left side's swing amplitudes by (1 + a) and the
    right side's by (1 - a); `asym_phase` shifts the left side off the ideal half cycle."""

    user_id: int
    height_m: float
    speed_mps: float
    cadence_factor: float  # multiplies Boulic's cycle time 1.346 / sqrt(RV)
    hip_factor: float  # multiplies the stride-derived hip amplitude
    arm_swing_deg: float
    elbow_flex_deg: float
    knee_swing_deg: float
    asymmetry: float
    asym_phase: float
    torso_sway: float  # scales the vertical bob and forward surge of the torso
    torso_rcs: float


@dataclass(frozen=True)
class RadarConfig:
    """Radar, processing and scene settings shared by every sample.

    Args:
        carrier_hz: carrier frequency (24 GHz: 1 m/s <-> 160 Hz).
        fs_hz: slow-time sampling rate; the image spans +-fs/2 Doppler (+-7.5 m/s at 24 GHz and
            2.4 kHz, so feet swinging at ~4x the fastest walking speed do not alias).
        duration_s: nominal observation time (the exact value depends on the STFT hop).
        window_s: Hann window length of the STFT.
        dynamic_range_db: dB below the peak mapped to 0 (the image is clipped there).
        radar_height_m: height of the antenna above the ground.
        range_m: (min, max) starting distance of the walker.
        speed_jitter: per-sample relative speed jitter (uniform +-).
        aspect_deg: per-sample walking direction relative to the line of sight (uniform +-).
        snr_db: (min, max) per-sample signal-to-noise ratio of the raw samples.
        clutter_db: (min, max) zero-Doppler clutter amplitude relative to the torso.
    """

    carrier_hz: float = 24e9
    fs_hz: float = 2400.0
    duration_s: float = 3.0
    window_s: float = 0.1
    dynamic_range_db: float = 40.0
    radar_height_m: float = 1.0
    range_m: tuple[float, float] = (7.0, 10.0)
    speed_jitter: float = 0.05
    aspect_deg: float = 15.0
    snr_db: tuple[float, float] = (10.0, 30.0)
    clutter_db: tuple[float, float] = (-12.0, 0.0)

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_hz


@dataclass(frozen=True)
class RecordingVariation:
    """Recording-to-recording variation of one walker (the gait31 profile; see the module
    docstring for the physical reason behind each range).

    Args:
        speed_jitter: relative walking-speed change, uniform +-.
        cadence_jitter: relative cadence change on top of Boulic's speed-cadence law, uniform +-.
        swing_jitter: relative change of arm and knee swing amplitudes, uniform +-.
        aspect_deg: (min, max) |angle| between walking direction and line of sight; either side.
        away_prob: probability that the walker moves away from the radar.
        range_m: (min, max) distance at the centre of the observation window.
        snr_ref_db: SNR at `snr_ref_range_m`; it falls as 40 log10(R / ref) with range R.
        snr_ref_range_m: reference range of `snr_ref_db`.
        snr_spread_db: std of a Gaussian added to the range-derived SNR.
        clutter_db: (min, max) zero-Doppler clutter amplitude relative to the torso.
        carry_prob: probability that one arm carries something and does not swing.
        carry_swing: swing left on a carrying arm (fraction of the normal swing).
    """

    speed_jitter: float = 0.06
    cadence_jitter: float = 0.02
    swing_jitter: float = 0.05
    aspect_deg: tuple[float, float] = (0.0, 25.0)
    away_prob: float = 0.5
    range_m: tuple[float, float] = (3.0, 12.0)
    snr_ref_db: float = 28.0
    snr_ref_range_m: float = 4.0
    snr_spread_db: float = 3.0
    clutter_db: tuple[float, float] = (-20.0, 6.0)
    carry_prob: float = 0.10
    carry_swing: float = 0.1


@dataclass(frozen=True)
class SimProfile:
    """A named simulator set-up: data set defaults, user population and recording variation.

    Args:
        name: what `--profile` calls it.
        num_users, images_per_user, image_size, layout: data set defaults (overridable).
        user_spread: fraction of the population ranges the users span around their centres
            (1.0: the full ranges of `make_users`; smaller: users overlap more).
        variation: per-recording variation; None keeps the default profile's original draws.
        sheet_label: contact-sheet row label, formatted with `id` (0-based) and `n` (1-based).
    """

    name: str
    num_users: int
    images_per_user: int
    image_size: int = 64
    layout: str = "hierarchical"
    user_spread: float = 1.0
    variation: RecordingVariation | None = None
    sheet_label: str = "user {id}"


PROFILES = {
    "default": SimProfile(name="default", num_users=8, images_per_user=20),
    "gait31": SimProfile(
        name="gait31", num_users=31, images_per_user=100, layout="kaggle",
        variation=RecordingVariation(), sheet_label="ID_{n}",
    ),
}


def get_profile(name: str) -> SimProfile:
    """The profile called `name`; a UserError lists the known ones."""
    if name not in PROFILES:
        raise UserError(f"unknown simulator profile {name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class _Frame:
    """STFT geometry for one image size."""

    nperseg: int
    hop: int
    nfft: int
    bins_per_row: int
    num_samples: int


def _frame(image_size: int, radar: RadarConfig) -> _Frame:
    nperseg = max(8, int(round(radar.window_s * radar.fs_hz)))
    hop = max(1, int(round(radar.duration_s * radar.fs_hz / image_size)))
    # an odd number of FFT bins per image row keeps zero Doppler exactly in the centre of row
    # image_size // 2 (rows are block averages of bins), and nfft >= nperseg avoids truncation
    k = 1
    while image_size * k < nperseg:
        k += 2
    nfft = image_size * k
    return _Frame(nperseg, hop, nfft, k, nperseg + hop * (image_size - 1))


def image_axes(image_size: int, radar: RadarConfig = RadarConfig()) -> dict:
    """Physical axes of a simulated image: velocity of each row and time of each column.

    Row r shows radial velocity (zero_row - r) * mps_per_row; column c is centred at
    t0_s + c * s_per_col."""
    fr = _frame(image_size, radar)
    df = radar.fs_hz / fr.nfft
    mps_per_bin = df * radar.wavelength_m / 2.0
    return {
        "mps_per_row": mps_per_bin * fr.bins_per_row,
        "zero_row": image_size // 2,
        "velocity_top_mps": (image_size // 2) * mps_per_bin * fr.bins_per_row,
        "velocity_bottom_mps": (image_size // 2 - (image_size - 1)) * mps_per_bin * fr.bins_per_row,
        "s_per_col": fr.hop / radar.fs_hz,
        "t0_s": fr.nperseg / 2 / radar.fs_hz,
        "duration_s": fr.num_samples / radar.fs_hz,
    }


def _spread(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """n values in [lo, hi], one per equal stratum in random order (Latin hypercube), so any
    handful of users covers the range instead of clumping by chance."""
    return lo + (rng.permutation(n) + rng.uniform(0.1, 0.9, n)) / n * (hi - lo)


def make_users(num_users: int, seed: int = 0, *, spread: float = 1.0) -> list[UserGait]:
    """Draw `num_users` walkers with distinct identities, reproducibly for a seed.

    Args:
        num_users: how many users (ids 0 .. num_users - 1).
        seed: the same seed always gives the same users.
        spread: fraction of each population range the users span, around its centre (1.0: the
            full range; smaller values pack users closer so that their recordings overlap).
    """
    if num_users < 1:
        raise UserError(f"num_users must be at least 1, got {num_users}")
    if not 0.0 < spread <= 1.0:
        raise UserError(f"user spread must be in (0, 1], got {spread}")
    rng = np.random.default_rng([seed, 0x5EED])
    n = num_users

    def span(lo: float, hi: float) -> tuple[float, float]:
        if spread == 1.0:  # the exact original bounds: default-profile users stay bit-identical
            return lo, hi
        mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * spread
        return mid - half, mid + half

    cols = {
        "height_m": _spread(rng, n, *span(1.55, 1.95)),
        "speed_mps": _spread(rng, n, *span(0.85, 1.85)),
        "cadence_factor": _spread(rng, n, *span(0.85, 1.15)),
        "hip_factor": _spread(rng, n, *span(0.75, 0.95)),
        "arm_swing_deg": _spread(rng, n, *span(10.0, 40.0)),
        "elbow_flex_deg": _spread(rng, n, *span(15.0, 40.0)),
        "knee_swing_deg": _spread(rng, n, *span(45.0, 72.0)),
        "asymmetry": rng.uniform(*span(-0.12, 0.12), n),
        "asym_phase": rng.uniform(*span(-0.03, 0.03), n),
        "torso_sway": _spread(rng, n, *span(0.6, 1.4)),
        "torso_rcs": _spread(rng, n, *span(0.8, 1.25)),
    }
    return [UserGait(user_id=i, **{k: float(v[i]) for k, v in cols.items()}) for i in range(n)]


def _bump(p: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Smooth periodic bump on the gait phase p (cycles): ~Gaussian of std `width` cycles."""
    return np.exp((np.cos(2 * np.pi * (p - centre)) - 1.0) / (2 * np.pi * width) ** 2)


STANCE_FRACTION = 0.6
KINE_STEP = 4  # body positions are evaluated every KINE_STEP radar samples


def _hip_profile_table(size: int = 1024, harmonics: int = 5) -> np.ndarray:
    """Hip flexion shape over one cycle in [-1, 1]: falls steadily through stance (so the planted
    foot stays nearly still under a steadily moving pelvis) and rises quickly through swing;
    the corners are rounded by keeping only the first Fourier harmonics."""
    p = np.arange(size) / size
    tri = np.where(p < STANCE_FRACTION, 1 - 2 * p / STANCE_FRACTION, -1 + 2 * (p - STANCE_FRACTION) / (1 - STANCE_FRACTION))
    coef = np.fft.rfft(tri)
    coef[harmonics + 1 :] = 0
    return np.fft.irfft(coef, size)


_HIP_TABLE = _hip_profile_table()


def _hip_profile(p: np.ndarray) -> np.ndarray:
    pos = (p % 1.0) * len(_HIP_TABLE)
    i = pos.astype(np.int64)
    frac = pos - i
    return _HIP_TABLE[i] * (1 - frac) + _HIP_TABLE[(i + 1) % len(_HIP_TABLE)] * frac


def _body_points(
    user: UserGait, p: np.ndarray, speed: float, t: np.ndarray, cycle_s: float, arm_scale: np.ndarray | None = None
) -> np.ndarray:
    """Scatterer positions in the walker's frame (forward, left, up) -> (12, 3, N) metres.

    p: gait phase of the right leg in cycles (heel strike at 0), shape (N,).
    arm_scale: optional (2, 1) swing factor of the (right, left) arm; a carrying arm hangs still."""
    H = user.height_m
    leg = HIP_HEIGHT * H
    rv = speed / leg
    stride = speed * cycle_s
    # hip amplitude from the stride: the planted foot travels speed * stance time under the hip
    hip_amp = np.arcsin(np.clip(user.hip_factor * STANCE_FRACTION * stride / (2 * (THIGH + SHANK) * H), 0.0, 0.8))
    side_scale = np.array([1.0 - user.asymmetry, 1.0 + user.asymmetry])[:, None]  # (2, 1) R, L
    ps = np.stack([p, p + 0.5 + user.asym_phase])  # (2, N)
    w = 2 * np.pi * ps

    # pelvis: forward surge and vertical bob twice per cycle, lateral sway once (Boulic)
    sway = user.torso_sway
    fwd = speed * t - 0.012 * rv * sway * np.sin(4 * np.pi * p)
    bob = -0.015 * rv * sway * np.cos(4 * np.pi * p)
    lat = 0.02 * sway * np.sin(2 * np.pi * p)

    # legs, angles from the downward vertical, positive forward
    hip = np.deg2rad(6.0) + side_scale * hip_amp * _hip_profile(ps)
    knee = np.deg2rad(5.0 + 12.0 * _bump(ps, 0.15, 0.08) + side_scale * user.knee_swing_deg * _bump(ps, 0.72, 0.11))
    plantar = np.deg2rad(18.0) * _bump(ps, 0.62, 0.05)
    shank_ang = hip - knee
    foot_ang = shank_ang - plantar  # foot perpendicular to the shank, toes down at push-off

    # arms swing against the same-side hip; the elbow bends more on the forward swing
    shoulder = np.deg2rad(3.0) - side_scale * np.deg2rad(user.arm_swing_deg) * np.cos(w)
    elbow = np.deg2rad(10.0 + user.elbow_flex_deg * 0.5 * (1 - np.cos(w)))
    if arm_scale is not None:
        shoulder = np.deg2rad(3.0) - arm_scale * side_scale * np.deg2rad(user.arm_swing_deg) * np.cos(w)
        elbow = np.deg2rad(10.0 + arm_scale * user.elbow_flex_deg * 0.5 * (1 - np.cos(w)))
    fore_ang = shoulder + elbow

    def seg(angle, length):  # (forward, up) vector of a segment hanging at `angle`
        return length * np.sin(angle), -length * np.cos(angle)

    hip_z = HIP_HEIGHT * H + bob
    sh_z = SHOULDER_HEIGHT * H + bob
    thx, thz = seg(hip, THIGH * H)
    shx, shz = seg(shank_ang, SHANK * H)
    uax, uaz = seg(shoulder, UPPER_ARM * H)
    fax, faz = seg(fore_ang, FOREARM * H)
    # foot centre sits ahead of the ankle: rotate the shank direction by +90 degrees
    ftx, ftz = 0.3 * FOOT * H * np.cos(foot_ang), 0.3 * FOOT * H * np.sin(foot_ang)

    leg_y = np.array([-HIP_HALF_WIDTH, HIP_HALF_WIDTH])[:, None] * H + lat
    arm_y = np.array([-SHOULDER_HALF_WIDTH, SHOULDER_HALF_WIDTH])[:, None] * H + lat
    zeros = np.zeros_like(hip)
    parts = {
        "upper_arm": (0.5 * uax, arm_y, sh_z + 0.5 * uaz),
        "forearm": (uax + 0.5 * fax, arm_y, sh_z + uaz + 0.5 * faz),
        "thigh": (0.5 * thx, leg_y, hip_z + 0.5 * thz),
        "shank": (thx + 0.5 * shx, leg_y, hip_z + thz + 0.5 * shz),
        "foot": (thx + shx + ftx, leg_y, hip_z + thz + shz + ftz),
    }
    n = p.shape[0]
    pts = np.empty((12, 3, n))
    pts[0] = np.stack([fwd, lat, HEAD_HEIGHT * H + bob])
    pts[1] = np.stack([fwd, lat, 0.5 * (HIP_HEIGHT + SHOULDER_HEIGHT) * H + bob])
    for i, name in enumerate(("upper_arm", "forearm", "thigh", "shank", "foot")):
        x, y, z = (np.broadcast_to(c + zeros, (2, n)) for c in parts[name])
        pts[2 + 2 * i : 4 + 2 * i, 0] = x + fwd
        pts[2 + 2 * i : 4 + 2 * i, 1] = y
        pts[2 + 2 * i : 4 + 2 * i, 2] = z
    return pts


def cycle_time(user: UserGait, speed: float) -> float:
    """Gait cycle (two steps) in seconds: Boulic's 1.346 / sqrt(RV) times the user's factor."""
    return user.cadence_factor * 1.346 / math.sqrt(speed / (HIP_HEIGHT * user.height_m))


@dataclass(frozen=True)
class _Recording:
    """What one recording draws: the walker as walked that day and the scene."""

    user: UserGait  # identity with this recording's swing / cadence changes
    speed: float
    phase0: float
    aspect_deg: float
    towards: bool
    range_m: float  # start range (default profile) or range at the window centre (variation)
    snr_db: float
    clutter_db: float
    arm_scale: np.ndarray | None  # (2, 1) swing of the (right, left) arm, None: both swing
    carrying: str  # "none", "R" or "L"


def _draw_default(user: UserGait, rng: np.random.Generator, radar: RadarConfig) -> _Recording:
    # the original draw order: changing it would change every default-profile image
    speed = user.speed_mps * (1.0 + rng.uniform(-radar.speed_jitter, radar.speed_jitter))
    phase0 = rng.uniform(0.0, 1.0)
    aspect = rng.uniform(-radar.aspect_deg, radar.aspect_deg)
    snr_db = rng.uniform(*radar.snr_db)
    clutter_db = rng.uniform(*radar.clutter_db)
    r0 = rng.uniform(*radar.range_m)
    return _Recording(user, speed, phase0, aspect, True, r0, snr_db, clutter_db, None, "none")


def _draw_recording(user: UserGait, rng: np.random.Generator, var: RecordingVariation) -> _Recording:
    def jitter(rel: float) -> float:
        return 1.0 + rng.uniform(-rel, rel)

    speed = user.speed_mps * jitter(var.speed_jitter)
    walked = replace(
        user,
        cadence_factor=user.cadence_factor * jitter(var.cadence_jitter),
        arm_swing_deg=user.arm_swing_deg * jitter(var.swing_jitter),
        knee_swing_deg=user.knee_swing_deg * jitter(var.swing_jitter),
    )
    phase0 = rng.uniform(0.0, 1.0)
    aspect = rng.uniform(*var.aspect_deg) * rng.choice([-1.0, 1.0])
    towards = bool(rng.uniform() >= var.away_prob)
    range_m = rng.uniform(*var.range_m)
    # radar equation: received power ~ 1 / R^4
    snr_db = var.snr_ref_db - 40.0 * math.log10(range_m / var.snr_ref_range_m) + var.snr_spread_db * rng.standard_normal()
    clutter_db = rng.uniform(*var.clutter_db)
    carrying, arm_scale = "none", None
    if rng.uniform() < var.carry_prob:
        carrying = "R" if rng.uniform() < 0.5 else "L"
        arm_scale = np.array([[var.carry_swing], [1.0]]) if carrying == "R" else np.array([[1.0], [var.carry_swing]])
    return _Recording(walked, speed, phase0, aspect, towards, range_m, snr_db, clutter_db, arm_scale, carrying)


def simulate_spectrogram(
    user: UserGait,
    rng: np.random.Generator,
    *,
    image_size: int = 64,
    radar: RadarConfig = RadarConfig(),
    variation: RecordingVariation | None = None,
) -> tuple[np.ndarray, dict]:
    """One walk of `user` seen by the radar, as a scalar spectrogram and its ground truth.

    Args:
        user: the walker's identity (from `make_users`).
        rng: draws this sample's variation (speed jitter, phase, aspect, SNR, clutter, noise).
        image_size: output is (image_size, image_size); rows Doppler (positive on top), columns time.
        radar: radar and processing settings.
        variation: recording-to-recording variation (gait31 profile); None: the default
            profile's draws from `radar` (speed jitter, aspect, SNR, clutter, start range).

    Returns:
        (image float32 in [0, 1], ground-truth dict with speed, cadence, height, aspect, SNR and
        the image axes from `image_axes`; with `variation` also direction, carried arm, range
        and the recording's swing amplitudes).
    """
    if image_size < 8:
        raise UserError(f"image_size must be at least 8, got {image_size}")
    fr = _frame(image_size, radar)
    rec = _draw_default(user, rng, radar) if variation is None else _draw_recording(user, rng, variation)
    cycle_s = cycle_time(rec.user, rec.speed)
    ranges = _scatterer_ranges(rec, cycle_s, fr, radar, centred=variation is not None)
    signal = _received_signal(rec, ranges, fr, rng, wavelength_m=radar.wavelength_m)
    img = _spectrogram_image(signal, fr, radar, image_size)
    return img, _ground_truth(user, rec, cycle_s, fr, radar, image_size, variation=variation)


def _heading(rec: _Recording) -> tuple[float, float]:
    """The walker moves `aspect` (returned in radians) off the line of sight, towards (sign -1)
    or away from (+1) the radar."""
    return np.deg2rad(rec.aspect_deg), -1.0 if rec.towards else 1.0


def _scatterer_ranges(rec: _Recording, cycle_s: float, fr: _Frame, radar: RadarConfig, *, centred: bool) -> np.ndarray:
    """Radar-to-scatterer distances (12, N) over the recording; `centred`: `rec.range_m` is
    where the walker is at the centre of the window, not at its start."""
    speed, walker = rec.speed, rec.user
    # body motion is smooth (well under 50 Hz), so positions are computed on a grid KINE_STEP
    # times coarser and the ranges interpolated linearly: the phase error stays below ~0.05 rad
    n_coarse = (fr.num_samples - 1) // KINE_STEP + 2
    t = np.arange(n_coarse) * (KINE_STEP / radar.fs_hz)
    body = _body_points(walker, rec.phase0 + t / cycle_s, speed, t, cycle_s, rec.arm_scale)  # (12, 3, M)

    a, sgn = _heading(rec)
    fwd_dir = np.array([sgn * np.cos(a), np.sin(a)])
    left_dir = np.array([-np.sin(a), sgn * np.cos(a)])
    gx = rec.range_m + body[:, 0] * fwd_dir[0] + body[:, 1] * left_dir[0]
    gy = body[:, 0] * fwd_dir[1] + body[:, 1] * left_dir[1]
    if centred:
        half_walk = speed * fr.num_samples / radar.fs_hz / 2
        gx = gx - half_walk * fwd_dir[0]
        gy = gy - half_walk * fwd_dir[1]
    gz = body[:, 2] - radar.radar_height_m
    coarse = np.sqrt(gx * gx + gy * gy + gz * gz)  # (12, M)
    frac = np.arange(KINE_STEP) / KINE_STEP
    ranges = coarse[:, :-1, None] * (1 - frac) + coarse[:, 1:, None] * frac  # (12, M - 1, KINE_STEP)
    return ranges.reshape(len(coarse), -1)[:, : fr.num_samples]  # (12, N)


def _received_signal(rec: _Recording, ranges: np.ndarray, fr: _Frame, rng: np.random.Generator, *,
                     wavelength_m: float) -> np.ndarray:
    """Complex baseband (N,): the scatterers' echoes, a static clutter return and noise (the
    last draws from `rng`, in this order)."""
    amps = np.array([AMPLITUDES[n.rsplit("_", 1)[0] if n[-2:] in ("_R", "_L") else n] for n in SCATTERERS])
    amps[1] *= rec.user.torso_rcs
    # phase wrapped in float64, then float32 trig (vectorised, ~30x faster than complex exp)
    phase = np.remainder((4 * np.pi / wavelength_m) * (ranges - rec.range_m), 2 * np.pi).astype(np.float32)
    amps32 = amps.astype(np.float32)
    signal = (amps32 @ np.cos(phase)).astype(np.float64) - 1j * (amps32 @ np.sin(phase))  # (N,) baseband

    # noise relative to the walker's mean power; clutter is a static return at zero Doppler
    p_sig = float(np.mean(np.abs(signal) ** 2))
    noise_std = math.sqrt(p_sig / 10 ** (rec.snr_db / 10) / 2)
    signal = signal + amps[1] * 10 ** (rec.clutter_db / 20) * np.exp(1j * rng.uniform(0, 2 * np.pi))
    return signal + noise_std * (rng.standard_normal(fr.num_samples) + 1j * rng.standard_normal(fr.num_samples))


def _spectrogram_image(signal: np.ndarray, fr: _Frame, radar: RadarConfig, image_size: int) -> np.ndarray:
    """STFT power of the baseband, Doppler bins averaged into image rows (positive on top),
    in dB over the radar's dynamic range -> float32 (image_size, image_size) in [0, 1]."""
    from scipy.signal import stft

    _, _, spec = stft(
        signal,
        fs=radar.fs_hz,
        window="hann",
        nperseg=fr.nperseg,
        noverlap=fr.nperseg - fr.hop,
        nfft=fr.nfft,
        return_onesided=False,
        boundary=None,
        padded=False,
    )  # (nfft, image_size), bins in FFT order
    power = spec.real**2 + spec.imag**2
    # row r holds the bins centred on signed bin (image_size//2 - r) * k: positive on top
    k = fr.bins_per_row
    centres = (image_size // 2 - np.arange(image_size)) * k
    idx = (centres[:, None] + np.arange(k)[None, :] - k // 2) % fr.nfft
    rows = power[idx].mean(axis=1)  # (image_size, image_size)

    db = 10 * np.log10(rows + 1e-30)
    db -= db.max()
    return (np.clip(db, -radar.dynamic_range_db, 0.0) / radar.dynamic_range_db + 1.0).astype(np.float32)


def _ground_truth(user: UserGait, rec: _Recording, cycle_s: float, fr: _Frame, radar: RadarConfig, image_size: int, *,
                  variation: RecordingVariation | None) -> dict:
    """What `simulate_spectrogram` returns beside the image (see there)."""
    speed, walker = rec.speed, rec.user
    a, sgn = _heading(rec)
    truth = {
        "user_id": user.user_id,
        "speed_mps": speed,
        "radial_speed_mps": -sgn * speed * math.cos(a),
        "cadence_steps_per_s": 2.0 / cycle_s,
        "cycle_s": cycle_s,
        "height_m": user.height_m,
        "aspect_deg": rec.aspect_deg,
        "snr_db": rec.snr_db,
        "clutter_db": rec.clutter_db,
        "start_range_m": rec.range_m if variation is None else rec.range_m - sgn * speed * fr.num_samples / radar.fs_hz / 2,
        "start_phase": rec.phase0,
        "axes": image_axes(image_size, radar),
    }
    if variation is not None:
        truth.update(
            direction="towards" if rec.towards else "away",
            centre_range_m=rec.range_m,
            carrying=rec.carrying,
            arm_swing_deg=walker.arm_swing_deg,
            knee_swing_deg=walker.knee_swing_deg,
            cadence_factor=walker.cadence_factor,
        )
    return truth
