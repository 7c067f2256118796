"""The upsampler: a diffusion U-Net that turns the base decoder's low-res spectrogram into one
at the data's own size (cascaded diffusion, Ho et al. 2022; DALL-E 2's 64 -> 256 stage).

Built on a two-U-Net dalle2-pytorch `Decoder` (`image_sizes=(low-res, output)`): the Decoder
insists that its first U-Net makes images from nothing and only later ones read a low-res
image, so the first place holds the smallest `Unet` that builds (about 12k weights, frozen,
never trained nor run) and the second is the upsampler. Training is the Decoder's own
`forward(images, unet_number=2)`: its `LowresConditioner` shrinks each full-size image to the
low-res size (nearest neighbour), blurs it half of the time, enlarges it again and noises it at
a random level (Imagen's noise conditioning), and its random crops train the U-Net on patches.

Sampling runs the shared samplers of `dalle2_md.sampling`, not `Decoder.sample`: that one draws
the whole batch's noise from the global RNG (so an image would change with the rest of its
batch), fixes its step count at construction and prints progress bars. Here every row's noise
(its starting noise and its low-res augmentation noise) comes from its own generator, so a
row's result depends on its low-res image and its key only, and the global RNG is never read.

By default (`residual`) the U-Net diffuses what bicubic enlargement misses, not the image: the
difference between the full-size image and its low-res version enlarged by bicubic, divided by
that difference's spread (`residual_scale`), and predicts v (Salimans & Ho 2022). A network that
has learned nothing then returns the bicubic image, and its capacity goes to the detail bicubic
lacks (limb arcs, speckle), as in SRDiff (Li et al. 2022). The low-res image is shrunk by area
averaging, as the data loader shrinks images for the base decoder. Bundles written before
`residual` existed load with the Decoder's own image-space eps training and sample as before.

The upsampler sees the low-res image alone: it is unconditional with respect to the image
embedding and the user, as DALL-E 2's upsamplers ignore the caption; so any base decoder of
its low-res size and channels can feed it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_md.defaults import PREDICTIONS
from dalle2_md.models.bundle import load_bundle, save_bundle
from dalle2_md.models.compat import (alphas_cumprod, cascade_noise_scheduler, cascade_unet, lowres_noise_scheduler,
                                     nearest_resize, q_sample, resize_cross_attention, use_sdpa_attention)
from dalle2_md.models.schedules import x_start_estimate
from dalle2_md.sampling import Generators, ddim_timesteps, keyed_generators, randn, run_sampler
from dalle2_md.utils import BundleError, UserError, checked_fields, exists

# keys the upsampler's noise apart from the chain's prior (0), decoder (1) and variation (2) streams
UPSAMPLER_STREAM = 3
# levels of the Decoder's low-res noise schedule (`LowresConditioner` builds it with 1000 steps)
LOWRES_NOISE_LEVELS = 1000
# what bundles written before these fields existed were: image-space eps through the Decoder's forward
LEGACY_FIELDS = dict(residual=False, prediction="eps", lowres_noise_max=1.0)


@dataclass(frozen=True)
class UpsamplerConfig:
    """Constructor arguments of the upsampler.

    Args:
        lowres_size: side of the images it takes (the base decoder's image size).
        output_size: side of the images it makes (the data's own size).
        channels: 1 (scalar spectrogram) or 3 (RGB), as the base decoder's.
        dim, dim_mults, num_resnet_blocks: the U-Net's width, width multipliers per stage and
            residual blocks per stage. No attention at full resolution: only the bottleneck
            (output_size / 2**(len(dim_mults)-1)) has self-attention, for memory; four stages
            put it at 32 px of 256, where three put it at 64 px and made a 256 px step 1.6x slower.
        attn_heads, attn_dim_head: attention shape of the U-Net.
        timesteps: diffusion steps in training.
        sample_timesteps: network evaluations when sampling (a low-res image fixes most of the
            picture, so a few steps do).
        beta_schedule: "cosine" or "linear" (dalle2-pytorch's default for the last U-Net of a cascade).
        loss_type: "l1", "l2" or "huber".
        residual: diffuse (image - bicubic(low-res)) / residual_scale instead of the image (see
            the module docstring); False: the Decoder's own image-space training (needs "eps").
        residual_scale: the spread that residual is divided by: 0.16 is its standard deviation
            on gait31 at 64 -> 256 px in [-1, 1], so the diffused residual has about unit variance.
        prediction: "v" or "eps" (the noise), what the U-Net predicts in residual mode.
        crop_size: side of the random crops the U-Net trains on (its convolutions run on any
            size); None: the low-res size, so a step costs what a base decoder step costs (64 of
            256 is a quarter of the side, as DALL-E 2 trains its upsamplers on crops).
        lowres_noise: noise the low-res input at a random level in training and at
            `lowres_noise_level` when sampling, the level told to the U-Net (Imagen).
        lowres_noise_level: that sampling level, a fraction of the noise schedule (Imagen: 0.2).
        lowres_noise_max: training levels are drawn uniformly below this fraction of the schedule
            (residual mode): the low-res image stays readable in most training steps.
        blur: blur the low-res input in training (Ho et al. 2022), with probability `blur_prob`,
            Gaussian `blur_sigma` and `blur_kernel_size`. One of blur / lowres_noise is needed.
    """

    lowres_size: int = 64
    output_size: int = 256
    channels: int = 1
    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    num_resnet_blocks: int = 1
    attn_heads: int = 4
    attn_dim_head: int = 16
    timesteps: int = 1000
    sample_timesteps: int = 8
    beta_schedule: str = "cosine"
    loss_type: str = "l2"
    residual: bool = True
    residual_scale: float = 0.16
    prediction: str = "v"
    crop_size: int | None = None
    lowres_noise: bool = True
    lowres_noise_level: float = 0.2
    lowres_noise_max: float = 0.5
    blur: bool = True
    blur_prob: float = 0.5
    blur_sigma: float = 0.6
    blur_kernel_size: int = 3

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise UserError(f"upsampler channels must be 1 or 3, got {self.channels}.")
        if not 1 <= self.lowres_size < self.output_size:
            raise UserError(f"the upsampler makes {self.output_size} px images from {self.lowres_size} px ones; "
                            "the output size must be larger than the low-res size.")
        if not 1 <= self.sample_timesteps <= self.timesteps:
            raise UserError(f"upsampler sample_timesteps {self.sample_timesteps} must be between 1 and timesteps "
                            f"{self.timesteps}.")
        if not (self.blur or self.lowres_noise):
            raise UserError("the upsampler needs blur or low-res noise (or both) to augment its low-res input.")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"upsampler prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}.")
        if not self.residual and self.prediction != "eps":
            raise UserError("an image-space upsampler (residual=False) trains through the Decoder, which predicts "
                            "eps; use prediction='eps' or residual=True.")
        if not self.residual_scale > 0:
            raise UserError(f"residual_scale must be positive, got {self.residual_scale}.")
        if not 0.0 < self.lowres_noise_max <= 1.0:
            raise UserError(f"lowres_noise_max must lie in (0, 1], got {self.lowres_noise_max}.")
        if not 0.0 <= self.lowres_noise_level < 1.0:
            raise UserError(f"lowres_noise_level must lie in [0, 1), got {self.lowres_noise_level}.")
        factor = 2 ** (len(self.dim_mults) - 1)
        for name, size in (("output_size", self.output_size), ("crop_size", self.crop)):
            if size % factor:
                raise UserError(f"upsampler {name} {size} is not divisible by 2**(len(dim_mults)-1) = {factor} for "
                                f"dim_mults {self.dim_mults}; pick another size or fewer dim_mults.")
        if not 1 <= self.crop <= self.output_size:
            raise UserError(f"crop_size {self.crop} must lie between 1 and the output size {self.output_size}.")

    @property
    def crop(self) -> int:
        """The side of the training crops (`crop_size`, or the low-res size)."""
        return self.crop_size if exists(self.crop_size) else self.lowres_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, what: str = "upsampler config") -> "UpsamplerConfig":
        """Rebuild from `to_dict()` output; unknown keys are refused (`utils.checked_fields`);
        a config from before `residual` existed gets the legacy values (`LEGACY_FIELDS`)."""
        d = checked_fields(cls, d, what=what)
        if "residual" not in d:
            d = {**LEGACY_FIELDS, **d}
        d["dim_mults"] = tuple(d.get("dim_mults", cls.dim_mults))
        return cls(**d)


def _placeholder_unet(channels: int) -> nn.Module:
    # the Decoder's first U-Net, which it requires but the upsampler never runs: 1x1 input conv,
    # one stage, no resnet blocks, one time token, one text slot
    from dalle2_pytorch import Unet

    unet = Unet(dim=8, channels=channels, dim_mults=(1,), num_resnet_blocks=0, attn_heads=1, attn_dim_head=4,
                init_cross_embed=False, init_conv_kernel_size=1, max_text_len=1, num_time_tokens=1, num_image_tokens=1)
    resize_cross_attention(unet, heads=1, dim_head=4)
    return unet


class MicroDopplerUpsampler(nn.Module):
    """Low-res spectrogram -> spectrogram at the output size (see the module docstring).

    `loss = upsampler(images)` trains it (images at the output size, in [-1, 1]);
    `upsampler.sample(lowres, seed=0)` takes and returns images in [0, 1], as
    `MicroDopplerDecoder.sample` returns them.
    """

    def __init__(self, *, config: UpsamplerConfig):
        super().__init__()
        from dalle2_pytorch import Decoder, Unet

        c = self.config = config
        unet = Unet(dim=c.dim, channels=c.channels, dim_mults=c.dim_mults, num_resnet_blocks=c.num_resnet_blocks,
                    attn_heads=c.attn_heads, attn_dim_head=c.attn_dim_head, lowres_cond=True,
                    lowres_noise_cond=c.lowres_noise)
        crop = c.crop if c.crop < c.output_size else None
        self.decoder = Decoder(
            unet=(_placeholder_unet(c.channels), unet), image_sizes=(c.lowres_size, c.output_size),
            channels=c.channels, unconditional=True, timesteps=c.timesteps, beta_schedule=("cosine", c.beta_schedule),
            loss_type=c.loss_type, learned_variance=False, auto_normalize_img=False, random_crop_sizes=(None, crop),
            use_noise_for_lowres_cond=c.lowres_noise, use_blur_for_lowres_cond=c.blur, blur_prob=c.blur_prob,
            blur_sigma=c.blur_sigma, blur_kernel_size=c.blur_kernel_size,
            lowres_noise_sample_level=c.lowres_noise_level, image_cond_drop_prob=0.0, text_cond_drop_prob=0.0,
        )
        # after Decoder(), which may rebuild U-Nets: cross-attention at the U-Net's own shape
        resize_cross_attention(self.unet, heads=c.attn_heads, dim_head=c.attn_dim_head)
        use_sdpa_attention(self.decoder)  # full-size attention without the tokens x tokens matrix
        cascade_unet(self.decoder, 1).requires_grad_(False)
        self.meta: dict = {}  # the bundle's meta after `load`

    @property
    def unet(self) -> nn.Module:
        return cascade_unet(self.decoder, 2)

    # --- training ----------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Diffusion loss of one batch of full-size images (B, C, output_size, output_size) in
        [-1, 1]; the low-res input and the crops are made from them (by the Decoder when not
        `residual`)."""
        self._check(images, self.config.output_size, "images")
        if not self.config.residual:
            return self.decoder(images, unet_number=2)
        return self._residual_loss(images)

    def _residual_loss(self, images: torch.Tensor) -> torch.Tensor:
        c, batch = self.config, len(images)
        lowres = shrink(images, c.lowres_size)
        if c.blur:  # a softer low-res image than the real one, as a base decoder's may be
            blurred = gaussian_blur(lowres, c.blur_sigma, c.blur_kernel_size)
            lowres = torch.where(torch.rand(batch, 1, 1, 1, device=images.device) < c.blur_prob, blurred, lowres)
        base = enlarge(lowres, c.output_size)
        if c.crop < c.output_size:
            images, base = random_crops((images, base), c.crop)
        cond, level = self._noised_condition(base, torch.randn_like(base), training=True)
        residual = (images - base) / c.residual_scale
        scheduler = cascade_noise_scheduler(self.decoder, 2)
        times = torch.randint(0, c.timesteps, (batch,), device=images.device)
        noise = torch.randn_like(residual)
        pred = self.unet(q_sample(scheduler, residual, times, noise), times, image_embed=None,
                         lowres_cond_img=cond, lowres_noise_level=level)
        if c.prediction == "v":
            a = alphas_cumprod(scheduler).to(images.device)[times].view(-1, 1, 1, 1)
            target = a.sqrt() * noise - (1 - a).sqrt() * residual
        else:
            target = noise
        return F.mse_loss(pred, target)

    def _noised_condition(self, cond: torch.Tensor, noise: torch.Tensor, *, training: bool,
                          sample_level: float | None = None):
        """The low-res input as the U-Net reads it, and its noise level (None without low-res
        noise): random levels below `lowres_noise_max` in training; in sampling the fixed
        `sample_level` (a fraction of the schedule; default the config's `lowres_noise_level`)."""
        c = self.config
        if not c.lowres_noise:
            return cond, None
        if training:
            level = torch.randint(0, max(1, int(c.lowres_noise_max * LOWRES_NOISE_LEVELS)), (len(cond),),
                                  device=cond.device)
        else:
            fraction = c.lowres_noise_level if sample_level is None else sample_level
            level = torch.full((len(cond),), int(fraction * LOWRES_NOISE_LEVELS), dtype=torch.long, device=cond.device)
        return q_sample(lowres_noise_scheduler(self.decoder, 2), cond, level, noise), level

    # --- sampling ----------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, lowres: torch.Tensor, *, seed: int | None = None, generator: Generators = None,
               timesteps: int | None = None, sampler: str | None = None, eta: float = 0.0,
               lowres_noise_level: float | None = None, batch_size: int = 16) -> torch.Tensor:
        """Upsample a batch.

        Args:
            lowres: (B, C, lowres_size, lowres_size) in [0, 1].
            seed: row i's noise comes from a generator keyed by (seed, i) alone (default 0).
            generator: one generator per row instead of `seed` (the chain keys them by user and
                sample); exclusive with `seed`.
            timesteps: network evaluations (default config.sample_timesteps).
            sampler: "ddim" or "dpmpp_2m" (default: `sampling.resolve_sampler`).
            eta: DDIM eta.
            lowres_noise_level: the input's noise level, a fraction of the low-res schedule in
                [0, 1) (default config.lowres_noise_level); needs an upsampler trained with
                lowres_noise.
            batch_size: most rows run through the U-Net at once (memory); results do not depend on it.

        Returns:
            (B, C, output_size, output_size) in [0, 1].
        """
        if exists(seed) and exists(generator):
            raise ValueError("give seed or generator, not both")
        self._check(lowres, self.config.lowres_size, "low-res images")
        if not exists(generator):
            generator = keyed_generators(0 if seed is None else seed, UPSAMPLER_STREAM, range(len(lowres)))
        if not isinstance(generator, (list, tuple)) or len(generator) != len(lowres):
            raise ValueError(f"give one generator per row ({len(lowres)})")
        if exists(lowres_noise_level) and not (self.config.lowres_noise and 0.0 <= lowres_noise_level < 1.0):
            raise ValueError("lowres_noise_level needs an upsampler trained with lowres_noise and a level in [0, 1), "
                             f"got {lowres_noise_level} (lowres_noise={self.config.lowres_noise})")
        was_training = self.training
        self.eval()
        out = [self._sample(lowres[s:s + batch_size] * 2 - 1, generator[s:s + batch_size], timesteps, sampler, eta,
                            lowres_noise_level)
               for s in range(0, len(lowres), batch_size)]
        self.train(was_training)
        return ((torch.cat(out).clamp(-1, 1) + 1) / 2).contiguous()

    def _sample(self, lowres: torch.Tensor, generators: Sequence[torch.Generator], timesteps, sampler, eta,
                lowres_noise_level):
        c, unet = self.config, self.unet
        scheduler = cascade_noise_scheduler(self.decoder, 2)
        batch, device = len(lowres), lowres.device
        noise = randn((batch, c.channels, c.output_size, c.output_size), generators, device)
        base = enlarge(lowres.float(), c.output_size) if c.residual else nearest_resize(lowres.float(), c.output_size)
        cond, level = base, None
        if c.lowres_noise:  # as in training, at the fixed sampling level the U-Net is told
            cond, level = self._noised_condition(base, randn(base.shape, generators, device), training=False,
                                                 sample_level=lowres_noise_level)

        def model_fn(x, t):
            x_start = x_start_estimate(scheduler, c, x, t, unet(x, t, image_embed=None, lowres_cond_img=cond,
                                                                lowres_noise_level=level))
            if not c.residual:
                return x_start.clamp(-1.0, 1.0)
            # clamp where it matters, in image space: base + residual stays in [-1, 1]
            return ((base + c.residual_scale * x_start).clamp(-1.0, 1.0) - base) / c.residual_scale

        steps = ddim_timesteps(c.timesteps, timesteps if exists(timesteps) else c.sample_timesteps)
        out = run_sampler(sampler, model_fn, noise, alphas_cumprod(scheduler), steps, eta=eta, generator=generators)
        return base + c.residual_scale * out if c.residual else out

    def _check(self, images: torch.Tensor, size: int, what: str) -> None:
        expected = (self.config.channels, size, size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise UserError(f"{what} have shape {tuple(images.shape)}, but this upsampler takes (B, {expected[0]}, "
                            f"{size}, {size}); check the base decoder's image size and channels.")

    # --- bundle ------------------------------------------------------------------------

    def save(self, path: str | Path, *, meta: dict | None = None) -> Path:
        """Write an "upsampler" bundle: config + weights (the placeholder U-Net's few included)."""
        return save_bundle(path, kind="upsampler", config=self.config.to_dict(), state_dict=self.state_dict(),
                           meta=meta)

    @classmethod
    def load(cls, path: str | Path) -> "MicroDopplerUpsampler":
        """Rebuild an upsampler from its bundle alone (eval mode); its meta is in `.meta`."""
        payload = load_bundle(path, kind="upsampler")
        model = cls(config=UpsamplerConfig.from_dict(payload["config"], what=f"{path}: upsampler config"))
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as e:
            raise BundleError(f"{path}: weights do not fit its own config ({str(e).splitlines()[0][:200]}); "
                              "the file is damaged.") from None
        model.meta = payload.get("meta", {})
        return model.eval()


def shrink(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) shrunk to `size` by area averaging, as the data loader shrinks images
    (its box filter equals area averaging at an integer factor): the upsampler's low-res input."""
    return F.interpolate(images.float(), size=(size, size), mode="area")


def enlarge(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [-1, 1] enlarged to `size` by bicubic interpolation, clamped: the image the
    residual upsampler adds its detail to."""
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """Each channel blurred by a `kernel_size` Gaussian of standard deviation `sigma` (reflected edges)."""
    x = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - (kernel_size - 1) / 2
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    channels, pad = images.shape[1], kernel_size // 2
    weight = (k[:, None] * k[None, :]).expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(F.pad(images, (pad,) * 4, mode="reflect"), weight, groups=channels)


def random_crops(tensors: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """The same random `size` x `size` window of each row, in every tensor (global RNG)."""
    batch, height, width = tensors[0].shape[0], tensors[0].shape[-2], tensors[0].shape[-1]
    tops = torch.randint(0, height - size + 1, (batch,)).tolist()
    lefts = torch.randint(0, width - size + 1, (batch,)).tolist()
    return [torch.stack([t[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(zip(tops, lefts))])
            for t in tensors]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) resized to `size` x `size`: bicubic, antialiased when
    shrinking, clamped; unchanged when already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                        antialias=size < images.shape[-1])
    return out.clamp(0.0, 1.0)


def to_output_size(images: torch.Tensor, *, upsampler: MicroDopplerUpsampler | None = None,
                   output_size: int | None = None, generator: Generators = None) -> torch.Tensor:
    """Base decoder samples -> the images generation writes: through the upsampler when there is
    one (its own steps and sampler), then resized (bicubic) to `output_size` when that differs.

    Args:
        images: (B, C, H, W) in [0, 1], the base decoder's output.
        upsampler: a `MicroDopplerUpsampler` for H px images, or None.
        output_size: the side wanted; None: the upsampler's output size (or H without one).
        generator: one generator per row for the upsampler's noise (default: keyed by row).
    """
    if exists(upsampler):
        images = upsampler.sample(images, generator=generator)
    return images if output_size is None else resize_images(images, output_size)


def check_upsampler_fits(decoder, upsampler: MicroDopplerUpsampler) -> None:
    """Refuse an upsampler that does not take the base decoder's image size and channels."""
    d, u = decoder.config, upsampler.config
    if (u.lowres_size, u.channels) != (d.image_size, d.channels):
        raise BundleError(f"the upsampler takes {u.channels}-channel {u.lowres_size} px images but the decoder makes "
                          f"{d.channels}-channel {d.image_size} px ones; train an upsampler for this decoder "
                          "(dalle2-md train-upsampler --decoder_path ...).")
