"""The `lbsearch` command: a thin Typer layer over the Python API (no logic lives only here)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lbsearch.errors import LbsearchError

app = typer.Typer(
    help="Multi-modal search over your own media library, built on LanguageBind.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, download and verify LanguageBind checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


def fail(error: Exception, code: int = 1) -> None:
    """Print a one-line error (never a traceback) and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the released checkpoints and the named model sets.

    Example: lbsearch models list --json
    """
    from lbsearch.models.registry import MODEL_SETS, RELEASED

    if as_json:
        print(json.dumps({"released": RELEASED, "sets": MODEL_SETS}, indent=2))
        return
    table = Table("hub id", "modality", title="Released LanguageBind checkpoints")
    for hub_id, modality in RELEASED.items():
        table.add_row(hub_id, modality)
    console.print(table)
    sets = Table("set", "modality", "checkpoint", title="Model sets (--models NAME)")
    for name, members in MODEL_SETS.items():
        for modality, source in members.items():
            sets.add_row(name, modality, source)
    console.print(sets)


@models_app.command("download")
def models_download(
    hub_ids: Annotated[list[str], typer.Argument(help="Hub ids, e.g. LanguageBind/LanguageBind_Audio_FT.")],
    cache_dir: Annotated[str | None, typer.Option(help="Hugging Face cache folder (default: HF_HUB_CACHE).")] = None,
) -> None:
    """Download checkpoints into the Hugging Face cache, for later offline use (HF_HUB_OFFLINE=1).

    Example: lbsearch models download LanguageBind/LanguageBind_Video_FT LanguageBind/LanguageBind_Audio_FT
    """
    from lbsearch.models.checkpoint import resolve

    for hub_id in hub_ids:
        try:
            files = resolve(hub_id, cache_dir=cache_dir)
        except LbsearchError as exc:
            fail(exc)
        console.print(f"{hub_id}: {files.folder}")


@models_app.command("verify")
def models_verify(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint folders or hub ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Load checkpoints strictly (every tensor must match config.json) and print what they are.

    Example: lbsearch models verify ./LanguageBind_Depth
    """
    from lbsearch.models import load_checkpoint

    rows = []
    for name in checkpoints:
        try:
            encoder = load_checkpoint(name)
        except LbsearchError as exc:
            fail(exc)
        vision = encoder.config.vision
        rows.append(
            {
                "checkpoint": name,
                "modality": encoder.modality,
                "dim": encoder.dim,
                "layers": vision.num_hidden_layers,
                "width": vision.hidden_size,
                "input": list(vision.image_size),
                "frames": vision.num_frames,
                "logit_scale": encoder.logit_scale,
                "weights_hash": encoder.weights_hash[:16],
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(*rows[0].keys(), title="Verified checkpoints")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def main() -> None:
    try:
        app()
    except LbsearchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
