"""The `dalle2-md` click group: every command module's commands on one group, `main` (the
console script) and `run_command` (one command as a program of its own: the seed's top-level
scripts). `python -m dalle2_md.cli.main` and `python -m dalle2_md.cli` run `main`.
"""

from __future__ import annotations

import sys

import click

from dalle2_md.cli import check, data, demo, evaluate, generate, train
from dalle2_md.cli.options import join_variadic
from dalle2_md.utils import UserError

__all__ = ["cli", "main", "run_command", "join_variadic"]


class Dalle2MDGroup(click.Group):
    """A click group that turns a `UserError` into one `Error:` line on stderr and exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)


@click.group(cls=Dalle2MDGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="dalle2-md")
def cli():
    """Generate radar micro-Doppler gait spectrograms for chosen users (DALLE2-style)."""


# every command module lists its commands in COMMANDS (--help sorts them by name)
for _module in (data, train, generate, evaluate, demo, check):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def run_command(name, argv=None, prog_name=None):
    """Run one subcommand as a program of its own (the seed's top-level scripts).

    Args:
        name: subcommand name, e.g. "train-decoder".
        argv: words after the program name (default sys.argv[1:]).
        prog_name: name shown in usage lines.
    """
    command = cli.commands[name]
    try:
        command.main(args=join_variadic(sys.argv[1:] if argv is None else argv), prog_name=prog_name,
                     help_option_names=["-h", "--help"])
    except UserError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)


def main(argv=None):
    """The `dalle2-md` console script.

    Args:
        argv: words after the program name (default sys.argv[1:]).
    """
    cli.main(args=join_variadic(sys.argv[1:] if argv is None else argv), prog_name="dalle2-md")


if __name__ == "__main__":
    main()
