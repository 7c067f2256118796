"""What `dalle2-md check` (= `test_micro_doppler.py`) runs; the command itself is in cli/check.py.

The data is read as training reads it (the train split, then every file of every split, so an
unreadable file anywhere is named), every stage trains a few steps through the same stage
functions the training commands run, then one sample; one `Check` (name, passed, detail, files
it skipped) per step, never raising. A file that cannot be decoded is skipped, named and
counted, as training skips it; it does not fail the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dalle2_md.generation.samples import load_generator, write_samples
from dalle2_md.training.presets import QUICK_BUDGET
from dalle2_md.training.options import DataOptions, load_train_data, with_defaults
from dalle2_md.training.stages import final_path, train_clip_stage, train_decoder_stage, train_prior_stage, train_vqgan_stage
from dalle2_md.training.loop import TrainConfig
from dalle2_md.utils import DataError, UserError

# the self-check's VQGAN: the smallest that trains (sizes follow vqgan.VQGanConfig)
CHECK_VQGAN_SIZES = dict(dim=8, layers=1, codebook_size=32, codebook_dim=8)


@dataclass
class Check:
    """One step of the self-check: passed or not, what it found, and the files it skipped as
    unreadable (paths relative to the data root)."""

    name: str
    ok: bool
    detail: str = ""
    skipped: tuple[str, ...] = ()


@dataclass
class Checklist:
    """The checks run so far, and what they left for the later ones (`state`)."""

    work: Path
    checks: list[Check] = field(default_factory=list)
    state: dict = field(default_factory=dict)

    def run(self, name: str, fn) -> None:
        """Run one check (`fn` returns its detail, or (detail, files it skipped)); after a failure
        the rest are reported as skipped."""
        if self.checks and not all(c.ok for c in self.checks):
            self.checks.append(Check(name, False, "skipped: an earlier check failed"))
            return
        try:
            found = fn() or ""
            detail, skipped = found if isinstance(found, tuple) else (found, ())
            self.checks.append(Check(name, True, detail, tuple(skipped)))
        except Exception as e:  # a check reports every failure; it must not stop the report
            self.checks.append(Check(name, False, f"{type(e).__name__}: {e}"))


def run_checks(work_dir: str | Path, *, data_root: str | None = None, num_users: int = 5, image_size: int | None = None,
               steps: int = 2, flat_structure: bool = False) -> list[Check]:
    """Run every stage for a few steps and sample once; one `Check` per step, never raising.

    Args:
        work_dir: scratch folder for the run.
        data_root: the user's data; None builds a simulated data set of `num_users` users.
        num_users: users to simulate, or the number expected in `data_root`.
        image_size: side the images are read at (default 32 simulated, 64 for own data).
        steps: training steps per stage.
        flat_structure: require the flat layout.
    """
    work = Path(work_dir)
    size = image_size or (32 if data_root is None else 64)
    checks = Checklist(work=work)
    if data_root is None:
        data_root = str(work / "data")
        checks.run("simulated data set", lambda: _simulate(data_root, num_users, size, flat_structure))
    options = DataOptions(data_root=data_root, num_users=num_users, image_size=size, flat_structure=flat_structure,
                          cache_dir=str(work / ".cache"))
    checks.run("data layout and images per user", lambda: _check_data(checks, options))
    checks.run("every file, every split", lambda: _check_every_file(options))
    checks.run("label map", lambda: _describe_label_map(checks))
    _check_stages(checks, TrainConfig(max_steps=steps, batch_size=8, lr=1e-3, log_every=1), size)
    checks.run("sample from prior + decoder", lambda: _check_sample(checks))
    return checks.checks


def _simulate(data_root: str, num_users: int, size: int, flat_structure: bool) -> str:
    from dalle2_md.data.synthesize import synthesize_dataset

    s = synthesize_dataset(data_root, num_users=num_users, images_per_user=6, image_size=size, progress=False,
                           layout="flat" if flat_structure else "hierarchical")
    return f"{s['num_images']} simulated spectrograms in {data_root}"


def _check_data(checks: Checklist, options: DataOptions) -> str:
    ds = load_train_data(options, checks.work / "run")
    checks.state["ds"] = ds
    counts = dict(zip(ds.label_map.names, ds.counts()))
    few = [n for n, c in counts.items() if c < 2]
    if few:
        raise DataError(f"users with fewer than 2 training images: {few}")
    # what could not be read is named by the next check, which reads every split
    return f"layout {ds.layout}; training images per user: {counts}"


def _check_every_file(options: DataOptions) -> tuple[str, list[str]]:
    """Decode every file of every split (the train split is all the training commands read) as
    training decodes it; a file that cannot be read is skipped and named, as training does.
    Returns the detail and the skipped files (relative to the data root)."""
    import warnings

    from dalle2_md.data.dataset import MicroDopplerDataset

    options = with_defaults(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the check's own line names them
        ds = MicroDopplerDataset(options.data_root, image_size=options.image_size, colormap=options.colormap,
                                 num_users=options.num_users)
    named = [(_relative(ds.root, path), why) for path, why in ds.skipped]
    detail = f"{len(ds)} of {len(ds) + len(named)} files decoded at {ds.channels}x{ds.image_size}x{ds.image_size}"
    if named:
        detail += (f"; skipped {len(named)} unreadable file(s), as training skips them: "
                   + ", ".join(f"{rel} ({why})" for rel, why in named))
    return detail, [rel for rel, _ in named]


def _relative(root: Path, path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _describe_label_map(checks: Checklist) -> str:
    names = checks.state["ds"].label_map.names
    return (f"{len(names)} users -> {checks.work / 'run' / 'label_map.json'}: "
            f"{', '.join(f'{n}->{i}' for i, n in enumerate(names))}")


def _check_stages(checks: Checklist, tc: TrainConfig, size: int) -> None:
    """Each training stage through the function its command runs, with a finite last loss."""
    run, cache, state = checks.work / "run", checks.work / ".cache", checks.state

    def stage(name, fn):
        def go():
            done = fn()
            state[name] = done
            loss = done.train.losses[-1] if done.train and done.train.losses else float("nan")
            if not math.isfinite(loss):
                raise UserError(f"loss is not finite ({loss})")
            return f"{done.train.step} steps, last loss {loss:.4f} -> {done.final}"
        checks.run(f"train {name}", go)

    kw = dict(overwrite=True, progress=False)
    dec_sizes = {**QUICK_BUDGET.decoder, "dim_mults": (1, 2) if size % 2 == 0 else (1,)}
    stage("clip", lambda: train_clip_stage(run, state["ds"], tc, sizes=QUICK_BUDGET.clip, **kw))
    stage("vqgan", lambda: train_vqgan_stage(run, state["ds"], tc, sizes=CHECK_VQGAN_SIZES, **kw))
    stage("decoder", lambda: train_decoder_stage(run, state["ds"], state["clip"].model, tc, sizes=dec_sizes,
                                                 cache_dir=cache, **kw))
    stage("latent decoder", lambda: train_decoder_stage(
        run / "latent", state["ds"], state["clip"].model, tc, sizes={**dec_sizes, "dim_mults": (1,)},
        vqgan_path=state["vqgan"].final, cache_dir=cache, **kw))
    stage("prior", lambda: train_prior_stage(run, state["ds"], state["clip"].model, tc, sizes=QUICK_BUDGET.prior,
                                             cache_dir=cache, **kw))


def _check_sample(checks: Checklist) -> str:
    run = checks.work / "run"
    model = load_generator(prior_path=final_path(run, "prior"), decoder_path=final_path(run, "decoder"))
    made = write_samples(model, checks.work / "samples", user_labels=[checks.state["ds"].label_map.names[0]],
                         num_samples_per_user=1, sample_steps=4, prior_steps=4)
    return f"wrote {made['images'][0]}"
