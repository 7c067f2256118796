"""The `demo` command: the whole pipeline on a small simulated data set, with a report (what it
runs is cli/demo_run.py)."""

from __future__ import annotations

import click

from dalle2_md.cli.options import opt, progress_option
from dalle2_md.utils import say


@click.command("demo")
@opt("output_dir", type=click.Path(path_type=str), default="outputs/demo", help="Demo folder (its earlier outputs are replaced).")
@opt("quick", is_flag=True, default=False, help="Tiny sizes for a smoke test (about a minute on 2 CPU cores).")
@opt("seed", type=int, default=0, help="Seed of the data, training and samples.")
@opt("image_size", type=int, default=None, help="Side of the simulated images [default: 64, --quick 16].")
@opt("vqgan_steps", type=int, default=None,
     help="Train a VQGAN (f = 4) this many steps and diffuse over its latent; 0: over pixels [default: 400, --quick 0].")
@progress_option()
def demo_cmd(output_dir, quick, seed, image_size, vqgan_steps, progress):
    """Simulate a small data set, train embedding -> [VQGAN] -> decoder -> prior, generate a per-user
    grid and an interpolation strip, and write <output_dir>/report.md with pictures, settings and
    timings."""
    from dataclasses import replace

    from dalle2_md.cli.demo_run import DemoConfig, run_demo

    config = DemoConfig.quick() if quick else DemoConfig()
    changes = {k: v for k, v in (("image_size", image_size), ("vqgan_train_steps", vqgan_steps)) if v is not None}
    done = run_demo(output_dir, replace(config, **changes), seed=seed, progress=progress)
    for stage, seconds in done["timings"].items():
        say(f"{stage:<12} {seconds:7.1f}s")
    say(f"peak RSS {done['peak_rss_mb']:.0f} MiB; report: {done['report']}")


COMMANDS = (demo_cmd,)
