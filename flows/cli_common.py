"""What every `t2vsim` command shares: one error path, the console, tables or JSON.

Error path: a user's mistake (a bad value, a path that cannot be used, a run directory that does
not match) ends with one line `error: ...` on stderr and exit status 1; a usage error (an unknown
option, a value of the wrong type) is click's, status 2. No traceback is printed for either; set
T2VSIM_DEBUG=1 to see one. Only typer and rich are imported here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

DEBUG_ENV = "T2VSIM_DEBUG"
# Set by the top-level --json option: tables are printed as JSON lines instead.
OUTPUT = {"json": False}


def pydantic_message(err) -> str:
    """`field: message; ...` (a message that already names its field is not prefixed again)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(msg if not loc or msg.startswith(f"{loc}:") else f"{loc}: {msg}")
    return "; ".join(parts)


def one_line(err: BaseException) -> str:
    """The message of a domain error, on one line."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        text = pydantic_message(err)
    elif isinstance(err, UnicodeDecodeError):
        text = f"not UTF-8 text ({err.reason} at byte {err.start})"
    elif isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` (one line, no traceback) on stderr and exit with `code`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def domain_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the input cannot be used (t2vsim's own errors derive from ValueError)."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    for module, name in (("sim.chain", "ChainDatabaseError"), ("sim.network", "RunDirError"),
                         ("sim.regression", "RegressionDetected"), ("models.engines.vllm_omni", "EngineError")):
        mod = sys.modules.get(module)  # only what a command has imported can have been raised
        cls = getattr(mod, name, None) if mod else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


class _NoDomainTraceback:
    """A logging filter for Prefect's run loggers: a run that failed on a domain error is logged in
    one line, without the traceback Prefect attaches (the command then prints its own line)."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, domain_errors()) and not os.environ.get(DEBUG_ENV):
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = _NoDomainTraceback()


def quiet_prefect_tracebacks() -> None:
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def choice_message(err) -> str | None:
    """`option: Input should be 'a' or 'b'` for a value outside an option's choices (the
    literal_choices enums), as pydantic words it for the field; None for other usage errors."""
    import enum
    import typing

    param = getattr(err, "param", None)
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if typing.get_origin(annotation) in (list, typing.List):
        annotation = typing.get_args(annotation)[0]
    if not (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return None
    choices = [repr(c.value) for c in annotation]
    listed = choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
    return f"{param.name}: Input should be {listed}"


class Group(TyperGroup):
    """The top-level command group: domain errors from any command, and a value outside an
    option's choices, become one line and status 1."""

    def invoke(self, ctx):
        quiet_prefect_tracebacks()
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except typer.BadParameter as err:
            message = choice_message(err)
            if message is None:
                raise
            fail(message)
        except Exception as err:
            if os.environ.get(DEBUG_ENV) or not isinstance(err, domain_errors()):
                raise
            fail(one_line(err))


def console(stderr: bool = False):
    """A rich console; printed to a pipe or a file it is wide enough that no table is cut."""
    from rich.console import Console

    c = Console(stderr=stderr)
    if not c.is_terminal and not os.environ.get("COLUMNS"):
        c = Console(stderr=stderr, width=1000)
    return c


def table_rows(table) -> list[dict[str, str]]:
    """The cells of a rich Table as one dict per row (markup removed)."""
    from rich.text import Text

    cols = [(str(c.header), list(c.cells)) for c in table.columns]
    n = max((len(cells) for _, cells in cols), default=0)

    def plain(x: Any) -> str:
        return x.plain if isinstance(x, Text) else Text.from_markup(str(x)).plain

    return [{h: plain(cells[i]) if i < len(cells) else "" for h, cells in cols} for i in range(n)]


def show(*items) -> None:
    """Print tables and lines; with --json each table is one JSON line {"title", "rows"} and each
    line of text a JSON line {"message"}."""
    from rich.table import Table

    con = console()
    for item in items:
        if not OUTPUT["json"]:
            con.print(item)
        elif isinstance(item, Table):
            print(json.dumps({"title": str(item.title or ""), "rows": table_rows(item)}), flush=True)
        else:
            from rich.text import Text

            print(json.dumps({"message": Text.from_markup(str(item)).plain}), flush=True)


def read_config(config) -> dict:
    """The JSON object in a --config file ({} without one); a file that is not one is refused."""
    if config is None:
        return {}
    try:
        data = json.loads(Path(config).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"config: {config} is not UTF-8 text (byte {err.start}); give a JSON file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"config: {config} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except OSError as err:
        raise ValueError(f"config: cannot read {config}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config: {config} must hold a JSON object of fields, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Options every command spells the same way


# Every command's outputs go under this directory by default.
RUNS = Path("runs")


def literal_choices(name: str, literal) -> type:
    """A str Enum of a pydantic field's Literal values: typer offers and checks the choices, and
    the field's type stays the one list of them."""
    import enum
    import typing

    return enum.Enum(name, {v: v for v in typing.get_args(literal)}, type=str)


def value(choice):
    """The plain value of an option built by literal_choices (None stays None)."""
    return getattr(choice, "value", choice)


def given(**options) -> dict[str, Any]:
    """The options given on the command line (None: left out)."""
    return {k: value(v) for k, v in options.items() if v is not None}


def merge_config(config, **overrides) -> dict[str, Any]:
    """The fields of a --config file with the options given on the command line over them: the one
    rule of every command that takes --config (an option left out keeps the file's value, else the
    field's default)."""
    data = read_config(config)
    data.update(given(**overrides))
    return data


def each(values, what: str) -> tuple[str, ...]:
    """A repeatable option's values, blanks removed; an option given only blank values is refused."""
    if values is None:
        return ()
    out = tuple(v.strip() for v in values if v.strip())
    if not out:
        raise ValueError(f"{what}: give at least one value (repeat the option for more)")
    return out


def rich_table(title: str, rows: list[dict], columns: list[str] | None = None, *, header=str,
               justify: str | None = None, **column_options):
    """A rich Table of dict rows (`columns`, default those of the first row; `header(column)` the
    column's heading)."""
    from rich.table import Table

    t = Table(title=title)
    cols = list(columns if columns is not None else (rows[0] if rows else []))
    for c in cols:
        t.add_column(header(c), **({"justify": justify} if justify else {}), **column_options)
    for row in rows:
        t.add_row(*(str(row.get(c, "")) for c in cols))
    return t


def df_table(df, title: str, columns: list[str] | None = None):
    """A rich Table of a DataFrame (floats to 4 significant digits)."""
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    rows = [{c: (f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in cols} for _, r in df.iterrows()]
    return rich_table(title, rows, cols, header=lambda c: c.replace("_", " "), justify="right")
