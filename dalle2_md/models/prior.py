"""The prior stage: a diffusion model over embedding-space vectors, conditioned on a user (its
contiguous index 0..N-1, `user_indices`; original labels are turned into indices by the label map).

Owns `PriorConfig`, the network `UserConditionedPriorNetwork`, the diffusion wrapper
`UserConditionedDiffusionPrior` (training loss, guided few-step sampling, bundles) and uses
the plain-function samplers of `sampling` (DDIM, DPM-Solver++(2M)). Both classes subclass
dalle2-pytorch 1.15.6's `DiffusionPriorNetwork` / `DiffusionPrior`; the causal transformer,
noise schedule and loss are theirs (reached through `compat`).

Two changes to the stock network, both explained in docs/design.md: it pads text encodings to
`max_text_len` (256) null tokens even when none are given, so the causal transformer ran over
260 tokens instead of 4 (here `max_text_len=0` and the user tokens are the "text embed" tokens;
measured by `experiments/bench_prior.py`, see docs/results.md); and its conditioning dropout
also replaced the noised input x_t with a learned null, so here only the user tokens are dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork
from einops import repeat
from einops.layers.torch import Rearrange
from torch import nn

from dalle2_md.models.bundle import load_bundle, save_bundle
from dalle2_md.models.compat import (alphas_cumprod, noise_scheduler_of, null_text_tokens, prior_p_losses, random_times,
                     replace_text_embed_projection, use_sdpa_attention, x_start_from_noise, x_start_from_v)
from dalle2_md.sampling import Generators, randn, run_sampler
from dalle2_md.utils import BundleError, UserError, checked_fields, exists

PREDICTS = ("x_start", "noise", "v")


@dataclass(frozen=True)
class PriorConfig:
    """Everything needed to rebuild a prior; stored inside its bundle.

    Args:
        num_users: size of the user-ID table (IDs 0..num_users-1).
        dim: width of the transformer.
        embed_dim: size of the image embeddings diffused over, when it differs from `dim` (the
            network then projects them in and out); None: equal to `dim` (no projection, as in
            bundles written before this field existed).
        depth, heads, dim_head, ff_mult: causal transformer shape.
        num_user_tokens: how many conditioning tokens one user becomes.
        timesteps: training diffusion steps (cosine schedule by default).
        sample_timesteps: default number of DDIM steps at sampling time.
        cond_drop_prob: chance a training example sees the null user (classifier-free guidance).
        predict: what the network outputs: "x_start" (DALL-E 2 paper), "noise" or "v".
        ddim_eta: DDIM stochasticity; 0 makes a sample a function of (user, initial noise).
        sampling_clamp_l2norm: renormalise each x_start estimate while sampling.
        sampling_final_clamp_l2norm: renormalise the final sample (unit-norm embedding space).
        image_embed_scale: factor applied to embeddings before diffusion; None -> sqrt(dim), so
            unit-norm embeddings get roughly unit variance per coordinate.
    """

    num_users: int
    dim: int = 512
    embed_dim: int | None = None
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    num_user_tokens: int = 1
    timesteps: int = 1000
    sample_timesteps: int = 64
    cond_drop_prob: float = 0.2
    beta_schedule: str = "cosine"
    loss_type: str = "l2"
    predict: str = "x_start"
    ddim_eta: float = 0.0
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    rotary_emb: bool = True
    sampling_clamp_l2norm: bool = False
    sampling_final_clamp_l2norm: bool = False
    image_embed_scale: float | None = None

    def __post_init__(self):
        if self.num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {self.num_users}")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if self.num_user_tokens < 1:
            raise ValueError(f"num_user_tokens must be >= 1, got {self.num_user_tokens}")
        if self.predict not in PREDICTS:
            raise ValueError(f"predict must be one of {PREDICTS}, got {self.predict!r}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")
        if not 1 <= self.sample_timesteps <= self.timesteps:
            raise ValueError(f"sample_timesteps must be in [1, timesteps={self.timesteps}], got {self.sample_timesteps}")

    @property
    def image_embed_dim(self) -> int:
        """Size of the embeddings the prior samples."""
        return self.embed_dim if self.embed_dim is not None else self.dim

    @classmethod
    def from_dict(cls, d: dict, *, what: str = "prior config") -> "PriorConfig":
        """Rebuild from `to_dict()` output; unknown keys are refused (`utils.checked_fields`)."""
        return cls(**checked_fields(cls, d, what=what))


class UserConditionedPriorNetwork(DiffusionPriorNetwork):
    """dalle2-pytorch's prior transformer with user-ID tokens in place of text conditioning.

    Token sequence per example: [user tokens (num_user_tokens), time, noised image embed,
    learned query] -- no padded text encodings. Conditioning dropout reuses the parent's
    learned `null_text_embeds` (one null per user-token position).

    Args:
        num_users: size of the user table.
        dim: token width of the transformer.
        embed_dim: image embedding size when it differs from `dim`: a linear layer maps the
            noised embedding to a `dim`-wide token and another maps the prediction back. `.dim`
            then reports the embedding size (what `DiffusionPrior` checks), `.width` the tokens'.
        num_user_tokens: tokens per user.
        **transformer_kwargs: passed to the parent's `CausalTransformer` (depth, heads, ...).
    """

    def __init__(self, *, num_users: int, dim: int, embed_dim: int | None = None, num_user_tokens: int = 1,
                 **transformer_kwargs):
        super().__init__(
            dim=dim,
            num_timesteps=None,  # continuous sinusoidal time embedding: generalises over t in short runs
            num_text_embeds=num_user_tokens,
            max_text_len=0,  # the 60x slowdown fix: no null text-encoding padding
            **transformer_kwargs,
        )
        self.num_users = num_users
        self.num_user_tokens = num_user_tokens
        self.user_embed = nn.Embedding(num_users, dim * num_user_tokens)
        # the parent maps a dim-wide text embed to n tokens with a Linear; the table already
        # holds n tokens per user, so only the reshape is kept
        replace_text_embed_projection(self, Rearrange("b (n d) -> b n d", n=num_user_tokens))
        # Identity when the widths agree: no new weights, so older bundles load unchanged
        self.width = dim
        project = exists(embed_dim) and embed_dim != dim
        self.project_in = nn.Linear(embed_dim, dim) if project else nn.Identity()
        self.project_out = nn.Linear(dim, embed_dim) if project else nn.Identity()
        if project:
            self.dim = embed_dim

    def user_tokens(self, user_indices: torch.Tensor) -> torch.Tensor:
        """(B,) long user indices -> (B, num_user_tokens * dim) flat user tokens."""
        if user_indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"user_indices must be an integer tensor, got {user_indices.dtype}")
        if user_indices.numel() and (int(user_indices.min()) < 0 or int(user_indices.max()) >= self.num_users):
            bad = user_indices[(user_indices < 0) | (user_indices >= self.num_users)][0].item()
            raise UserError(
                f"user index {bad} is out of range: this prior knows {self.num_users} users "
                f"(indices 0..{self.num_users - 1}); check the label map the prior was trained with."
            )
        return self.user_embed(user_indices)

    def null_tokens(self, batch: int) -> torch.Tensor:
        """The learned 'no user' tokens, flat like `user_tokens`: (batch, num_user_tokens * dim)."""
        return repeat(null_text_tokens(self), "1 n d -> b (n d)", b=batch)

    def forward(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        *,
        user_indices: torch.Tensor | None = None,
        text_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
        text_cond_drop_prob: float = 0.0,
        image_cond_drop_prob: float = 0.0,
        cond_drop_prob: float | None = None,
    ) -> torch.Tensor:
        """Predict the diffusion target for noised embeddings (B, dim) at integer times (B,).

        Args:
            image_embed: noised, scaled image embeddings x_t, (B, dim).
            diffusion_timesteps: (B,) times.
            user_indices: (B,) user indices; or give `text_embed` = precomputed flat user tokens.
            text_cond_drop_prob / cond_drop_prob: chance each example gets the null user.
            image_cond_drop_prob: the parent's x_t dropout; keep 0 (see module docstring).
        """
        if exists(text_encodings):
            raise ValueError("UserConditionedPriorNetwork takes no text_encodings; pass user_indices")
        if exists(user_indices) == exists(text_embed):
            raise ValueError("pass exactly one of user_indices or text_embed")
        if exists(cond_drop_prob):
            text_cond_drop_prob = cond_drop_prob
        if exists(user_indices):
            text_embed = self.user_tokens(user_indices.to(image_embed.device))
        pred = super().forward(
            self.project_in(image_embed),
            diffusion_timesteps,
            text_embed=text_embed,
            self_cond=self.project_in(self_cond) if exists(self_cond) else None,
            text_cond_drop_prob=text_cond_drop_prob,
            image_cond_drop_prob=image_cond_drop_prob,
        )
        return self.project_out(pred)

    def forward_with_cond_scale(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        *,
        user_indices: torch.Tensor | None = None,
        text_embed: torch.Tensor | None = None,
        cond_scale: float = 1.0,
        self_cond: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Classifier-free guidance: null + (cond - null) * cond_scale.

        cond_scale == 1 returns the conditional prediction itself. Otherwise the conditional
        and null halves run as one batch of 2B, and only the user tokens are nulled.
        """
        if exists(user_indices):
            text_embed = self.user_tokens(user_indices.to(image_embed.device))
        if cond_scale == 1:
            return self.forward(image_embed, diffusion_timesteps, text_embed=text_embed, self_cond=self_cond, **kwargs)
        batch = image_embed.shape[0]
        both = lambda t: torch.cat((t, t), dim=0) if exists(t) else None
        out = self.forward(
            both(image_embed),
            both(diffusion_timesteps),
            text_embed=torch.cat((text_embed, self.null_tokens(batch).to(text_embed.dtype)), dim=0),
            self_cond=both(self_cond),
            **kwargs,
        )
        cond, null = out[:batch], out[batch:]
        return null + (cond - null) * cond_scale



class UserConditionedDiffusionPrior(DiffusionPrior):
    """Diffusion prior p(image embedding | user).

    Training: `loss = prior(image_embeds, user_indices)` with image_embeds (B, dim) from the
    embedding model. Sampling: `prior.sample(user_indices, num_samples_per_user)`.

    Args:
        config: the `PriorConfig`.
    """

    def __init__(self, config: PriorConfig):
        net = UserConditionedPriorNetwork(
            num_users=config.num_users,
            dim=config.dim,
            embed_dim=config.embed_dim,
            num_user_tokens=config.num_user_tokens,
            depth=config.depth,
            heads=config.heads,
            dim_head=config.dim_head,
            ff_mult=config.ff_mult,
            attn_dropout=config.attn_dropout,
            ff_dropout=config.ff_dropout,
            rotary_emb=config.rotary_emb,
        )
        super().__init__(
            net,
            image_embed_dim=config.image_embed_dim,
            timesteps=config.timesteps,
            sample_timesteps=config.sample_timesteps,
            text_cond_drop_prob=config.cond_drop_prob,
            image_cond_drop_prob=0.0,  # never drop the diffusion input itself
            loss_type=config.loss_type,
            predict_x_start=config.predict == "x_start",
            predict_v=config.predict == "v",
            beta_schedule=config.beta_schedule,
            condition_on_text_encodings=False,
            sampling_clamp_l2norm=config.sampling_clamp_l2norm,
            sampling_final_clamp_l2norm=config.sampling_final_clamp_l2norm,
            image_embed_scale=config.image_embed_scale,
        )
        # the causal transformer's attention through F.scaled_dot_product_attention (same weights
        # and outputs; with attn_dropout > 0 it keeps the einsum path while training, see models/compat/attention.py)
        use_sdpa_attention(self.net)
        self.config = config
        # the parent requires both drop probs > 0; guidance here needs only the user dropout
        self.can_classifier_guidance = config.cond_drop_prob > 0
        self.label_map: dict | None = None
        self.meta: dict = {}

    # training

    def forward(self, image_embeds: torch.Tensor, user_indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Diffusion loss for a batch.

        Args:
            image_embeds: (B, dim) float embeddings (not modified).
            user_indices: (B,) contiguous user indices.
        Returns:
            scalar loss.
        """
        user_indices = self._as_indices(user_indices)
        if image_embeds.ndim != 2 or image_embeds.shape[1] != self.image_embed_dim:
            raise ValueError(f"image_embeds must be (B, {self.image_embed_dim}), got {tuple(image_embeds.shape)}")
        if user_indices.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"{user_indices.shape[0]} user indices for {image_embeds.shape[0]} embeddings")
        # out-of-place scaling: the parent's `image_embed *= scale` would change the caller's tensor
        scaled = image_embeds.to(self.device, torch.float32) * self.image_embed_scale
        times = random_times(noise_scheduler_of(self), scaled.shape[0])
        return prior_p_losses(self, scaled, times, text_cond=dict(user_indices=user_indices))

    # sampling

    def _as_indices(self, user_indices) -> torch.Tensor:
        return torch.as_tensor(user_indices, dtype=torch.long, device=self.device).reshape(-1)

    def _x_start(self, x: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        if self.predict_v:
            return x_start_from_v(noise_scheduler_of(self), x, t, pred)
        if self.predict_x_start:
            return pred
        return x_start_from_noise(noise_scheduler_of(self), x, t, pred)

    @torch.no_grad()
    def sample(
        self,
        user_indices: torch.Tensor | Sequence[int],
        num_samples_per_user: int = 1,
        *,
        cond_scale: float = 1.0,
        timesteps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        generator: Generators = None,
        noise: torch.Tensor | None = None,
        callback: Callable[[dict], None] | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Draw image embeddings for users.

        Args:
            user_indices: contiguous user indices (list or 1-D tensor).
            num_samples_per_user: samples per listed user.
            cond_scale: classifier-free guidance scale (1 = plain conditional).
            timesteps: network evaluations; default `config.sample_timesteps`.
            eta: DDIM eta; default `config.ddim_eta`.
            seed: seeds a private generator (global RNG untouched); exclusive with `generator`.
            generator: torch.Generator to draw noise from, or one per output row (each row's
                noise then depends on its generator only).
            noise: explicit initial noise (N, dim) in the diffusion's unit-variance space; the
                same user + same noise gives the same sample when eta = 0.
            callback: per-step hook, see `sampling.sample_ddim`.
            sampler: "ddim" or "dpmpp_2m" (default: `sampling.resolve_sampler`).
        Returns:
            (len(user_indices) * num_samples_per_user, dim) embeddings, user-major: all samples
            of user_indices[0] first.
        """
        if exists(seed) and exists(generator):
            raise ValueError("give seed or generator, not both")
        if num_samples_per_user < 1:
            raise ValueError(f"num_samples_per_user must be >= 1, got {num_samples_per_user}")
        if cond_scale != 1 and not self.can_classifier_guidance:
            raise UserError("this prior was trained without user dropout (cond_drop_prob=0); sample with cond_scale=1")
        rows = self._as_indices(user_indices).repeat_interleave(num_samples_per_user)
        shape = (rows.shape[0], self.image_embed_dim)
        timesteps = timesteps if exists(timesteps) else self.sample_timesteps
        eta = self.config.ddim_eta if eta is None else eta
        if exists(seed):
            generator = torch.Generator(device=self.device).manual_seed(seed)
        if shape[0] == 0:
            return torch.empty(shape, device=self.device)

        def model_fn(x, t):
            pred = self.net.forward_with_cond_scale(x, t, user_indices=rows, cond_scale=cond_scale)
            x_start = self._x_start(x, t, pred)
            if self.predict_x_start and self.sampling_clamp_l2norm:
                x_start = self.l2norm_clamp_embed(x_start)
            return x_start

        was_training = self.training
        self.eval()
        if exists(noise):
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
            noise = noise.to(self.device)
        else:
            noise = randn(shape, generator, self.device)
        try:
            x = run_sampler(
                sampler, model_fn, noise, alphas_cumprod(noise_scheduler_of(self)), timesteps,
                eta=eta, generator=generator, callback=callback,
            )
        finally:
            self.train(was_training)
        if self.sampling_final_clamp_l2norm:
            x = self.l2norm_clamp_embed(x)
        return x / self.image_embed_scale

    # bundles

    def save(self, path: str | Path, *, label_map: dict | None = None, meta: dict | None = None) -> Path:
        """Write a "prior" bundle (config + weights + label map + meta, plain types only).

        Args:
            path: target .pt file.
            label_map: user name -> ID map; default the one loaded with the prior, if any.
            meta: extra facts, e.g. {"clip_fingerprint": ...}; default the loaded meta.
        """
        return save_bundle(
            path,
            kind="prior",
            config=asdict(self.config),
            state_dict=self.state_dict(),
            label_map=label_map if exists(label_map) else self.label_map,
            meta=meta if exists(meta) else self.meta,
        )

    @classmethod
    def load(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> "UserConditionedDiffusionPrior":
        """Rebuild a prior from its bundle alone; `.label_map` and `.meta` come with it.

        Args:
            path: a bundle written by `save`.
            map_location: device for the weights.
        """
        payload = load_bundle(path, kind="prior")
        try:
            config = PriorConfig.from_dict(payload["config"], what=f"{path}: prior config")
        except (TypeError, ValueError) as e:
            raise BundleError(f"{path}: prior config cannot be used ({e}); re-save it with this dalle2-md.") from None
        prior = cls(config)
        try:
            prior.load_state_dict(payload["state_dict"])
        except RuntimeError as e:
            raise BundleError(
                f"{path}: weights do not match the stored prior config ({str(e).splitlines()[0][:200]}); "
                "the file is damaged or was edited."
            ) from None
        prior.label_map = payload.get("label_map")
        prior.meta = payload.get("meta") or {}
        return prior.to(map_location)
