"""What `dalle2-md demo` runs (the command itself is in cli/demo.py): simulate a small data set,
train embedding -> [VQGAN] -> decoder -> prior through `training.fit.train_two_stage`, draw the
per-user grid and an interpolation strip, judge the samples with a small recogniser and write
`report.md` (pictures, settings, timings, memory).

Owns: DemoConfig (a `GeneratorBudget` plus the simulated data set and the report's sample
counts), run_demo, demo_metrics.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dalle2_md.training.fit import train_two_stage
from dalle2_md.generation.samples import load_generator, write_interpolation, write_samples
from dalle2_md.training.options import DataOptions, load_train_data
from dalle2_md.defaults import DECODER_FORMULATION
from dalle2_md.training.presets import CPU_DECODER_SIZES, QUICK_BUDGET, GeneratorBudget
from dalle2_md.training.stages import final_path, save_two_stage
from dalle2_md.utils import say


@dataclass(frozen=True, kw_only=True)
class DemoConfig(GeneratorBudget):
    """Every size of `dalle2-md demo` in one place (`quick()` is the CI smoke-test variant): the
    generator's `GeneratorBudget` fields (sizes, steps, sampling) plus these. Its decoder is
    trained as `train-decoder` trains one (`defaults.DECODER_FORMULATION`).

    Args:
        num_users, images_per_user, image_size: the simulated data set.
        samples_per_user: images per user in the grid.
        eval_samples_per_user: generated images per user the recogniser judges.
        recogniser_steps: training steps of that recogniser.
        interp_steps: frames of the interpolation strip.
    """

    decoder: dict = field(default_factory=lambda: {**CPU_DECODER_SIZES, **DECODER_FORMULATION})
    num_users: int = 6
    images_per_user: int = 30
    # 64 px over the continuous f = 4 VQGAN latent (16 x 16 x 16): cheaper than the 32 px pixel demo
    # and its samples follow their user (benchmarks/bench_demo.py, see docs/results.md)
    image_size: int = 64
    vqgan_train_steps: int = 400
    samples_per_user: int = 4
    eval_samples_per_user: int = 8
    recogniser_steps: int = 300
    interp_steps: int = 8

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A few minutes of CPU at most: proves the pipeline runs, not that it learns."""
        return cls(**{**QUICK_BUDGET.budget_fields(), "decoder": {**QUICK_BUDGET.decoder, **DECODER_FORMULATION}},
                   num_users=3, images_per_user=8, image_size=16, samples_per_user=3, interp_steps=5,
                   eval_samples_per_user=6, recogniser_steps=30)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024**2)


def run_demo(out_dir: str | Path = "outputs/demo", config: DemoConfig | None = None, *, seed: int = 0,
             progress: bool = True) -> dict:
    """Simulate a small data set, train embedding -> decoder -> prior, draw the per-user grid and
    an interpolation strip, and write `<out_dir>/report.md` (pictures, settings, timings, memory).

    Args:
        out_dir: demo folder (its own earlier outputs are replaced).
        config: sizes; default `DemoConfig()`.
        seed: seed of the data, the training and the samples.
        progress: show progress bars.
    Returns:
        {"report": path, "timings": {stage: seconds}, "peak_rss_mb": float, "grid": path, "strip": path}
    """
    from dalle2_md.data.synthesize import synthesize_dataset

    config = config or DemoConfig()
    out = Path(out_dir)
    run_dir = out / "run"
    timings: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    data_dir = out / "data"
    timed("synth", lambda: synthesize_dataset(data_dir, num_users=config.num_users, images_per_user=config.images_per_user,
                                              image_size=config.image_size, seed=seed, progress=progress))
    data = DataOptions(data_root=str(data_dir), image_size=config.image_size, cache_dir=str(out / ".cache"))
    ds = timed("load", lambda: load_train_data(data, run_dir))

    images, user_indices = ds.tensors()
    models = train_two_stage(images, user_indices, num_users=len(ds.label_map), budget=config, seed=seed,
                             work_dir=run_dir, progress=progress)
    timings.update(models.seconds)
    save_two_stage(run_dir, models, ds)
    model = load_generator(prior_path=final_path(run_dir, "prior"), decoder_path=final_path(run_dir, "decoder"),
                           clip_path=final_path(run_dir, "clip"))
    samples = out / "samples"
    made = timed("generate", lambda: write_samples(
        model, samples, num_samples_per_user=config.samples_per_user, sample_steps=config.sampling.decoder_steps,
        prior_steps=config.sampling.prior_steps, seed=seed))
    names = ds.label_map.names
    strip = timed("interpolate", lambda: write_interpolation(
        model, samples, user_label_a=names[0], user_label_b=names[-1], steps=config.interp_steps, seed=seed,
        sample_steps=config.sampling.decoder_steps, prior_steps=config.sampling.prior_steps))["strip"]
    metrics = timed("evaluate", lambda: demo_metrics(model, ds, data, run_dir, config, seed))
    rss = peak_rss_mb()
    report = _write_demo_report(out, config, timings, rss, made["grid"], strip, data_dir, names, metrics)
    say(f"demo: wrote {report} ({sum(timings.values()):.0f}s, peak RSS {rss:.0f} MiB)")
    return {"report": report, "timings": timings, "peak_rss_mb": rss, "grid": made["grid"], "strip": strip,
            "metrics": metrics}


def demo_metrics(model, train_ds, data: DataOptions, run_dir: Path, config: DemoConfig, seed: int) -> dict:
    """Identity accuracy, domain FID and background defects of the demo's own samples: a small
    recogniser trained on the real train split judges real test images (A_real) and fresh samples
    (A_gen), and its features give the FID of samples vs real test and the floor of real train vs
    real test; the defect rate is the share of images whose background lies outside the real train
    images' 1-99 % range, for the samples and for the real test images."""
    from dalle2_md.data.dataset import MicroDopplerDataset
    from dalle2_md.evaluation.recogniser import accuracy
    from dalle2_md.evaluation.metrics import background_defects, background_range, domain_fid, min_fid_samples
    from dalle2_md.evaluation.recogniser import RecogniserConfig, RecogniserTrainConfig, train_recogniser

    test = MicroDopplerDataset(data.data_root, image_size=data.image_size, colormap=data.colormap, split="test",
                               split_file=run_dir / "split.json", label_map=train_ds.label_map)
    train_images, train_ids = train_ds.tensors()
    test_images, test_ids = test.tensors()
    num_users = len(train_ds.label_map)
    recogniser = train_recogniser(
        train_images, train_ids, num_users=num_users,
        config=RecogniserConfig(num_users=num_users, channels=train_ds.channels, image_size=train_ds.image_size,
                                widths=(8, 16, 32), feature_dim=16),
        train=RecogniserTrainConfig(steps=config.recogniser_steps, batch_size=32, seed=seed),
    )
    users = list(range(num_users))
    # the model's own channels (scalars for jet data), in the data layer's [-1, 1]
    fake = model.sample(users, num_samples_per_user=config.eval_samples_per_user, seed=seed + 1,
                        decoder_steps=config.sampling.decoder_steps, prior_steps=config.sampling.prior_steps, colorize=False) * 2 - 1
    fake_ids = torch.arange(num_users).repeat_interleave(config.eval_samples_per_user)
    a_real, _ = accuracy(recogniser, test_images, test_ids)
    a_gen, _ = accuracy(recogniser, fake, fake_ids)
    metrics = {"a_real": a_real, "a_gen": a_gen, "chance": 1 / num_users, "test_images": len(test_ids),
               "generated_images": len(fake_ids), "fid": None, "fid_floor": None}
    bounds = background_range(train_images)
    metrics["background_defects"] = background_defects(fake, bounds)["rate"]
    metrics["real_background_defects"] = background_defects(test_images, bounds)["rate"]
    if min(len(test_ids), len(fake_ids)) >= min_fid_samples(recogniser):
        metrics["fid"] = domain_fid(recogniser, test_images, fake)
        metrics["fid_floor"] = domain_fid(recogniser, test_images, train_images)
    return metrics


def _write_demo_report(out: Path, config: DemoConfig, timings: dict, rss: float, grid: Path, strip: Path,
                       data_dir: Path, names, metrics: dict) -> Path:
    from dalle2_md.utils import atomic_write, package_versions

    rel = lambda p: Path(p).relative_to(out).as_posix()
    lines = [
        "# dalle2-md demo",
        "",
        f"Simulated data: {config.num_users} users x {config.images_per_user} images at {config.image_size} px "
        f"(`{data_dir}`; contact sheet: ![real]({rel(data_dir / 'contact_sheet.png')})). "
        + (f"The decoder diffuses over the latent of a VQGAN trained {config.vqgan_train_steps} steps."
           if config.vqgan_train_steps else "The decoder diffuses over pixels."),
        "",
        f"## Generated samples: one row per user ({', '.join(names)})",
        "",
        f"![grid]({rel(grid)})",
        "",
        f"## Interpolation {names[0]} -> {names[-1]}",
        "",
        f"![interpolation]({rel(strip)})",
        "",
        "## How recognisable the samples are",
        "",
        f"A small recogniser trained on the real train split (chance {metrics['chance']:.2f}) identifies "
        f"{metrics['a_real']:.2f} of {metrics['test_images']} real test images (A_real) and "
        f"{metrics['a_gen']:.2f} of {metrics['generated_images']} generated ones (A_gen).",
        "",
        (f"Domain FID on its features, generated vs real test: {metrics['fid']:.2f} (floor, real train vs real "
         f"test: {metrics['fid_floor']:.2f})." if metrics["fid"] is not None else
         "Domain FID: too few test images for the recogniser's feature size."),
        "",
        f"Background defects (a noise floor outside the real train images' 1-99 % range): "
        f"{metrics['background_defects']:.2f} of the generated images, {metrics['real_background_defects']:.2f} "
        "of the real test images.",
        "",
        "## Timings",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        f"| **total** | **{sum(timings.values()):.1f}** |",
        "",
        f"Peak resident memory: {rss:.0f} MiB. torch threads: {torch.get_num_threads()}.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2),
        "```",
        "",
        f"Versions: {json.dumps(package_versions())}",
        "",
    ]
    path = out / "report.md"
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))
    return path

