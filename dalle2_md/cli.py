"""The `dalle2-md` command line: one click group whose subcommands hold every workflow.

Commands stay thin (options -> config -> build -> run); heavy imports happen inside them so
`--help` is instant. A `UserError` anywhere prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from .utils import UserError


class Dalle2MDGroup(click.Group):
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


def main():
    cli()


if __name__ == "__main__":
    main()
