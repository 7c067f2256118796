"""The embedding stage: an x-clip `CLIP` trained on the data set itself, pairing each
spectrogram with its user-ID token.

Owns: `ClipConfig`, the spectrogram image encoder, spectrogram augmentations for x-clip's
visual self-supervision, `MicroDopplerClip` (training loss, image / user embeddings, bundles),
a short default trainer, and the on-disk cache of image embeddings. x-clip's towers and its SSL
module are reached through `compat`.

The "text" of a spectrogram is one token, `user_id + USER_TOKEN_OFFSET`; token 0 is padding.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from x_clip import CLIP

from dalle2_md.models.bundle import load_bundle, save_bundle, state_fingerprint
from dalle2_md.models.compat import SimSiam, attach_visual_ssl, image_latent, image_tower, logit_scale, nt_xent_loss, text_latent
from dalle2_md.utils import BundleError, UserError, atomic_write, checked_fields

USER_TOKEN_OFFSET = 1  # token 0 = padding
PAD_TOKEN = 0

# CLIP's temperature is learned as a log-scale; capped as in the CLIP paper (logit scale <= 100)
# so it cannot grow without bound once users are separated.
MAX_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class ClipConfig:
    """Constructor arguments of `MicroDopplerClip` (stored in every clip bundle).

    Args:
        num_users: number of user classes; user indices are 0..num_users-1.
        image_size: side of the square spectrogram images the model sees.
        channels: 1 (scalar spectrogram) or 3 (colour-mapped RGB).
        dim_latent: size of the shared, l2-normalised embedding space.
        dim_image: width of the image encoder's output tokens.
        dim_text: width of the user-token transformer. Set it equal to dim_latent if a
            DiffusionPrior will condition on text encodings (it concatenates them as tokens).
        encoder_widths: channels of the conv stages; each stage halves the resolution.
        token_grid: the final feature map is pooled to token_grid x token_grid tokens
            (the `image_encodings` handed to dalle2-pytorch), whatever the image size.
        text_seq_len: maximum user-token sequence length.
        text_enc_depth, text_heads, text_dim_head: size of x-clip's text transformer.
        use_visual_ssl: add visual self-supervision on the image latent.
        ssl_type: "instance" (SimCLR-style instance discrimination, x-clip's NT-Xent loss;
            keeps within-user spread, see tests/models/test_clip.py) or "simsiam" (x-clip's
            SimSiam; measured to keep little spread, as it does not push images apart).
        ssl_weight: weight of the SSL loss; the contrastive loss gets 1 - ssl_weight.
        ssl_dim, ssl_hidden: projector sizes of the SimSiam head.
        ssl_temperature: NT-Xent temperature of the "instance" head.
        aug_time_crop: smallest fraction of the time axis kept by the random time crop.
        aug_gain: largest relative gain change of the augmentation.
        aug_noise: standard deviation of the additive noise of the augmentation.
    """

    num_users: int
    image_size: int
    channels: int = 1
    dim_latent: int = 64
    dim_image: int = 128
    dim_text: int = 64
    encoder_widths: tuple[int, ...] = (32, 64, 128, 128)
    token_grid: int = 4
    text_seq_len: int = 1
    text_enc_depth: int = 1
    text_heads: int = 2
    text_dim_head: int = 32
    use_visual_ssl: bool = True
    ssl_type: str = "instance"
    ssl_weight: float = 0.25
    ssl_dim: int = 128
    ssl_hidden: int = 256
    ssl_temperature: float = 0.2
    aug_time_crop: float = 0.75
    aug_gain: float = 0.1
    aug_noise: float = 0.03

    def __post_init__(self):
        object.__setattr__(self, "encoder_widths", tuple(int(w) for w in self.encoder_widths))
        if self.num_users < 1:
            raise UserError(f"ClipConfig: num_users must be >= 1, got {self.num_users}.")
        if self.channels not in (1, 3):
            raise UserError(f"ClipConfig: channels must be 1 or 3, got {self.channels}.")
        if self.image_size < 8:
            raise UserError(f"ClipConfig: image_size must be >= 8, got {self.image_size}.")
        if self.ssl_type not in ("simsiam", "instance"):
            raise UserError(f"ClipConfig: ssl_type must be 'simsiam' or 'instance', got {self.ssl_type!r}.")
        if not 0.0 <= self.ssl_weight < 1.0:
            raise UserError(f"ClipConfig: ssl_weight must be in [0, 1), got {self.ssl_weight}.")
        if not self.encoder_widths:
            raise UserError("ClipConfig: encoder_widths must name at least one stage.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_widths"] = list(self.encoder_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, what: str = "clip config") -> "ClipConfig":
        """Rebuild from `to_dict()` output; unknown keys are refused (`utils.checked_fields`)."""
        return cls(**checked_fields(cls, d, what=what))


# --- image encoder -------------------------------------------------------------------------


def _group_norm(width: int) -> nn.GroupNorm:
    groups = 8 if width % 8 == 0 else (4 if width % 4 == 0 else 1)
    return nn.GroupNorm(groups, width)


class _Stage(nn.Module):
    """Strided conv (halves resolution) + a residual conv, GroupNorm + SiLU."""

    def __init__(self, *, dim_in: int, dim_out: int):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, 3, stride=2, padding=1), _group_norm(dim_out), nn.SiLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(dim_out, dim_out, 3, padding=1), _group_norm(dim_out), nn.SiLU()
        )

    def forward(self, x):
        x = self.down(x)
        return x + self.block(x)


class SpectrogramEncoder(nn.Module):
    """Small conv encoder: (B, C, H, W) -> (B, 1 + token_grid**2, dim_image).

    Token 0 is a global-pooled summary (x-clip reads `enc[:, 0]` as the CLS token); the rest
    are the final feature map pooled to a fixed grid, so the token count does not depend on
    the image size (any size, power of 2 or not, works thanks to the adaptive pooling).
    """

    def __init__(self, *, channels: int, widths: Sequence[int], dim_image: int, token_grid: int):
        super().__init__()
        widths = tuple(widths)
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], 3, padding=1), _group_norm(widths[0]), nn.SiLU())
        dims = (widths[0], *widths)
        self.stages = nn.ModuleList(_Stage(dim_in=a, dim_out=b) for a, b in zip(dims[:-1], dims[1:]))
        self.to_tokens = nn.Conv2d(widths[-1], dim_image, 1)
        self.grid_pool = nn.AdaptiveAvgPool2d(token_grid)
        self.to_cls = nn.Linear(dim_image, dim_image)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.to_tokens(x)                              # (B, D, h, w)
        cls = self.to_cls(x.mean(dim=(-2, -1)))            # (B, D)
        grid = rearrange(self.grid_pool(x), "b d h w -> b (h w) d")
        return torch.cat((rearrange(cls, "b d -> b 1 d"), grid), dim=1)


class _ImageLatent(nn.Module):
    """Image -> (B, dim_latent) latent before normalisation: what the SSL head sees (one
    vector per image, so its BatchNorm statistics are over images, not spatial tokens)."""

    def __init__(self, encoder: nn.Module, to_latent: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.to_latent = to_latent

    def forward(self, x):
        return self.to_latent(self.encoder(x)[:, 0])


# --- augmentation --------------------------------------------------------------------------


class SpectrogramAugment(nn.Module):
    """Random views of a batch of spectrograms for SSL, each sample drawn independently.

    Only changes that keep a walker's identity: a crop of the time axis (the last one)
    stretched back to full width (another stretch of the same gait), a small gain and offset
    change (a different dB calibration) and additive noise (another SNR). The Doppler axis is
    left alone (it carries speed), and there are no hue changes, flips or RGB statistics:
    works the same for 1- and 3-channel images.
    """

    def __init__(self, *, time_crop: float = 0.75, gain: float = 0.1, noise: float = 0.03):
        super().__init__()
        self.time_crop = time_crop
        self.gain = gain
        self.noise = noise

    def forward(self, x):
        b, _, h, w = x.shape
        device, dtype = x.device, x.dtype
        # time crop + stretch back via one affine grid per sample
        scale = torch.empty(b, device=device, dtype=dtype).uniform_(self.time_crop, 1.0)
        shift = (torch.rand(b, device=device, dtype=dtype) * 2 - 1) * (1 - scale)
        theta = torch.zeros(b, 2, 3, device=device, dtype=dtype)
        theta[:, 0, 0] = scale
        theta[:, 0, 2] = shift
        theta[:, 1, 1] = 1.0
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        gain = 1 + (torch.rand(b, 1, 1, 1, device=device, dtype=dtype) * 2 - 1) * self.gain
        offset = (torch.rand(b, 1, 1, 1, device=device, dtype=dtype) * 2 - 1) * self.gain * 0.5
        return x * gain + offset + torch.randn_like(x) * self.noise


class LatentInstanceContrast(nn.Module):
    """SimCLR-style instance discrimination on the unit-norm image latent itself: two
    augmented views of an image attract, every other image in the batch (same user or not)
    repels. That is the force that keeps a user's images apart from each other, which the
    user-token loss alone squeezes together. Uses x-clip's NT-Xent loss.

    x-clip 0.14.4's own `SimCLR` cannot be built here: its constructor runs a batch of one
    through a BatchNorm projector in training mode, which raises. It would also put its loss
    on a projector output rather than on the latent the prior learns.
    """

    def __init__(self, net: nn.Module, *, augment: nn.Module, temperature: float = 0.2):
        super().__init__()
        self.net = net
        self.augment = augment
        self.temperature = temperature

    def forward(self, x, latents: torch.Tensor | None = None):
        """Args: x: images; latents: their unit-norm latents if the caller already has them.

        Given the clean view's latents, only one augmented view is encoded: the clean image
        serves as the other view, which saves a third of the encoder passes per step."""
        queries = latents if latents is not None else _l2norm(self.net(self.augment(x)))
        keys = _l2norm(self.net(self.augment(x)))
        return nt_xent_loss(queries, keys, temperature=self.temperature)


# --- the model -----------------------------------------------------------------------------


def _l2norm(t):
    return F.normalize(t, dim=-1)


def user_tokens(user_indices: torch.Tensor, *, seq_len: int = 1) -> torch.Tensor:
    """(B,) user indices -> (B, seq_len) token ids: the user token, then padding."""
    tokens = rearrange(user_indices.long() + USER_TOKEN_OFFSET, "b -> b 1")
    if seq_len > 1:
        tokens = F.pad(tokens, (0, seq_len - 1), value=PAD_TOKEN)
    return tokens


class MicroDopplerClip(nn.Module):
    """x-clip `CLIP` over spectrograms and user tokens.

    `loss = model(images, user_indices)` trains it; `embed_image(images)` gives the unit-norm
    (B, dim_latent) image embeddings the prior and decoder are trained on.
    """

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = c = config
        encoder = SpectrogramEncoder(
            channels=c.channels, widths=c.encoder_widths, dim_image=c.dim_image, token_grid=c.token_grid
        )
        self.clip = CLIP(
            image_encoder=encoder,
            dim_image=c.dim_image,
            dim_text=c.dim_text,
            dim_latent=c.dim_latent,
            num_text_tokens=c.num_users + USER_TOKEN_OFFSET,
            text_enc_depth=c.text_enc_depth,
            text_seq_len=c.text_seq_len,
            text_heads=c.text_heads,
            text_dim_head=c.text_dim_head,
            text_pad_id=PAD_TOKEN,
            visual_image_size=c.image_size,
            channels=c.channels,
        )
        if c.use_visual_ssl:
            # Attached after construction because the SSL head acts on the image *latent*
            # (encoder + CLIP's to_visual_latent), which CLIP only creates in its constructor:
            # the latent is what the prior learns, and SSL on the encoder alone (x-clip's
            # default) leaves the projection free to drop within-user variation. Either way
            # SimSiam kept little spread in our measurements (it only asks for augmentation
            # invariance, which one point per user satisfies); instance discrimination keeps it.
            # x-clip's default augmentation is built for RGB photos (colour jitter, flips,
            # ImageNet normalisation); spectrograms get their own (see SpectrogramAugment).
            augment = SpectrogramAugment(time_crop=c.aug_time_crop, gain=c.aug_gain, noise=c.aug_noise)
            net = _ImageLatent(*image_tower(self.clip))
            if c.ssl_type == "simsiam":
                ssl = SimSiam(
                    net, image_size=c.image_size, channels=c.channels, hidden_layer=-1,
                    projection_size=c.ssl_dim, projection_hidden_size=c.ssl_hidden, augment_fn=augment,
                )
            else:
                ssl = LatentInstanceContrast(net, augment=augment, temperature=c.ssl_temperature)
            attach_visual_ssl(self.clip, ssl)

    # -- training ------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, user_indices: torch.Tensor) -> torch.Tensor:
        """Training loss for a batch: (B, C, H, W) images, (B,) int user indices -> scalar.

        Why not x-clip's own `CLIP(..., return_loss=True)`: it takes the batch diagonal as the
        only positive pair. With user tokens as text, two images of one user in a batch share
        a token, so each would be pushed *away* from its own user's token as a "negative".
        Decoupled contrastive learning only drops the positive from the denominator and leaves
        those false negatives; one-image-per-user batches would cap the batch at num_users
        (a handful of walkers) and starve the SSL head of negatives. Instead the loss uses x-clip's latents
        with every user token as the candidate set (supervised contrastive CLIP):
        image -> user is a softmax over all users' tokens; user -> image is a softmax over
        the batch's images with all that user's images counted as positives.
        """
        self._check_inputs(images, user_indices)
        images = self._resize(images)  # once, so the SSL views are made at the model's size too
        user_indices = user_indices.long()
        c = self.config
        all_users = torch.arange(c.num_users, device=images.device)
        # the same latents x-clip's CLIP(..., return_latents=True) computes, taken apart so the
        # SSL head can reuse the image latents instead of encoding the batch again
        text_latents = self.embed_users(all_users)                         # (U, d) unit norm
        image_latents, _ = self.encode_image(images)                       # (B, d) unit norm
        scale = logit_scale(self.clip).clamp(max=MAX_LOGIT_SCALE)
        logits = image_latents @ text_latents.t() * scale                # (B, U)
        image_to_user = F.cross_entropy(logits, user_indices)

        positives = rearrange(user_indices, "b -> 1 b") == rearrange(all_users, "u -> u 1")  # (U, B)
        present = positives.any(dim=1)
        log_prob = logits.t().log_softmax(dim=-1)                          # (U, B) over images
        per_user = -(log_prob * positives).sum(-1)[present] / positives.sum(-1)[present]
        user_to_image = per_user.mean()

        loss = (image_to_user + user_to_image) / 2
        if c.use_visual_ssl and c.ssl_weight > 0:
            ssl = self.clip.visual_ssl
            ssl_loss = ssl(images, image_latents) if isinstance(ssl, LatentInstanceContrast) else ssl(images)
            loss = loss * (1 - c.ssl_weight) + ssl_loss * c.ssl_weight
        return loss

    def _check_inputs(self, images, user_indices=None):
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.channels:
            raise UserError(
                f"clip model expects images of shape (B, {c.channels}, H, W), got {tuple(images.shape)}; "
                "check the data set's channel setting matches the embedding model's."
            )
        if user_indices is not None:
            if user_indices.shape != images.shape[:1]:
                raise UserError(f"need one user index per image: {tuple(user_indices.shape)} indices for {images.shape[0]} images.")
            if len(user_indices) and (user_indices.min() < 0 or user_indices.max() >= c.num_users):
                raise UserError(
                    f"user indices must be in 0..{c.num_users - 1} (the embedding model was built for "
                    f"{c.num_users} users), got {int(user_indices.min())}..{int(user_indices.max())}."
                )

    # -- embeddings ----------------------------------------------------------------------

    def _resize(self, images):
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (unit-norm (B, dim_latent) embedding, (B, N, dim_image) encodings).
        Images of another size are resized to the model's image_size first."""
        self._check_inputs(images)
        latent, encodings = image_latent(self.clip, self._resize(images))
        return _l2norm(latent), encodings

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids -> (unit-norm (B, dim_latent) embedding, (B, L, dim_text)
        encodings with padding positions zeroed)."""
        tokens = tokens[..., : self.config.text_seq_len]
        mask = tokens != PAD_TOKEN
        latent, encodings = text_latent(self.clip, tokens, mask)          # (B, d), (B, L, dim_text)
        encodings = encodings.masked_fill(~rearrange(mask, "b l -> b l 1"), 0.0)
        return _l2norm(latent), encodings

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) spectrograms -> (B, dim_latent) unit-norm image embeddings."""
        return self.encode_image(images)[0]

    def embed_users(self, user_indices: torch.Tensor) -> torch.Tensor:
        """(B,) user indices -> (B, dim_latent) unit-norm user-token embeddings."""
        return self.encode_text(user_tokens(user_indices, seq_len=self.config.text_seq_len))[0]

    # -- files ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return state_fingerprint(self.state_dict())

    def save(self, path: str | Path, *, label_map: dict | None = None, meta: dict | None = None) -> Path:
        """Write a "clip" bundle (config + weights) that `MicroDopplerClip.load` rebuilds from."""
        meta = {**(meta or {}), "fingerprint": self.fingerprint}
        return save_bundle(
            path, kind="clip", config=self.config.to_dict(), state_dict=self.state_dict(),
            label_map=label_map, meta=meta,
        )

    @classmethod
    def load(cls, path: str | Path) -> "MicroDopplerClip":
        """Rebuild a model from a clip bundle alone (eval mode); `label_map` and `meta` of the
        file are attached as attributes."""
        payload = load_bundle(path, kind="clip")
        try:
            model = cls(ClipConfig.from_dict(payload["config"], what=f"{path}: clip config"))
            model.load_state_dict(payload["state_dict"])
        except (TypeError, RuntimeError, KeyError) as e:
            raise BundleError(
                f"{path}: the clip model's config or weights do not fit this version of dalle2-md "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); retrain the embedding model."
            ) from None
        model.label_map = payload.get("label_map")
        model.meta = payload.get("meta") or {}
        return model.eval()


# --- training ------------------------------------------------------------------------------


# --- embeddings and their cache ------------------------------------------------------------


def _batches(images, batch_size):
    if torch.is_tensor(images):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
        return
    # a Dataset-like sequence of images or (image, label, ...) tuples
    for i in range(0, len(images), batch_size):
        items = [images[j] for j in range(i, min(i + batch_size, len(images)))]
        items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
        yield torch.stack([torch.as_tensor(it) for it in items])


@torch.no_grad()
def compute_image_embeds(clip_model: MicroDopplerClip, images, *, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm image embeddings of a whole data set, (N, dim_latent) float32 on the CPU.

    Args:
        clip_model: trained embedding model (run in eval mode here, mode restored after).
        images: (N, C, H, W) tensor, or a sequence whose items are images or (image, ...) tuples.
        batch_size: images per forward pass.
    """
    was_training = clip_model.training
    clip_model.eval()
    device = next(clip_model.parameters()).device
    try:
        out = [clip_model.embed_image(b.to(device).float()).cpu() for b in _batches(images, batch_size)]
    finally:
        clip_model.train(was_training)
    if not out:
        return torch.zeros(0, clip_model.config.dim_latent)
    return torch.cat(out).float()


def dataset_key_for(paths: Sequence[str | os.PathLike], image_size: int, colormap: str | None) -> str:
    """Short hash naming a data set as the embedding model sees it: the files in order (with
    size and modification time when they exist, so edited files change the key), the image size
    and the colormap used to read them.

    Args:
        paths: image files in data set order (the order of the cached embedding rows).
        image_size: the size the images are resized to.
        colormap: colormap name used to invert RGB images, or None.
    """
    h = hashlib.sha256()
    h.update(f"size={int(image_size)};colormap={colormap}\n".encode())
    for p in paths:
        p = Path(p)
        h.update(str(p).encode())
        try:
            st = p.stat()
            h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            pass
        h.update(b"\n")
    return h.hexdigest()[:16]


def _cache_path(cache_dir: Path, dataset_key: str, fingerprint: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset_key)
    if safe != dataset_key or len(safe) > 64:
        safe = hashlib.sha256(dataset_key.encode()).hexdigest()[:16]
    return cache_dir / f"image_embeds-{safe}-{fingerprint}.safetensors"


def cached_image_embeds(
    clip_model: MicroDopplerClip,
    images,
    *,
    cache_dir: str | os.PathLike,
    dataset_key: str,
    batch_size: int = 256,
) -> torch.Tensor:
    """Image embeddings of a data set, read from `cache_dir` when this (data set, model) pair
    was embedded before, else computed and stored there (safetensors).

    Args:
        clip_model: the embedding model; its weight fingerprint is part of the cache name, so
            a retrained model never reads another model's embeddings.
        images: as for `compute_image_embeds`.
        cache_dir: folder of the cache files (created if missing).
        dataset_key: names the data set (see `dataset_key_for`).
        batch_size: images per forward pass when computing.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    fingerprint = clip_model.fingerprint
    path = _cache_path(Path(cache_dir), dataset_key, fingerprint)
    if path.exists():
        try:
            embeds = load_file(str(path))["image_embeds"]
            if embeds.shape == (len(images), clip_model.config.dim_latent):
                return embeds
        except (SafetensorError, KeyError, OSError, RuntimeError):
            pass  # unreadable or stale cache file: recompute and overwrite it
    embeds = compute_image_embeds(clip_model, images, batch_size=batch_size)
    data = save(
        {"image_embeds": embeds.contiguous()},
        metadata={"dataset_key": dataset_key, "clip_fingerprint": fingerprint, "count": str(len(embeds))},
    )
    with atomic_write(path) as f:
        f.write(data)
    return embeds
