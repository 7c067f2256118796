"""The evaluation protocol's fixed definitions: its data, split, recogniser settings and profiles.

Owns what every protocol benchmark must agree on so that their numbers compare:

- the data: simulated users (the gait31 simulator profile by default) in memory, through the jet
  colormap round trip the data loader does (`simulate`), split per user by recording index
  (`split`: the last `num_test` recordings test, the `num_val` before them validation);
- the real-only recogniser: the K-shot shape (`KSHOT_RECOGNISER`) and its two training arms
  (`RECOGNISER_ARMS`: the strong defaults of `RecogniserTrainConfig`, and the earlier settings
  `LEGACY_RECOGNISER_TRAIN`);
- the quality protocol's profiles (`Profile`, `profiles()`: smoke, smoke_latent, full, full128,
  gpu, gpu256_latent) with their generator budgets (`PROTOCOL_BUDGET`, `ALL_DATA_BUDGET`,
  `LATENT128_BUDGET`, `LATENT128_KSHOT_BUDGET`), the 256 px cascade comparison's profiles
  (`CascadeProfile`, `cascade_profiles()`: smoke, cascade256, gpu256), the profile's data (`protocol_data`), its
  reference recogniser (`recogniser_config`, `reference_recogniser`) and the kinematic goal's
  measure (`kinematic_ratios`).

The runners that train, sample, judge and write results are the scripts in benchmarks/
(benchmarks/kshot.py, benchmarks/quality.py, benchmarks/augment_ablation.py); the figures they
produced are in docs/results.md. Same seeds give the same images, splits and settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dalle2_md.data.colormap import rgb_to_scalar, scalar_to_rgb
from dalle2_md.data.labels import LabelMap
from dalle2_md.defaults import SamplingConfig
from dalle2_md.data.simulator import get_profile, make_users, simulate_spectrogram
from dalle2_md.data.synthesize import sample_rng
from dalle2_md.utils import UserError
from dalle2_md.evaluation.recogniser import (
    LEGACY_RECOGNISER_TRAIN,
    RecogniserConfig,
    RecogniserTrainConfig,
    cached_recogniser,
)
from dalle2_md.training.presets import QUICK_BUDGET, GeneratorBudget, cpu_vqgan_sizes

__all__ = [
    "KSHOT_RECOGNISER",
    "RECOGNISER_ARMS",
    "BEST_AUGMENTATION",
    "simulate",
    "all_digits",
    "digits",
    "split",
    "PROTOCOL_BUDGET",
    "ALL_DATA_BUDGET",
    "LATENT128_BUDGET",
    "LATENT128_KSHOT_BUDGET",
    "Profile",
    "profiles",
    "PROFILE_NAMES",
    "CascadeProfile",
    "cascade_profiles",
    "CASCADE_PROFILE_NAMES",
    "protocol_data",
    "recogniser_config",
    "sized_recogniser_config",
    "reference_recogniser",
    "kinematic_ratios",
]

# --------------------------------------------------------------------------------------------
# data

# a recogniser small enough that 30 trainings at 64 px fit ~15 min on one shared CPU thread
KSHOT_RECOGNISER = dict(widths=(8, 16, 32), feature_dim=64, pool_rows=4, time_pool=4)

# the real-only recogniser's training arms of the K-shot curve: the strong defaults (SpecAugment
# masks, mixup, 2500 steps), the earlier settings (time shift and noise only, 300 steps) and the
# strong ones plus what validated best among the physics-aware augmentations
# (`benchmarks/search_augment.py`, see docs/results.md)
BEST_AUGMENTATION = dict(doppler_flip=0.5)
RECOGNISER_ARMS = {"strong": RecogniserTrainConfig(), "legacy": LEGACY_RECOGNISER_TRAIN,
                   "physics": RecogniserTrainConfig(**BEST_AUGMENTATION)}


def simulate(num_users: int, per_user: int, image_size: int, seed: int, profile) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, S, S) model-space images in [-1, 1] ordered by (user, index), and user ids.

    Args:
        num_users: users to simulate (`make_users(num_users, seed)`).
        per_user: recordings per user.
        image_size: image side in pixels.
        seed: the data seed (users and every recording's noise).
        profile: a simulator profile (`dalle2_md.data.simulator.get_profile`): its user spread
            and recording-to-recording variation.

    Each image goes through the jet colormap and back, as loading the PNG gives it back.
    """
    users = make_users(num_users, seed, spread=profile.user_spread)
    images, ids = [], []
    for u in users:
        for i in range(per_user):
            img, _ = simulate_spectrogram(u, sample_rng(seed, u.user_id, i), image_size=image_size, variation=profile.variation)
            scalar, _ = rgb_to_scalar(scalar_to_rgb(img, "jet"))  # what loading the PNG gives back
            images.append(scalar)
            ids.append(u.user_id)
    x = torch.from_numpy(np.stack(images)).float()[:, None] * 2 - 1
    return x, torch.tensor(ids)


def all_digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of scikit-learn's bundled 8 x 8 handwritten digits (10 classes, nothing
    downloaded; needs the `bench` extra) enlarged to `image_size` (bilinear), in [-1, 1], and
    its digit: the held-out second data set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x * 2 - 1, torch.tensor(d.target, dtype=torch.long)


def digits(per_class: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` images of each digit of `all_digits`, drawn by `seed` and ordered as
    `simulate`'s, so that `split` applies. Never used to tune anything: it shows whether a
    setting picked on gait31 carries over to other data.
    """
    x, labels = all_digits(image_size)
    g = torch.Generator().manual_seed(seed)
    order = []
    for c in range(10):
        idx = torch.nonzero(labels == c).reshape(-1)
        if len(idx) < per_class:
            raise UserError(f"digit {c} has {len(idx)} images; ask for at most that many per class.")
        order.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    order = torch.cat(order)
    return x[order], labels[order]


def split(user_indices: torch.Tensor, per_user: int, num_test: int, num_val: int) -> dict:
    """Fixed per-user split by recording index: the last `num_test` test, the `num_val` before val.

    Args:
        user_indices: (N,) ids in `simulate`'s order (`per_user` recordings per user in a row).
        per_user, num_test, num_val: recordings per user, and how many of them are test and val.

    Returns:
        {"train", "val", "test"}: index tensors into the N images.
    """
    index = torch.arange(len(user_indices)) % per_user
    test = index >= per_user - num_test
    val = (index >= per_user - num_test - num_val) & ~test
    return {"train": torch.nonzero(~test & ~val).reshape(-1), "val": torch.nonzero(val).reshape(-1),
            "test": torch.nonzero(test).reshape(-1)}


# --------------------------------------------------------------------------------------------
# generator budgets

# the K-shot generators (benchmarks/augment_ablation.py's default arguments)
PROTOCOL_BUDGET = GeneratorBudget(sampling=SamplingConfig(decoder_steps=15, prior_steps=15))
# the generators on all train images: the decoder 3x longer (7200 steps), the prior 4000 steps, sampled
# at decoder guidance 2 applied only in 0.15 <= t / T <= 0.7 (docs/results.md gives the measurements)
ALL_DATA_BUDGET = replace(PROTOCOL_BUDGET, decoder_train_steps=7200, prior_train_steps=4000,
                          sampling=replace(PROTOCOL_BUDGET.sampling, cond_scale=2.0, guidance_interval=(0.15, 0.7)))
# 128 px through the latent path: the CPU VQGAN at f = 4 (a 16 x 32 x 32 latent); the decoders get
# the K-shot generators' 2400 steps, eager (not compiled)
LATENT128_BUDGET = replace(PROTOCOL_BUDGET, vqgan_train_steps=1000)
# the K-shot generators of the 128 px profile: 310 images, fewer VQGAN and decoder steps
LATENT128_KSHOT_BUDGET = replace(PROTOCOL_BUDGET, vqgan_train_steps=400, decoder_train_steps=1300)


# --------------------------------------------------------------------------------------------
# profiles


@dataclass(frozen=True)
class Profile:
    """Every setting of one protocol run (all of it is written into the JSON and the page)."""

    name: str
    simulator: str = "gait31"
    num_users: int = 31
    image_size: int = 32
    per_user: int = 100  # recordings per user; the last `num_test` of each are the test split
    num_test: int = 20
    data_seed: int = 1
    train_seed: int = 0
    sample_seed: int = 1234
    samples_per_user: int = 32
    budget: GeneratorBudget = ALL_DATA_BUDGET
    recogniser: dict = field(default_factory=lambda: dict(KSHOT_RECOGNISER))  # time_pool: image_size / 16
    recogniser_train: RecogniserTrainConfig = RecogniserTrainConfig()
    k: int = 10
    m: int | None = None  # None: the default recipe's M = m_per_k x K
    aug_seeds: tuple = (0, 1, 2, 3, 4, 5)
    baseline_aug_seeds: tuple = (0, 1, 2)  # the single-stage generator's gain, for the two-stage >= single-stage goal
    aug_budget: GeneratorBudget = PROTOCOL_BUDGET
    device_note: str = "CPU"


def profiles() -> dict[str, Profile]:
    """The quality protocol's profiles by name.

    full: gait31 at 32 px (the CPU protocol); full128: 128 px through the VQGAN latent (CPU);
    gpu256_latent: 256 px through the latent (a GPU); gpu: 256 px in pixels (a GPU); smoke and
    smoke_latent: tiny runs of the same phases that prove the pixel and latent paths run.
    """
    # the quick demo's sizes, with its own step counts
    smoke_budget = replace(QUICK_BUDGET, prior_train_steps=40, decoder_batch_size=8, warmup_steps=5)
    gpu_budget = GeneratorBudget(
        clip_train_steps=3000, decoder_train_steps=20000, prior_train_steps=10000, batch_size=64, decoder_batch_size=32, lr=3e-4,
        warmup_steps=500,
        clip=dict(dim_latent=128, dim_image=256, dim_text=128, encoder_widths=(32, 64, 128, 256, 256), token_grid=4),
        decoder=dict(dim=64, dim_mults=(1, 2, 4, 8), num_resnet_blocks=2, attn_heads=4, attn_dim_head=32,
                     timesteps=1000, sample_timesteps=50, num_image_tokens=4),
        prior=dict(depth=6, heads=8, dim_head=32, timesteps=1000, sample_timesteps=64),
        sampling=SamplingConfig(decoder_steps=50, prior_steps=64))
    # the CPU VQGAN's shape (a 256 px image becomes a 16 x 64 x 64 latent), trained longer
    gpu_vqgan = cpu_vqgan_sizes(4)
    tiny_vqgan = dict(dim=8, num_resnet_blocks=1, resnet_groups=4, codebook_size=16, codebook_dim=4, layers=1,
                      layer_mults=(1,), quantize=False)
    return {
        "full": Profile(name="full"),
        "smoke": Profile(
            name="smoke", num_users=4, image_size=16, per_user=30, num_test=6, samples_per_user=20, budget=smoke_budget,
            recogniser=dict(widths=(8, 16), feature_dim=16), recogniser_train=RecogniserTrainConfig(steps=60, batch_size=16),
            k=4, m=10, aug_seeds=(0, 1, 2), baseline_aug_seeds=(0,), aug_budget=smoke_budget),
        "full128": Profile(
            name="full128", image_size=128, budget=LATENT128_BUDGET, aug_budget=LATENT128_KSHOT_BUDGET,
            aug_seeds=(0, 1, 2), baseline_aug_seeds=()),
        # a tiny latent run of the same phases: proves the 128 px profile's path runs (tests)
        "smoke_latent": Profile(
            name="smoke_latent", num_users=4, image_size=16, per_user=30, num_test=6, samples_per_user=20,
            budget=replace(smoke_budget, vqgan_train_steps=3, vqgan=tiny_vqgan), recogniser=dict(widths=(8, 16), feature_dim=16),
            recogniser_train=RecogniserTrainConfig(steps=20, batch_size=8), k=4, m=4, aug_seeds=(0,),
            baseline_aug_seeds=(0,), aug_budget=replace(smoke_budget, vqgan_train_steps=3, vqgan=tiny_vqgan)),
        "gpu256_latent": Profile(
            name="gpu256_latent", image_size=256, per_user=200, num_test=40, samples_per_user=64,
            budget=replace(gpu_budget, vqgan_train_steps=5000, vqgan=gpu_vqgan),
            recogniser=dict(KSHOT_RECOGNISER), recogniser_train=RecogniserTrainConfig(steps=3000, batch_size=32),
            aug_budget=replace(gpu_budget, clip_train_steps=1000, decoder_train_steps=4000, prior_train_steps=3000,
                               sampling=SamplingConfig(decoder_steps=25, prior_steps=25), vqgan_train_steps=2000,
                               vqgan=gpu_vqgan),
            device_note="one lent GPU (256 x 256 through a VQGAN latent at f = 4; not run on the CPU machine)"),
        "gpu": Profile(
            name="gpu", image_size=256, per_user=200, num_test=40, samples_per_user=64, budget=gpu_budget,
            recogniser=dict(widths=(16, 32, 64, 64, 64), feature_dim=64),
            recogniser_train=RecogniserTrainConfig(steps=1500, batch_size=32),
            aug_budget=replace(gpu_budget, clip_train_steps=1000, decoder_train_steps=4000, prior_train_steps=3000,
                               sampling=SamplingConfig(decoder_steps=25, prior_steps=25)),
            device_note="one lent GPU (256 x 256; not run on the CPU machine)"),
    }


PROFILE_NAMES = ("full", "full128", "smoke", "smoke_latent", "gpu", "gpu256_latent")


@dataclass(frozen=True)
class CascadeProfile:
    """Every setting of one run of the 256 px cascade comparison (written into its JSON).

    base_budget: the base chain (pixels, at `base_size`); latent_budget: the chain at full size
    through a VQGAN latent, None to leave the latent set out; upsampler: `UpsamplerConfig` size
    fields; samples_per_user: per set, as many as each user's test images (the FID/KID sets match).
    """

    name: str
    num_users: int = 8
    per_user: int = 40
    num_test: int = 10
    size: int = 256
    base_size: int = 64
    data_seed: int = 1
    seed: int = 0
    sample_seed: int = 1234
    samples_per_user: int = 10
    base_budget: GeneratorBudget = field(default_factory=lambda: V_ZSNR_BUDGET)
    latent_budget: GeneratorBudget | None = None
    upsampler: dict = field(default_factory=lambda: dict(dim=16))
    upsampler_train_steps: int = 900
    upsampler_batch_size: int = 16
    recogniser: dict = field(default_factory=lambda: dict(KSHOT_RECOGNISER))
    recogniser_train: RecogniserTrainConfig = RecogniserTrainConfig(steps=800)
    cas: bool = True
    device_note: str = "2 CPU cores"
    expected: str = ""


# the cascade's base decoder: v-prediction on a zero-terminal-SNR schedule with min-SNR-5 weights
# (Lin et al. 2024, Hang et al. 2023); the eps + P2 base washes out 0.93 of its backgrounds at 64 px
# (`quality.py --profile cascade256`, docs/results.md)
V_ZSNR_DECODER = dict(prediction="v", zero_terminal_snr=True, loss_weighting="min_snr", min_snr_gamma=5.0)
V_ZSNR_BUDGET = replace(PROTOCOL_BUDGET, decoder={**PROTOCOL_BUDGET.decoder, **V_ZSNR_DECODER})


def cascade_profiles() -> dict[str, CascadeProfile]:
    """The 256 px cascade comparison's profiles (benchmarks/cascade256.py): smoke (16 -> 32 px,
    seconds), cascade256 (2 CPU cores) and gpu256 (31 users, a GPU)."""
    # 256 px through a VQGAN at f = 8 (32 x 32 latent: what a 128 px decoder at f = 4 costs a step)
    latent_cpu = replace(PROTOCOL_BUDGET, vqgan_train_steps=1000, vqgan=cpu_vqgan_sizes(8))
    gpu_base = GeneratorBudget(
        clip_train_steps=3000, decoder_train_steps=20000, prior_train_steps=10000, batch_size=64, decoder_batch_size=32,
        lr=3e-4, warmup_steps=500,
        clip=dict(dim_latent=128, dim_image=256, dim_text=128, encoder_widths=(32, 64, 128, 256), token_grid=4),
        decoder=dict(dim=64, dim_mults=(1, 2, 4, 8), num_resnet_blocks=2, attn_heads=4, attn_dim_head=32,
                     timesteps=1000, sample_timesteps=50, num_image_tokens=4, **V_ZSNR_DECODER),
        prior=dict(depth=6, heads=8, dim_head=32, timesteps=1000, sample_timesteps=64),
        sampling=SamplingConfig(decoder_steps=50, prior_steps=64))
    tiny = replace(QUICK_BUDGET, prior_train_steps=20, decoder_batch_size=8, warmup_steps=2)
    return {
        "smoke": CascadeProfile(
            name="smoke", num_users=3, per_user=8, num_test=2, size=32, base_size=16, samples_per_user=2,
            base_budget=tiny, latent_budget=replace(tiny, vqgan_train_steps=3, vqgan=dict(
                dim=8, num_resnet_blocks=1, resnet_groups=4, codebook_size=16, codebook_dim=4, layers=1,
                layer_mults=(1,), quantize=False)),
            upsampler=dict(dim=8, dim_mults=(1, 2), attn_heads=1, attn_dim_head=8), upsampler_train_steps=3,
            upsampler_batch_size=4, recogniser=dict(widths=(4, 8), feature_dim=4),
            recogniser_train=RecogniserTrainConfig(steps=10, batch_size=8), device_note="smoke (any machine)"),
        "cascade256": CascadeProfile(name="cascade256", latent_budget=latent_cpu,
                                     expected="measured: see docs/results.md"),
        "gpu256": CascadeProfile(
            name="gpu256", num_users=31, per_user=200, num_test=40, samples_per_user=40, base_budget=gpu_base,
            latent_budget=replace(gpu_base, vqgan_train_steps=5000, vqgan=cpu_vqgan_sizes(4)),
            upsampler=dict(dim=32), upsampler_train_steps=20000, upsampler_batch_size=32,
            recogniser_train=RecogniserTrainConfig(steps=3000, batch_size=32),
            device_note="one GPU (not yet run on one)",
            expected="an estimate until a GPU run measures it: about 2-4 h on one H100 (upsampler 20k steps, "
                     "two chains of 20k decoder steps)"),
    }


# the cascade comparison's profiles that benchmarks/quality.py --profile hands to benchmarks/cascade256.py
CASCADE_PROFILE_NAMES = ("cascade256", "gpu256")


def simulated_sets(num_users: int, per_user: int, image_size: int, data_seed: int, num_test: int,
                   simulator: str = "gait31") -> dict:
    """Simulated users split by recording: {"train": (images, ids), "test": (images, ids)}, each
    user's last `num_test` recordings the test set (`simulate`, then `split`)."""
    images, ids = simulate(num_users, per_user, image_size, data_seed, get_profile(simulator))
    parts = split(ids, per_user, num_test, 0)
    return {name: (images[parts[name]], ids[parts[name]]) for name in ("train", "test")}


def protocol_data(p: Profile) -> dict:
    """A profile's data: its users simulated in memory (through the colormap round trip the data
    loader does) and each user's last `num_test` recordings held out as test.

    Returns:
        {"sets": {"train": (images, ids), "test": (images, ids)}, "label_map": the LabelMap as a
        dict (users named ID_1, ID_2, ...)}.
    """
    sets = simulated_sets(p.num_users, p.per_user, p.image_size, p.data_seed, p.num_test, p.simulator)
    label_map = LabelMap(names=tuple(f"ID_{u + 1}" for u in range(p.num_users)), ids=tuple(range(1, p.num_users + 1)),
                         layout="hierarchical")
    return {"sets": sets, "label_map": label_map.to_dict()}


def recogniser_config(p: Profile) -> RecogniserConfig:
    """The profile's recogniser shape; the K-shot shape pools time by image_size / 16."""
    return sized_recogniser_config(p.recogniser, p.num_users, p.image_size)


def sized_recogniser_config(shape: dict, num_users: int, image_size: int) -> RecogniserConfig:
    """A recogniser of this shape for 1-channel images of this size; the K-shot shape pools time by
    image_size / 16, as augment_ablation.py does."""
    shape = dict(shape)
    if "time_pool" in shape or "pool_rows" in shape:
        shape["time_pool"] = max(1, image_size // 16)
    return RecogniserConfig(num_users=num_users, channels=1, image_size=image_size, **shape)


def reference_recogniser(p: Profile, data: dict, work: Path):
    """The reference recogniser: all real train images of `protocol_data(p)`, cached as
    `work/recogniser.pt` (reused while its training set and settings are unchanged)."""
    return cached_recogniser(Path(work) / "recogniser.pt", *data["sets"]["train"], config=recogniser_config(p),
                             train=p.recogniser_train, label_map=data["label_map"])


# --------------------------------------------------------------------------------------------
# goals


def _num(v):
    return v if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else None


def kinematic_ratios(m: dict) -> tuple:
    """(worst error / its limit, errors, real-vs-real floors, limits) of one generator's metrics
    (`evaluate_samples`' result). The goal is a relative error under 10 %; a quantity whose
    real-vs-real error is itself above 10 % (gait31's torso: users walk towards and away, so its
    mean Doppler is near zero and relative errors explode) is held to its floor."""
    errs = {k: _num(v) for k, v in m["kinematics"]["gen"]["mean_rel_error"].items()}
    floors = {k: _num(v) for k, v in m["kinematics"]["floor"]["mean_rel_error"].items()}
    limits = {k: max(0.10, floors.get(k) or 0.0) for k in errs}
    worst = max((v / limits[k] for k, v in errs.items() if v is not None), default=None)
    return worst, errs, floors, limits
