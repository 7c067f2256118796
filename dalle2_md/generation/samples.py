"""Generation from trained bundles: `load_generator` (a chained bundle, or a prior + decoder pair
checked against each other, with the upsampler beside the decoder: `find_upsampler`),
`write_samples` (PNGs named by user label plus a grid, at the chain's `image_size`) and
`write_interpolation` (a strip and frames between two users). Users are given by their original
labels ("ID_5", `user_labels`); the model turns them into contiguous indices. `sample_tensors`
draws N per user in model space from either generator kind, for the evaluation and recipes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from dalle2_md.data.display import GRID_MIN_TILE, save_grid
from dalle2_md.defaults import DEFAULTS, SamplingConfig
from dalle2_md.utils import UserError, exists, say, to_signed

if TYPE_CHECKING:
    from dalle2_md.generation.fastpath import FastPaths

def load_generator(*, model_path=None, prior_path=None, decoder_path=None, clip_path=None, device: str = "cpu",
                   upsampler_path=None, output_size: int | None = None):
    """A `MicroDopplerDALLE2` from a chained bundle or from a prior + decoder pair (refused when
    they were trained on different embedding models), with its upsampler when there is one.

    Args:
        model_path: a "dalle2" bundle (exclusive with the part paths).
        prior_path, decoder_path: prior_final.pt and decoder_final.pt.
        clip_path: optional embedding model, checked against both.
        device: "cpu", "cuda", "cuda:1", or "auto".
        upsampler_path: an "upsampler" bundle applied after the decoder; None: the
            upsampler_final.pt beside `decoder_path` if there is one; "none": no upsampler.
        output_size: side of the images written (bicubic resize of the final image); None: the
            upsampler's output size, else the decoder's image size.
    """
    from dalle2_md.models.chain import MicroDopplerDALLE2

    if exists(model_path) == (exists(prior_path) or exists(decoder_path)):
        raise UserError("give either --model_path, or --decoder_path and --prior_path (not both).")
    if exists(model_path):
        model = MicroDopplerDALLE2.load(model_path)
    else:
        missing = [flag for flag, p in (("--decoder_path", decoder_path), ("--prior_path", prior_path)) if not exists(p)]
        if missing:
            raise UserError(f"generation needs {' and '.join(missing)} (decoder_final.pt / prior_final.pt of your runs).")
        model = MicroDopplerDALLE2.from_parts(prior_path=prior_path, decoder_path=decoder_path, clip_path=clip_path)
    model.upsampler_path = find_upsampler(upsampler_path, decoder_path)
    if exists(model.upsampler_path):
        from dalle2_md.models.upsampler import MicroDopplerUpsampler

        model.attach_upsampler(MicroDopplerUpsampler.load(model.upsampler_path))
    model.output_size = output_size
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        where = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or auto.") from None
    if where.type == "cuda" and (not torch.cuda.is_available() or (where.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {device}: no such CUDA GPU here ({torch.cuda.device_count()} visible); "
                        "use --device cpu or auto.")
    return model.to(where).eval()


def find_upsampler(upsampler_path, decoder_path) -> Path | None:
    """The upsampler bundle to apply: `upsampler_path`, or else upsampler_final.pt beside
    `decoder_path` when present (said on stderr); None for "none" or when there is none."""
    if isinstance(upsampler_path, str) and upsampler_path.lower() == "none":
        return None
    if exists(upsampler_path):
        return Path(upsampler_path)
    beside = Path(decoder_path).parent / "upsampler_final.pt" if exists(decoder_path) else None
    if exists(beside) and beside.is_file():
        say(f"upsampler: {beside} (beside the decoder; --upsampler_path none leaves it out)")
        return beside
    return None


def _label_map(model):
    from dalle2_md.data.labels import LabelMap

    if exists(model.label_map):
        return LabelMap.from_dict(model.label_map)
    return LabelMap.from_ids(range(model.num_users))


def _save_png(image01: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    from dalle2_md.utils import atomic_write

    array = (image01.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    with atomic_write(path) as f:
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(f, format="PNG")
    return path


GRID_SAMPLES_PER_USER = 8  # grid.png shows at most this many samples of each user (bounded memory)


def _sampling_kwargs(*, cond_scale, prior_cond_scale, sample_steps, prior_steps, seed, eta, sampler) -> dict:
    from dalle2_md.sampling import resolve_sampler

    resolve_sampler(sampler, eta)  # a bad name or combination stops here, before any work
    return dict(cond_scale=cond_scale, prior_cond_scale=prior_cond_scale, decoder_steps=sample_steps,
                prior_steps=prior_steps, seed=seed, eta=eta, sampler=sampler)


def default_batch_size(image_size: int) -> int:
    """Images sampled at once when none is given: 64 up to 128 px, halved for each doubling above,
    so 31 x 200 images at 256 px stay within 4 GB (`benchmarks/bench_generate.py --attention`)."""
    return max(8, 64 * 128 // max(128, image_size))


def write_samples(model, output_dir, *, user_labels: Sequence[str] | None = None, num_samples_per_user: int = 4,
                  cond_scale: float = DEFAULTS.cond_scale, prior_cond_scale: float = DEFAULTS.prior_cond_scale,
                  sample_steps: int | None = DEFAULTS.decoder_steps, prior_steps: int | None = DEFAULTS.prior_steps,
                  seed: int = 0, batch_size: int | None = None, save_npy: bool = False, eta: float = DEFAULTS.eta,
                  sampler: str | None = None, fast: "FastPaths | None" = None, progress: bool = False) -> dict:
    """Sample spectrograms for users and write them as PNGs named with the original labels
    (`ID_5_000.png`) as each batch finishes, plus `grid.png` with one row per user (its first
    `GRID_SAMPLES_PER_USER` samples). Batches mix users and samples up to `batch_size` images;
    memory is bounded by the batch, not by the number of images.

    Args:
        model: a `MicroDopplerDALLE2`.
        output_dir: folder to write into.
        user_labels: original labels ("ID_5", "5" or 5), not indices; None = every user the
            model knows.
        num_samples_per_user: images per user.
        cond_scale, prior_cond_scale: decoder / prior guidance (1 = none).
        sample_steps, prior_steps: network evaluations of the decoder / prior (None: the
            model's `sample_timesteps`).
        seed: same seed, same images; an image depends only on (seed, user label, sample index)
            and the settings, never on the other users asked for or on `batch_size`.
        batch_size: most images sampled at once (None: `default_batch_size` of the output size).
        save_npy: also save each scalar spectrogram (H, W) in [0, 1] as .npy.
        eta: DDIM eta (> 0 selects the ddim sampler).
        sampler: "ddim" or "dpmpp_2m" (default `sampling.DEFAULT_SAMPLER`).
        fast: GPU fast paths (`fastpath.FastPaths`); each falls back on a CPU with one line.
        progress: show a progress bar.
    Returns:
        {"images": [paths], "grid": path, "npy": [paths], "seconds": float, "images_per_s": float}
    """
    import numpy as np
    from tqdm.auto import tqdm

    from dalle2_md.generation.fastpath import FastPaths, apply_fast_paths

    batch_size = default_batch_size(model.image_size) if batch_size is None else batch_size
    if num_samples_per_user < 1 or batch_size < 1:
        raise UserError(f"--num_samples_per_user and --batch_size must be at least 1 (got {num_samples_per_user} "
                        f"and {batch_size}).")
    sampling = _sampling_kwargs(cond_scale=cond_scale, prior_cond_scale=prior_cond_scale, sample_steps=sample_steps,
                                prior_steps=prior_steps, seed=seed, eta=eta, sampler=sampler)
    lm = _label_map(model)
    indices = [model.user_index(u) for u in user_labels] if user_labels else list(range(model.num_users))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = apply_fast_paths(model, model.device, fast or FastPaths(), say=say)
    pairs = [(index, j) for index in indices for j in range(num_samples_per_user)]
    grid_per_user = min(num_samples_per_user, GRID_SAMPLES_PER_USER)
    written, npys, grid_tiles = [], [], []
    start = time.perf_counter()
    with tqdm(total=len(pairs), unit="img", desc="generate", disable=not progress) as bar:
        for first in range(0, len(pairs), batch_size):
            batch = pairs[first:first + batch_size]
            with context:
                raw = model.sample([u for u, _ in batch], sample_indices=[j for _, j in batch], colorize=False,
                                   **sampling)
            raw = raw.float().cpu()
            shown = model.colorize(raw)
            for (index, j), scalar, image in zip(batch, raw, shown):
                stem = f"{lm.file_stem(index)}_{j:03d}"
                written.append(_save_png(image, out / f"{stem}.png"))
                if save_npy and scalar.shape[0] == 1:
                    npys.append(out / f"{stem}.npy")
                    np.save(npys[-1], scalar[0].numpy().astype(np.float32))
                if j < grid_per_user:
                    grid_tiles.append(image)
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    rate = len(pairs) / max(seconds, 1e-9)
    say(f"generate: {len(pairs)} images in {seconds:.1f} s ({rate:.2f} images/s, batches of up to {batch_size})")
    grid = save_grid(torch.stack(grid_tiles), out / "grid.png", nrow=grid_per_user, colormap="none", min_tile=GRID_MIN_TILE)
    return {"images": written, "grid": grid, "npy": npys, "seconds": seconds, "images_per_s": rate}


def write_interpolation(model, output_dir, *, user_label_a: str, user_label_b: str, steps: int = 8, seed: int = 0,
                        cond_scale: float = DEFAULTS.cond_scale, prior_cond_scale: float = DEFAULTS.prior_cond_scale,
                        sample_steps: int | None = DEFAULTS.decoder_steps,
                        prior_steps: int | None = DEFAULTS.prior_steps, sampler: str | None = None) -> dict:
    """Frames between sample 0 of two users (ends equal to those plain samples, see
    `MicroDopplerDALLE2.interpolation_frames`): a strip `interpolation_<a>_<b>.png` and its
    frames in `interpolation_<a>_<b>/frame_000.png`.

    Args:
        model: a `MicroDopplerDALLE2`.
        output_dir: folder to write into.
        user_label_a, user_label_b: original labels of the two users ("ID_5", "5" or 5).
        steps: frames, ends included.
        seed, cond_scale, prior_cond_scale, sample_steps, prior_steps, sampler: as for `write_samples`
            (always deterministic: eta = 0).
    Returns:
        {"strip": path, "frames": [paths]}
    """
    _sampling_kwargs(cond_scale=cond_scale, prior_cond_scale=prior_cond_scale, sample_steps=sample_steps,
                     prior_steps=prior_steps, seed=seed, eta=0.0, sampler=sampler)
    lm = _label_map(model)
    a, b = model.user_index(user_label_a), model.user_index(user_label_b)
    frames = model.interpolation_frames(a, b, steps=steps, seed=seed, cond_scale=cond_scale, prior_cond_scale=prior_cond_scale,
                               prior_steps=prior_steps, decoder_steps=sample_steps, sampler=sampler).cpu()
    name = f"interpolation_{lm.name_of(a)}_{lm.name_of(b)}"
    out = Path(output_dir)
    paths = [_save_png(f, out / name / f"frame_{i:03d}.png") for i, f in enumerate(frames)]
    strip = save_grid(frames, out / f"{name}.png", nrow=steps, colormap="none", min_tile=GRID_MIN_TILE)
    return {"strip": strip, "frames": paths}


@torch.no_grad()
def sample_tensors(model, user_indices: Sequence[int], num_samples_per_user: int, *,
                   sampling: SamplingConfig = DEFAULTS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of either generator kind (anything with `sample_users`: the chain or the
    single-stage baseline) in model space, one user at a time (bounded memory; the keyed noise
    makes a user's samples independent of the others anyway).

    Returns:
        (images (len(user_indices) * n, C, H, W) in [-1, 1], their user indices), user-major.
    """
    out = [to_signed(model.sample_users([u], num_samples_per_user, sampling=sampling, seed=seed).cpu())
           for u in user_indices]
    ids = torch.tensor([u for u in user_indices for _ in range(num_samples_per_user)], dtype=torch.long)
    return torch.cat(out), ids
