"""The `assay` command. Each part of the toolkit owns a sub-command group in its own `cli.py`."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from assay.runtime import tune_malloc

app = typer.Typer(
    name="assay",
    help=(
        "Pragmatic interpretability: do SAEs beat a linear probe at detecting harmful intent?\n\n"
        "Typical flow: `assay data build` -> `assay activations extract` -> `assay probe train` / "
        "`assay sae train` -> `assay report`; or all of it at once with "
        "`assay experiment harmful-intent`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# (sub-command, module holding a `typer.Typer` named `app`)
_GROUPS = [
    ("models", "assay.models.cli"),
    ("activations", "assay.activations.cli"),
    ("data", "assay.data.cli"),
    ("probe", "assay.probes.cli"),
    ("sae", "assay.sae.cli"),
    ("report", "assay.report.cli"),
    ("experiment", "assay.experiment.cli"),
    ("debug", "assay.debug.cli"),
    ("monitor", "assay.monitor.cli"),
]

for _name, _module in _GROUPS:
    try:
        _sub = importlib.import_module(_module).app
    except ModuleNotFoundError as err:  # a part not built yet must not break the others
        if err.name and err.name.startswith("assay"):
            continue
        raise
    app.add_typer(_sub, name=_name)

# A single command rather than a group: `assay autointerp SAE_DIR`.
from assay.autointerp.cli import autointerp_command  # noqa: E402  (typer only: keeps `assay --help` fast)

app.command("autointerp")(autointerp_command)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Entry point: a user's mistake or a broken file ends as one line and exit 1, not a traceback
    (`assay -v ...` shows the traceback)."""
    from assay.errors import USER_ERRORS, describe

    tune_malloc()
    verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:2])
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except USER_ERRORS as err:
        if verbose:
            raise
        typer.echo(f"error: {describe(err)}", err=True)
        sys.exit(1)
    except Exception as err:  # a bug: still one line, with the way to the traceback
        if verbose:
            raise
        typer.echo(f"error: unexpected {type(err).__name__}: {err}\n(this is a bug in assay: rerun with "
                   "`assay -v ...` for the traceback and report it)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
