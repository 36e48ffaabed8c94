"""`lbsearch models`: list, download and verify LanguageBind checkpoints."""


from typing import Annotated

import typer
from rich.table import Table

from lbsearch.cli.common import (
    JsonOption,
    console,
    folded,
    models_app,
    print_json,
)

# -------------------------------------------------------------------------------------------- models


@models_app.command("list")
def models_list(as_json: JsonOption = False) -> None:
    """List the released checkpoints and the named model sets.

    Example: lbsearch models list --json
    """
    from lbsearch.models.registry import MODEL_SETS, RELEASED

    if as_json:
        print_json({"released": RELEASED, "sets": MODEL_SETS})
        return
    table = Table("hub id", "modality", title="Released LanguageBind checkpoints")
    for hub_id, modality in RELEASED.items():
        table.add_row(hub_id, modality)
    console.print(table)
    sets = Table("set", "modality", folded("checkpoint"), title="Model sets (--models NAME)")
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
        files = resolve(hub_id, cache_dir=cache_dir)
        console.print(f"{hub_id}: {files.folder}")


@models_app.command("verify")
def models_verify(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint folders or hub ids.")],
    as_json: JsonOption = False,
) -> None:
    """Load checkpoints strictly (every tensor must match config.json) and print what they are.

    Example: lbsearch models verify ./LanguageBind_Depth
    """
    from lbsearch.models import load_checkpoint

    rows = []
    for name in checkpoints:
        encoder = load_checkpoint(name)
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
                "lora_r": vision.lora_r,
                "logit_scale": encoder.logit_scale,
                "weights_hash": encoder.weights_hash[:16],
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table(*rows[0].keys(), title="Verified checkpoints")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
