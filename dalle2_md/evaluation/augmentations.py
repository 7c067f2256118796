"""The recogniser's physics-aware augmentations: the ways one walker's recordings differ.

Each changes what a new recording of the same walker would change and leaves what identifies
them (the shape of the torso line and limb arcs, relative to each other):

- `scale_doppler`: walking direction and speed scale every radial velocity about zero Doppler;
- `stretch_time`: cadence changes stretch the time axis;
- `flip_doppler`: walking towards or away from the radar flips the Doppler axis about zero;
- `shift_noise_floor`: range changes the SNR, which moves the noise floor, not the walker;
- `respeckle`: the background speckle is redrawn from the image's own background statistics
  (the generator-free control for SDEdit, which mostly changes speckle).

`physics_augment` applies the ones a `RecogniserTrainConfig` switches on, drawing the RNG only
for those. Images are model-space tensors (N, C, H, W) in [-1, 1]: rows Doppler with positive
radial velocity at the top and zero Doppler at row H // 2 (`data.simulator`), columns time, values
dB relative to the image's peak mapped to [-1, 1] (background dark, walker bright).
"""

from __future__ import annotations

import torch

from dalle2_md.data.simulator import RadarConfig
from dalle2_md.utils import UserError

# a pixel is the walker's when it lies this many robust stds above the image's median (the
# median is the background's level: the background covers well over half of every image); 2
# keeps the faint limb arcs of low-SNR walks, which 3 cuts into
BRIGHT_MARGIN = 2.0
MAD_TO_STD = 1.4826  # median absolute deviation -> std of a Gaussian
DYNAMIC_RANGE_DB = RadarConfig().dynamic_range_db  # dB spanned by [-1, 1] in simulated images


def _background_level(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1): each image's per-channel median, the level of its background."""
    return x.flatten(2).median(dim=2).values[:, :, None, None]


def _linear_resample(x: torch.Tensor, src: torch.Tensor, dim: int, *, circular: bool, fill=None) -> torch.Tensor:
    """x resampled along `dim` (2: rows, 3: columns) at fractional source positions src (N, L),
    linearly; positions outside [0, L - 1] wrap when `circular`, else take `fill` (N, C, 1, 1)."""
    size = x.shape[dim]
    shape = (len(x), 1, size, 1) if dim == 2 else (len(x), 1, 1, size)
    lo = src.floor()
    weight = (src - lo).to(x.dtype).view(shape)

    def take(index):
        inside = ((index >= 0) & (index < size)).view(shape)
        index = index % size if circular else index.clamp(0, size - 1)
        values = torch.gather(x, dim, index.view(shape).expand_as(x))
        return values if circular else torch.where(inside, values, fill.expand_as(x))

    return (1 - weight) * take(lo.long()) + weight * take(lo.long() + 1)


def scale_doppler(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Every radial velocity times `factors` (N,): row r shows what row H//2 - (H//2 - r) / f
    showed (zero Doppler stays put); velocities from outside the image take its background level.

    Physics: the radar sees v cos(theta), so the walking direction (theta 0-25 deg: cos 0.91-1)
    and the walk's speed (about +-6 % per recording) scale torso and limbs alike."""
    n, _, h, _ = x.shape
    zero = h // 2
    rows = torch.arange(h, dtype=torch.float64)[None, :]
    src = zero - (zero - rows) / factors.double()[:, None]  # (N, H)
    return _linear_resample(x, src, 2, circular=False, fill=_background_level(x))


def stretch_time(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The time axis stretched by `factors` (N,) about the centre column (f > 1: slower steps),
    circularly, like the recogniser's time shift (the walk is close to periodic).

    Physics: a walker's cadence varies by about +-2 % between recordings (more with speed)."""
    w = x.shape[3]
    centre = (w - 1) / 2
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    src = centre + (cols - centre) / factors.double()[:, None]  # (N, W)
    return _linear_resample(x, src, 3, circular=True)


def doppler_flip_rows(h: int) -> torch.Tensor:
    """(H,) source row of each row of a Doppler-flipped image: row r shows velocity (H//2 - r)
    steps, so -v sits at row 2 (H//2) - r; with even H, row 0 (+H/2 steps, the same FFT bin as
    -H/2) maps to itself."""
    return (2 * (h // 2) - torch.arange(h)) % h


def flip_doppler(x: torch.Tensor) -> torch.Tensor:
    """The Doppler axis flipped about zero Doppler: radial velocity v -> -v.

    Physics: the same walk seen walking away from the radar instead of towards it (gait31 draws
    either with probability 0.5)."""
    return x[:, :, doppler_flip_rows(x.shape[2])]


def _scalar(x: torch.Tensor, what: str) -> None:
    if x.shape[1] != 1:
        raise UserError(f"{what} works on scalar spectrograms (C = 1, dB values), not C = {x.shape[1]} images; "
                        "load the data with its colormap inverted")


def bright_mask(x: torch.Tensor, margin: float = BRIGHT_MARGIN) -> torch.Tensor:
    """(N, 1, H, W) bool: the walker's pixels, more than `margin` robust stds (1.4826 x the
    median absolute deviation) above each image's median. Scalar images (C = 1)."""
    _scalar(x, "bright_mask")
    v = x.flatten(1)
    median = v.median(dim=1, keepdim=True).values
    spread = MAD_TO_STD * (v - median).abs().median(dim=1, keepdim=True).values
    return (v > median + margin * spread).view_as(x)


def shift_noise_floor(x: torch.Tensor, shift_db: torch.Tensor, *, margin: float = BRIGHT_MARGIN,
                      dynamic_range_db: float = DYNAMIC_RANGE_DB) -> torch.Tensor:
    """The background (all but `bright_mask`) moved by -shift_db (N,) dB and clipped to [-1, 1],
    the walker's pixels kept.

    Physics: the image is dB relative to its peak; an SNR higher by D dB (a nearer walker: SNR
    falls as 40 log10 R, gait31 spans about +-12 dB) lowers the noise floor by D dB and leaves the
    walker's returns where they are. Speckle keeps its spread, as log-power noise does; pixels
    clipped at -1 (below the dynamic range) rise to the new clip level, their upper bound."""
    _scalar(x, "shift_noise_floor")
    offset = (-2.0 * shift_db / dynamic_range_db).to(x.dtype)[:, None, None, None]
    return torch.where(bright_mask(x, margin), x, (x + offset).clamp(-1.0, 1.0))


def respeckle(images: torch.Tensor, generator: torch.Generator, *, margin: float = BRIGHT_MARGIN,
              apply: torch.Tensor | None = None) -> torch.Tensor:
    """Each image with its background redrawn: the walker's pixels (`bright_mask`) kept exactly,
    every other pixel drawn with replacement from that image's own background pixels.

    Physics: the noise speckle of a recording is a fresh draw every time; its level and spread
    are the recording's (SNR, clutter), not the walker's. Resampling keeps the background's
    distribution, clipped pixels included; the redrawn speckle is white (the STFT's correlation
    between neighbouring pixels is not kept). The generator-free control for SDEdit.

    Args:
        images: (N, 1, H, W) in [-1, 1].
        generator: draws the new speckle ((N, H * W) uniforms, whatever `apply` says).
        margin: `bright_mask`'s margin.
        apply: optional (N,) bool, the images to respeckle (the others come back unchanged).
    """
    _scalar(images, "respeckle")
    n = len(images)
    v = images.flatten(1)
    background = ~bright_mask(images, margin).flatten(1)
    if apply is not None:
        background &= apply.view(n, 1)
    count = background.sum(dim=1, keepdim=True).clamp(min=1)
    pool = torch.where(background, v, torch.full_like(v, float("inf"))).sort(dim=1).values  # background first
    pick = (torch.rand(v.shape, generator=generator, dtype=torch.float64) * count).long()
    drawn = torch.gather(pool, 1, torch.minimum(pick, count - 1))  # uniform over the image's background pixels
    return torch.where(background, drawn, v).view_as(images)


def _uniform(n: int, half_width: float, g: torch.Generator) -> torch.Tensor:
    """(N,) factors uniform in [1 - half_width, 1 + half_width]."""
    return 1.0 + half_width * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)


def physics_augment(x: torch.Tensor, cfg, g: torch.Generator) -> torch.Tensor:
    """The physics augmentations `cfg` (a `RecogniserTrainConfig`) switches on, in this order:
    respeckle, Doppler flip, Doppler scaling, time stretch, noise-floor shift. The RNG is drawn
    only for those that are on, so with all off `x` comes back untouched and `g` undrawn."""
    n = len(x)
    if cfg.respeckle > 0:
        x = respeckle(x, g, apply=torch.rand(n, generator=g) < cfg.respeckle)
    if cfg.doppler_flip > 0:
        flip = (torch.rand(n, generator=g) < cfg.doppler_flip)[:, None, None, None]
        x = torch.where(flip, flip_doppler(x), x)
    if cfg.doppler_scale > 0:
        x = scale_doppler(x, _uniform(n, cfg.doppler_scale, g))
    if cfg.time_stretch > 0:
        x = stretch_time(x, _uniform(n, cfg.time_stretch, g))
    if cfg.snr_jitter_db > 0:
        x = shift_noise_floor(x, cfg.snr_jitter_db * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1))
    return x
