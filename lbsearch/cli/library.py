"""The commands that build, search and look after a library: index, search, classify, status, verify, remove,
reindex, ui, demo."""


import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lbsearch.cli.common import (
    EXIT_DISAGREE,
    EXIT_FAILED_FILES,
    EXIT_INTERRUPTED,
    DbOption,
    DeviceOption,
    IndexOption,
    JsonOption,
    PrecisionOption,
    app,
    console,
    fail,
    folded,
    open_library,
    print_json,
    split_pairs,
    to_float,
)
from lbsearch.paths import shown

# --------------------------------------------------------------------------------------------- index

# On a non-terminal, index progress is one plain line at most this often (and once at the end).
PLAIN_PROGRESS_SECONDS = 5.0


class PlainProgress:
    """Index progress for logs: a status line at most every `PLAIN_PROGRESS_SECONDS`, and the final count."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.shown: tuple[int, int] | None = None

    def update(self, progress: Any) -> None:
        import time

        now = time.monotonic()
        counts = (progress.files_done, progress.files_total)
        finished = counts[0] >= counts[1] and counts != self.shown
        if not finished and self.last is not None and now - self.last < PLAIN_PROGRESS_SECONDS:
            return
        self.last, self.shown = now, counts
        print(
            f"indexing: {progress.files_done}/{progress.files_total} files, "
            f"{progress.segments_per_second:.1f} segments/s, {progress.errors} errors",
            file=sys.stderr,
            flush=True,
        )


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders (or files' folders) to index, recursively.")],
    as_modality: Annotated[
        str | None, typer.Option("--as", help="What the images under PATHS are: image, depth or thermal.")
    ] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="MODALITY=HUB_ID_OR_FOLDER; repeatable.")] = None,
    models: Annotated[str | None, typer.Option("--models", help="A named model set: languagebind or demo.")] = None,
    window: Annotated[float, typer.Option(help="Window length in seconds for long media (0: none).")] = 10.0,
    hop: Annotated[float, typer.Option(help="Seconds between window starts.")] = 5.0,
    workers: Annotated[int, typer.Option(help="Decode processes (0: decode in this process).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Inputs per encoder call.")] = 16,
    hidden: Annotated[bool, typer.Option("--hidden", help="Also index hidden files and folders.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try files that failed before again.")] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Decode and encode on a Ray cluster: local (start Ray here), auto (this machine's cluster) or "
            "ray://HOST:PORT. Needs the extra: pip install -e '.[ray]'.",
        ),
    ] = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Embed media folders into the library: new and changed files are embedded, moved ones recognised, deleted
    ones dropped. Safe to stop (Ctrl-C) and to run again.

    Examples:
      lbsearch index ~/Videos ~/Music --models demo
      lbsearch index ~/scans --as depth --model depth=LanguageBind/LanguageBind_Depth
      lbsearch index /shared/media --models languagebind --ray auto
    """
    from tqdm import tqdm

    from lbsearch.ingest.decode import WindowSpec
    from lbsearch.ingest.pipeline import IngestOptions
    from lbsearch.models.registry import chosen_models

    # Options first: a value out of range must not leave a new, empty library behind.
    options = IngestOptions(
        windows=WindowSpec(window, hop),
        workers=workers,
        batch_size=batch_size,
        include_hidden=hidden,
        retry_failed=retry_failed,
    )
    lib = open_library(index_dir, db, device, create=True, precision=precision)
    if models or model:
        lib.use_models(chosen_models(models, model or []))
    bar = None
    plain = PlainProgress()

    def show(progress) -> None:
        nonlocal bar
        if as_json:
            return
        if not sys.stderr.isatty():  # a log file or a pipe: a bar's redraws would each become a line
            plain.update(progress)
            return
        if bar is None:
            bar = tqdm(total=progress.files_total, unit="file", desc="indexing", file=sys.stderr)
        bar.n = progress.files_done
        bar.set_postfix(segments_per_s=f"{progress.segments_per_second:.1f}", errors=progress.errors, refresh=False)
        bar.refresh()

    report = lib.add(paths, as_modality=as_modality, options=options, progress=show, ray=ray)
    if bar is not None:
        bar.close()
    summary = {
        "plan": report.plan,
        "embedded": report.embedded,
        "failed": report.failed,
        "vectors": report.vectors,
        "seconds": round(report.seconds, 2),
        "interrupted": report.interrupted,
        "errors": report.errors,
        "warnings": report.warnings,
        **({"cluster": report.cluster} if report.cluster else {}),
    }
    if as_json:
        print_json(summary)
    else:
        plan = ", ".join(f"{v} {k}" for k, v in report.plan.items() if v)
        console.print(
            f"[bold]{report.embedded}[/] files embedded ({report.vectors} vectors), {report.failed} failed "
            f"in {report.seconds:.1f} s. Plan: {plan or 'nothing to do'}."
        )
        if report.cluster:
            used = report.cluster
            console.print(
                f"Ray cluster: {used['nodes']} nodes, {used['cpus']:g} CPUs, {used['gpus']:g} GPUs; "
                f"{used['encode_actors']} encoder actors on {used['encode_device']}."
            )
        for path, reason in report.errors.items():
            console.print(f"  [red]failed[/] {shown(path)}: {reason}", highlight=False)
        for path, reason in report.warnings.items():
            console.print(f"  [yellow]warning[/] {shown(path)}: {reason}", highlight=False)
        if report.interrupted:
            console.print("[yellow]Interrupted: what was embedded is saved; run the same command to go on.[/]")
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(EXIT_FAILED_FILES)


# -------------------------------------------------------------------------------------------- search


def _parse_date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r}: expected a date like 2024-05-01 or 2024-05-01T12:00", code=2)
        raise


def _metadata_value(value: str) -> Any:
    """A --where value as the column holds it: JSON numbers, true/false and null, else the text itself."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    like: Annotated[
        str | None, typer.Option("--like", help="A media file (or an indexed file's id) to search like.")
    ] = None,
    like_as: Annotated[
        str | None,
        typer.Option(
            "--like-as",
            help="What an image given to --like is (image, depth or thermal); for an indexed file's id, which of "
            "its vectors to use (e.g. audio: a video's sound).",
        ),
    ] = None,
    start: Annotated[float | None, typer.Option("--from", help="Start (s) of the --like file's moment.")] = None,
    end: Annotated[float | None, typer.Option("--to", help="End (s) of the --like file's moment.")] = None,
    part: Annotated[
        list[str] | None,
        typer.Option("--part", help="Weighted query part QUERY=WEIGHT (text or file; negative allowed); repeatable."),
    ] = None,
    modality: Annotated[
        list[str] | None, typer.Option("--in", help="Modality to search; repeat for joint retrieval.")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Number of hits.")] = 10,
    offset: Annotated[int, typer.Option(help="Skip this many hits (paging).")] = 0,
    fuse: Annotated[str, typer.Option(help="Joint fusion: sum, temperature or rrf.")] = "sum",
    weight: Annotated[
        list[str] | None, typer.Option("--weight", help="MODALITY=WEIGHT for joint fusion; repeatable.")
    ] = None,
    group: Annotated[str | None, typer.Option(help="file, item or segment (default: file; item when joint).")] = None,
    glob: Annotated[str | None, typer.Option("--glob", help="Only files whose path matches this glob.")] = None,
    file_modality: Annotated[
        list[str] | None, typer.Option("--file-modality", help="Only files of this modality; repeatable.")
    ] = None,
    min_duration: Annotated[float | None, typer.Option(help="Only media at least this long (s).")] = None,
    max_duration: Annotated[float | None, typer.Option(help="Only media at most this long (s).")] = None,
    after: Annotated[str | None, typer.Option(help="Only files modified after this date.")] = None,
    before: Annotated[str | None, typer.Option(help="Only files modified before this date.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="COLUMN=VALUE on file metadata (e.g. width=1920, has_audio=false)."),
    ] = None,
    min_score: Annotated[float | None, typer.Option(help="Cut-off on the calibrated score (z-score).")] = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Search the library with words, a file, or both.

    Examples:
      lbsearch search "a dog barking at night" --in video --in audio
      lbsearch search --like rain.wav --in video -k 5
      lbsearch search --part rain.wav=2 --part "at night=0.5" --part "people=-1" --in video --fuse rrf
      lbsearch search "a red circle" --in image --json
    """
    # Usage errors first: they should not wait for the model layer (torch) to import.
    if like is None and (start is not None or end is not None or like_as is not None):
        fail("--from, --to and --like-as describe the --like query; give --like too", code=2)
    weighted_parts = [(q, to_float(w, f"--part {q}")) for q, w in split_pairs(part or [], "--part")]
    weights = {m: to_float(w, f"--weight {m}") for m, w in split_pairs(weight or [], "--weight")}
    metadata = {column: _metadata_value(value) for column, value in split_pairs(where or [], "--where")}
    modified_after, modified_before = _parse_date(after, "--after"), _parse_date(before, "--before")

    from lbsearch.search.request import Filters, SearchRequest, parse_like

    request = SearchRequest.of(
        text,
        like=None if like is None else parse_like(like, as_modality=like_as, start=start, end=end),
        parts=weighted_parts,
        modalities=modality,
        k=k,
        offset=offset,
        fuse=fuse,
        weights=weights or None,
        group=group,
        filters=Filters(
            path_glob=glob,
            file_modalities=tuple(file_modality) if file_modality else None,
            min_duration=min_duration,
            max_duration=max_duration,
            modified_after=modified_after,
            modified_before=modified_before,
            where=metadata,
        ),
        min_score=min_score,
    )
    hits = open_library(index_dir, db, device, precision=precision).search(request=request)
    if as_json:
        print_json([hit.to_dict() for hit in hits])
        return
    if not hits:
        console.print("No hits. (Is the library indexed? See `lbsearch status`.)")
        return
    table = Table(
        "#", "score", "z", "modality", "moment", folded("path"), "parts", title=f"{len(hits)} hits"
    )
    for hit in hits:
        moment = "whole" if hit.start is None else f"{hit.start:.1f}-{hit.end:.1f} s"
        parts_text = " ".join(f"{m} {v:+.3f}" for m, v in hit.parts.items())
        table.add_row(
            str(hit.rank),
            f"{hit.score:.4f}",
            f"{hit.calibrated:.2f}",
            hit.modality,
            moment,
            shown(hit.path),
            parts_text,
        )
    console.print(table)


@app.command()
def classify(
    classes: Annotated[list[str], typer.Argument(help="Class names, e.g. dog cat rain.")],
    modality: Annotated[str, typer.Option("--in", help="Which indexed modality to label.")],
    k: Annotated[int, typer.Option("-k", help="Labels per file.")] = 1,
    index_dir: IndexOption = None,
    db: DbOption = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Label indexed files zero-shot with the official prompt templates.

    Example: lbsearch classify dog cat "rain on a roof" --in audio
    """
    lib = open_library(index_dir, db, device)
    labels = lib.classify(classes, modality, k=k)
    paths = {record.id: record.path for record in lib.files()}
    rows = [{"file_id": fid, "path": paths[fid], "labels": found} for fid, found in labels.items()]
    if as_json:
        print_json(rows)
        return
    table = Table(folded("path"), "labels", title=f"zero-shot labels ({modality})")
    for row in rows:
        table.add_row(shown(row["path"]), ", ".join(f"{name} {p:.2f}" for name, p in row["labels"]))
    console.print(table)


# ---------------------------------------------------------------------------------- library upkeep


@app.command()
def status(index_dir: IndexOption = None, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Counts per modality and model, index health, and files that failed with why.

    Example: lbsearch status --json
    """
    report = open_library(index_dir, db).status()
    if as_json:
        print_json(report)
        return
    console.print(f"[bold]{report['folder']}[/] ({report['database']})")
    models = Table("modality", folded("checkpoint"), title="Model set")
    for modality, source in report["models"].items():
        models.add_row(modality, source)
    console.print(models)
    files = Table("modality", *["ok", "pending", "error"], title=f"Files ({report['items']} items)")
    for modality, counts in report["files"].items():
        files.add_row(modality, *(str(counts.get(s, 0)) for s in ("ok", "pending", "error")))
    console.print(files)
    precisions = {
        (group["model_id"], group["modality"]): ", ".join(f"{p} {n}" for p, n in group["precisions"].items())
        for group in report["vectors"]
    }
    indexes = Table("model", "modality", "vectors", "precision", "type", "recall@10", title="Indexes")
    for entry in report["indexes"]:
        indexes.add_row(
            str(entry["model_id"]),
            entry["modality"],
            str(entry.get("ntotal", "-")),
            precisions.get((entry["model_id"], entry["modality"]), "-"),
            str(entry.get("factory", "-")),
            str(entry.get("recall_at_10", "-")),
        )
    console.print(indexes)
    for failed in report["failed"]:
        console.print(f"[red]failed[/] {shown(failed['path'])}: {failed['error']}", highlight=False)


@app.command()
def verify(
    repair: Annotated[bool, typer.Option("--repair", help="Rebuild what disagrees from the stored vectors.")] = False,
    index_dir: IndexOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check that the database, the stored vectors and every FAISS index agree (exit 4 when they do not).

    Example: lbsearch verify --repair
    """
    lib = open_library(index_dir, db)
    problems = lib.repair() if repair else lib.verify()
    remaining = lib.verify() if repair else problems
    if as_json:
        print_json({"problems": [p.__dict__ for p in problems], "repaired": repair, "ok": not remaining})
    elif not problems:
        console.print("[green]ok[/]: the database and every index agree.")
    else:
        for problem in problems:
            console.print(f"[red]disagree[/] model {problem.model_id} {problem.modality}: {problem.problem}")
        console.print("[green]repaired[/]" if repair and not remaining else "Run `lbsearch verify --repair` to fix.")
    if remaining:
        raise typer.Exit(EXIT_DISAGREE)


@app.command()
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to forget (the files are not deleted).")],
    index_dir: IndexOption = None,
    db: DbOption = None,
) -> None:
    """Forget files or folders: their vectors leave every index.

    Example: lbsearch remove ~/Videos/old
    """
    count = open_library(index_dir, db).remove(paths)
    console.print(f"{count} files removed from the library.")


@app.command()
def reindex(
    factory: Annotated[
        str | None, typer.Option(help='Force a FAISS factory string, e.g. "IVF1024,Flat" ("" = automatic).')
    ] = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild every FAISS index from the stored vectors (nothing is re-embedded).

    Example: lbsearch reindex --factory "HNSW32,Flat"
    """
    rebuilt = open_library(index_dir, db).reindex(factory)
    if as_json:
        print_json(rebuilt)
        return
    for entry in rebuilt:
        console.print(
            f"model {entry['model_id']} {entry['modality']}: {entry['ntotal']} vectors, "
            f"{entry['factory']}, recall@10 {entry.get('recall_at_10', 1.0):.3f}"
        )


@app.command()
def ui(
    index_dir: IndexOption = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
) -> None:
    """Open the search page in a browser (Streamlit).

    Example: lbsearch ui --index ./indexes
    """
    from lbsearch.app.live import server_command

    env = dict(os.environ)
    if index_dir is not None:
        env["LBSEARCH_INDEX"] = str(index_dir)
    command = server_command(port, host)
    # Become the server, so that a signal to this process (Ctrl-C, SIGTERM) reaches it and leaves no orphan.
    os.execve(sys.executable, command, env)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where to put the demo library and its index.")] = Path(
        "lbsearch-demo"
    ),
    scenes: Annotated[int, typer.Option(help="Scenes to generate (each: video+sound, image, depth, thermal).")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the generated world.")] = 0,
    workers: Annotated[int, typer.Option(help="Decode processes.")] = 2,
) -> None:
    """Offline demo: generate a small synthetic five-modality library, index it with the bundled demo models,
    run text->X, X->Y and joint queries, and show how to open the UI on it.

    Example: lbsearch demo --dir /tmp/lbsearch-demo --scenes 60
    """
    from lbsearch.demo import run_demo

    console.print(f"Generating {scenes} scenes and indexing them under [bold]{folder}[/] ...")
    report = run_demo(folder, scenes=scenes, seed=seed, workers=workers)
    ingest = report.ingest
    console.print(f"Indexed {ingest.embedded} files ({ingest.vectors} vectors) in {ingest.seconds:.1f} s.\n")
    for query in report.queries:
        table = Table(
            "#", "score", "z", "moment", folded("path"), title=f"{query.kind}: {query.query}", title_justify="left"
        )
        for hit in query.hits:
            moment = "whole" if hit.start is None else f"{hit.start:.1f}-{hit.end:.1f} s"
            table.add_row(
                str(hit.rank),
                f"{hit.score:.3f}",
                f"{hit.calibrated:.2f}",
                moment,
                str(Path(hit.path).relative_to(report.library.resolve())),
            )
        console.print(table)
        verdict = "[green]top hit matches[/]" if query.top_matches else "[yellow]top hit differs[/]"
        console.print(f"  expected {query.expect}: {verdict}\n")
    console.print(f"Open the search page on it:  [bold]lbsearch ui --index {report.index}[/]")
