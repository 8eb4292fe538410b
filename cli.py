"""Command-line entry point: data, features, store, train, evaluate, classify, finetune,
reproduce (one module each under commands/).

Every command turns `UserError` into one line on stderr and exit code 1, so a user mistake
never shows a traceback. Heavy imports (torch, dask) happen inside the commands that need
them, so `--help` and `data validate` answer at once.
"""

from __future__ import annotations

import sys

import click

from commands.classify import classify
from commands.data import data
from commands.features import features
from commands.finetune import finetune
from commands.reproduce import reproduce
from commands.store import store
from commands.training import evaluate, train
from extract.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Attention Clusters video classification: features, training and inference."""


for command in (data, features, store, train, finetune, evaluate, classify, reproduce):
    main.add_command(command)


def run() -> None:
    """Run the CLI, turning user errors into one clear line and a non-zero exit."""
    try:
        code = main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
