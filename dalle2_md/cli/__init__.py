"""The command-line layer: the `dalle2-md` commands and the seed's top-level scripts that wrap them.

Owns the options (their spelling `--data_root`, their defaults read from the dataclasses they
fill), turning them into the library's configs, and what a command prints; the work itself is
done by the layers below (data, models, training, evaluation, generation, augmentation). Heavy
imports happen inside the commands, so `dalle2-md --help` imports no torch. A `UserError`
anywhere prints one `Error:` line on stderr and exits 2, never a traceback.

Modules: main (the click group, `main`, `run_command`), options (option spelling, shared option
groups, `field_default`), data (synth, inspect-data), train (train-clip, train-decoder,
train-upsampler, train-prior), generate (generate, generate-dataset, interpolate, variations), evaluate
(evaluate, augment-eval), demo (demo; runs demo_run), check (check; runs selfcheck).
"""

from dalle2_md.cli.main import cli, main, run_command

__all__ = ["cli", "main", "run_command"]
