"""Command-line entry point: data, features, store, train, evaluate, classify.

Every command catches `UserError` and prints it as one line on stderr with exit code 1, so a
user mistake never shows a traceback.
"""

from __future__ import annotations

import sys

import click

from extract.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Attention Clusters video classification: features, training and inference."""


def run() -> None:
    """Run the CLI, turning user errors into one clear line and a non-zero exit."""
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
