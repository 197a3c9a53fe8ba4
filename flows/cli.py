"""The `t2vsim` command line. Heavy modules (torch, diffusers, prefect) are imported inside the
commands, so `t2vsim --help` stays fast."""

from __future__ import annotations

import os
from typing import Annotated

import typer

# A local Prefect server started on demand must not try to reach the network.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from flows.cli_common import OUTPUT, Group
from flows.cli_generate import register as register_generate

app = typer.Typer(
    cls=Group,
    name="t2vsim",
    help="Simulate text-to-video inference verification (Wan2.2 on Gonka): executors, validators, "
    "pricing and Proof-of-Compute against a mock chain, with real diffusers inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def options(json_output: Annotated[bool, typer.Option("--json", help="print tables as JSON lines ({title, rows}) "
                                                      "instead of text, e.g. into a pipe")] = False) -> None:
    OUTPUT["json"] = json_output


register_generate(app)


def _add_subapps() -> None:
    # Each sub-application lives in its own module; a missing one is simply not offered.
    import importlib

    for module, name in (
        ("flows.cli_experiment", "experiment"),
        ("flows.cli_network", "network"),
        ("flows.cli_pricing", "pricing"),
        ("flows.cli_poc", "poc"),
        ("flows.cli_regression", "regression"),
        ("flows.cli_engines", "engines"),
        ("flows.cli_plan", "plan"),
        ("flows.cli_shapes", "shapes"),
        ("flows.cli_study", "study"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        mod.register(app)


_add_subapps()


def main() -> None:
    """The `t2vsim` entry point: SIGTERM ends the command as Ctrl-C does (temporary files are
    removed on the way out; the temporary Prefect server dies with the process either way)."""
    import signal

    def _terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    main()
