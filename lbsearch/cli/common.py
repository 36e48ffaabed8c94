"""What every command shares: the Typer apps, the error handling (one line, never a traceback), the
common options and the output helpers."""


import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column

from lbsearch.errors import LbsearchError

console = Console()
err_console = Console(stderr=True)


class Commands(typer.core.TyperGroup):
    """Turns every lbsearch, database and OS error raised by a command into a one-line message and exit code 1,
    never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not _environment_error(exc):
                raise
            err_console.print(f"[bold red]error:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


def _environment_error(exc: Exception) -> bool:
    """lbsearch's own errors and failures of the world around it (files, disks, databases), as opposed to bugs.
    SQLAlchemy is recognised by module, so that the CLI does not import it before a command needs it."""
    return isinstance(exc, (LbsearchError, OSError)) or type(exc).__module__.startswith("sqlalchemy.")


def _one_line(exc: Exception) -> str:
    """lbsearch's message; of another error, its first line (SQLAlchemy appends the statement and a help link)."""
    if isinstance(exc, LbsearchError):
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


app = typer.Typer(
    cls=Commands,
    help="Multi-modal search over your own media library, built on LanguageBind.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
models_app = typer.Typer(cls=Commands, help="List, download and verify LanguageBind checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")
train_app = typer.Typer(
    cls=Commands, help="Train LanguageBind checkpoints: the toy demo set, or a new modality on real files.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")
eval_app = typer.Typer(
    cls=Commands, help="Evaluate checkpoints: on a fresh toy world, or on a paper benchmark.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")

EXIT_FAILED_FILES = 3
EXIT_DISAGREE = 4
EXIT_INTERRUPTED = 130

IndexOption = Annotated[
    Path | None,
    typer.Option("--index", envvar="LBSEARCH_INDEX", help="Index folder (default ./indexes).", show_default=False),
]
DbOption = Annotated[
    str | None, typer.Option("--db", help="Database URL for the metadata, e.g. postgresql://user@host/db.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")]
PrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="What the encoders run at: auto (the fastest that agrees with fp32 here, measured once per machine "
        "and model), fp32 (exact), bf16 or int8 on a CPU, fp16 or bf16 on CUDA.",
    ),
]


def fail(error: Exception | str, code: int = 1) -> None:
    """Print a one-line error (never a traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def open_library(
    index: Path | None, db: str | None, device: str | None = None, create: bool = False, precision: str = "auto"
):
    """The library of ``--index``/``--db``; only commands that add to it (``index``) create a missing one."""
    from lbsearch.library import Library

    return Library.open(index, db=db, device=device, create=create, precision=precision)


def folded(header: str) -> Column:
    """A table column for paths: folded onto more lines when the terminal is narrow, never cut with "…"."""
    return Column(header, overflow="fold")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def split_pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    """``["a=b", ...]`` -> ``[("a", "b"), ...]``, split at the last "=" (a text part may contain "=")."""
    pairs = []
    for value in values:
        key, sep, rest = value.rpartition("=")
        if not sep or not key:
            fail(f"{option} {value!r}: expected NAME=VALUE", code=2)
        pairs.append((key, rest))
    return pairs


def to_float(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        fail(f"{what}: {value!r} is not a number", code=2)
        raise  # unreachable: fail() exits
