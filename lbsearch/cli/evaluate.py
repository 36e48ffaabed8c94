"""`lbsearch eval`: a model set on a fresh toy world, or a checkpoint on one of the paper's benchmarks."""


from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lbsearch.cli.common import (
    DeviceOption,
    JsonOption,
    console,
    eval_app,
    print_json,
)
from lbsearch.cli.train import print_bars

# ---------------------------------------------------------------------------------------------- eval


def print_toyworld(results: dict[str, Any]) -> None:
    for split in ("test", "heldout"):
        part = results[split]
        title = f"{split} split ({part['scenes']} scenes, world seed {results['seed']}, from {results['source']})"
        zero_shot = Table("modality", "attribute", "top-1", title=f"Zero-shot, {title}")
        for modality, tasks in part["zero_shot"].items():
            for task, value in tasks.items():
                zero_shot.add_row(modality, task, f"{value:.3f}")
        console.print(zero_shot)
        retrieval = Table("query -> item", "R@1", "R@5", "median rank", title=f"Retrieval, {split}")
        rows = {name.replace("_to_", "->"): m for name, m in part.items() if name.startswith("text_to_")}
        rows.update({f"{pair}, emergent": m for pair, m in part["emergent"].items()})
        for name, metrics in rows.items():
            agree = f" (hit agrees on {', '.join(metrics['agree_on'])})" if "agree_on" in metrics else ""
            retrieval.add_row(name + agree, f"{metrics['R@1']:.3f}", f"{metrics['R@5']:.3f}", f"{metrics['MdR']:.1f}")
        console.print(retrieval)
        if "joint" in part:
            joint = part["joint"]
            console.print(f"Joint, {split}: text->video R@1 {joint['video']['R@1']:.3f} alone, "
                          f"{joint['video+audio']['R@1']:.3f} with audio (gain {joint['gain_R@1']:+.3f})")
    print_bars(results["bars"])


@eval_app.command("toyworld")
def eval_toyworld(
    seed: Annotated[int, typer.Option(help="Seed of the fresh test world.")] = 1,
    models: Annotated[
        str | None, typer.Option("--models", help="A named model set (default: demo, unless --model is given).")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="MODALITY=FOLDER_OR_HUB_ID (replaces that modality of --models); repeatable."),
    ] = None,
    preset_name: Annotated[
        str, typer.Option("--preset", help="Training preset whose world to test on: toy (the full world) or test.")
    ] = "toy",
    test_scenes: Annotated[
        int | None, typer.Option(help="Test-split scenes (default: one per seen attribute combination).")
    ] = None,
    heldout_scenes: Annotated[
        int | None, typer.Option(help="Held-out-combination scenes (default: one per held-out combination).")
    ] = None,
    from_files: Annotated[
        bool, typer.Option("--from-files", help="Embed written MP4/WAV/PNG files through the ingestion decoders.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Generate a fresh toy world with --seed and evaluate a model set on it: zero-shot per modality, text->X
    retrieval, emergent X->Y, joint video+audio, and the issue's bars.

    Examples:
      lbsearch eval toyworld --seed 7 --json
      lbsearch eval toyworld --preset test --model image=/tmp/demo/image --model audio=/tmp/demo/audio
    """
    from lbsearch.eval.toyworld import evaluate_toyworld
    from lbsearch.models import load_model_set
    from lbsearch.models.registry import chosen_models
    from lbsearch.train import preset

    spec = preset(preset_name).data.spec
    encoders = load_model_set(chosen_models(models, model or [], default="demo"))
    results = evaluate_toyworld(encoders, seed, spec, test_scenes, heldout_scenes, from_files)
    if as_json:
        print_json(results)
    else:
        print_toyworld(results)


@eval_app.command("benchmark")
def eval_benchmark(
    name: Annotated[str, typer.Argument(help="msrvtt, msvd, clotho, esc50, nyud, llvip or flir.")],
    root: Annotated[Path, typer.Argument(help="The benchmark's folder, in its standard layout.")],
    model: Annotated[str, typer.Option("--model", help="Checkpoint folder or hub id of the benchmark's modality.")],
    batch_size: Annotated[int, typer.Option(help="Files per encoder call.")] = 16,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a checkpoint on one of the paper's benchmarks read from disk: zero-shot top-1/top-5, or retrieval
    R@k and ranks both ways.

    Examples:
      lbsearch eval benchmark esc50 /data/ESC-50 --model LanguageBind/LanguageBind_Audio_FT
      lbsearch eval benchmark msrvtt /data/MSRVTT --model LanguageBind/LanguageBind_Video_FT --json
    """
    from lbsearch.eval.benchmarks import evaluate_benchmark, load_benchmark
    from lbsearch.library import default_device
    from lbsearch.models import load_checkpoint

    dataset = load_benchmark(name, root)
    encoder = load_checkpoint(model, device or default_device())
    result = evaluate_benchmark(encoder, dataset, batch_size=batch_size)
    if as_json:
        print_json(result)
        return
    table = Table("metric", "value", title=f"{result['benchmark']} ({result['n']} {dataset.modality} files)")
    for key, value in result.items():
        if isinstance(value, dict):
            for metric, number in value.items():
                table.add_row(f"{key} {metric}", f"{number:.4f}" if isinstance(number, float) else str(number))
        elif key not in ("benchmark", "n"):
            table.add_row(key, f"{value:.4f}")
    console.print(table)
