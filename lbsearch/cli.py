"""The `lbsearch` command: a thin Typer layer over the Python API (no logic lives only here).

Exit codes: 0 success; 1 an error (message on stderr, never a traceback); 2 bad usage; 3 indexing finished but
some files failed; 4 `verify` found disagreements; 130 interrupted (Ctrl-C) after a clean stop.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from lbsearch.errors import ConfigError, LbsearchError
from lbsearch.paths import shown

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


# --------------------------------------------------------------------------------------------- train


def log_record(record: dict) -> None:
    """A training progress record: one JSON object per line on stderr, so stdout stays the result."""
    print(json.dumps(record, default=str), file=sys.stderr, flush=True)


def print_bars(bars: dict[str, dict[str, Any]]) -> None:
    table = Table("bar", "value", "needs", "passed", title="The issue's bars (test split)")
    for name, bar in bars.items():
        value = "-" if bar["value"] is None else f"{bar['value']:.3f}"
        passed = {True: "[green]yes[/]", False: "[red]no[/]", None: "not measured"}[bar["passed"]]
        table.add_row(name, value, f">= {bar['bar']}", passed)
    console.print(table)


@train_app.command("toy")
def train_toy(
    preset_name: Annotated[str, typer.Option("--preset", help="Training preset: toy (the demo set) or test.")] = "toy",
    out: Annotated[
        Path | None, typer.Option("--out", help="Where the checkpoint folders go (default: the bundled demo set's).")
    ] = None,
    eval_seed: Annotated[int, typer.Option(help="Seed of the fresh world the saved set is tested on.")] = 1,
    ablations: Annotated[
        list[str] | None,
        typer.Option("--ablations", help="MODALITY to also run the LoRA/full/scratch and mask-ratio ablations on; "
                     "repeatable."),
    ] = None,
    probe_every: Annotated[
        int, typer.Option(help="Log stage 1's zero-shot accuracy on test images every N steps (0: never).")
    ] = 0,
    stage1: Annotated[
        Path | None,
        typer.Option("--stage1", help="Start from this saved image checkpoint instead of training stage 1."),
    ] = None,
    bind: Annotated[
        list[str] | None, typer.Option("--bind", help="MODALITY to bind (repeatable; default all four).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: the preset's).")] = None,
    report_file: Annotated[Path | None, typer.Option("--report", help="Also write the JSON report here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Reproduce the demo checkpoint set: render the toy world, train stage 1 and bind video, audio, depth and
    thermal, save the five checkpoints, then load them back and evaluate them on a fresh world. Progress goes to
    stderr as one JSON object per line.

    Examples:
      lbsearch train toy                                   # writes lbsearch/assets/demo_models/
      lbsearch train toy --preset test --out /tmp/demo --json
      lbsearch train toy --ablations thermal --ablations audio --report /tmp/demo-report.json
      lbsearch train toy --stage1 lbsearch/assets/demo_models/image --bind thermal --ablations thermal --out /tmp/a
    """
    from lbsearch.models.registry import DEMO_DIR
    from lbsearch.train.config import BOUND_MODALITIES
    from lbsearch.train.recipe import train_toy_set

    if report_file is not None and not report_file.parent.is_dir():  # checked now, not after the training
        raise ConfigError(f"--report {report_file}: the folder {report_file.parent} does not exist")
    report = train_toy_set(
        preset_name,
        out or DEMO_DIR,
        eval_seed=eval_seed,
        ablations=ablations or (),
        probe_every=probe_every,
        stage1=stage1,
        bind=bind or BOUND_MODALITIES,
        threads=threads,
        log=log_record,
    )
    if report_file is not None:
        report_file.write_text(json.dumps(report, indent=2, default=str))
    if as_json:
        print_json(report)
        return
    print_bars(report["results"]["bars"])
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["timings_s"].items())
    console.print(f"Timings ({report['threads']} threads): {timings}")
    sizes = report["sizes_bytes"]
    saved = ", ".join(m for m in sizes if m != "total")
    console.print(f"Checkpoints ({saved}; {sizes['total'] / 1e6:.1f} MB) in [bold]{report['out']}[/]", highlight=False)
    for row in report.get("ablations", []):
        console.print(f"ablation {row['modality']} {row['method']} mask {row['mask_ratio']}: "
                      f"zero-shot {row['zero_shot']} ({row['train_s']} s)", highlight=False)


@train_app.command("files")
def train_files(
    manifest: Annotated[Path, typer.Argument(help='JSONL of {"path": ..., "caption": ...} lines.')],
    modality: Annotated[str, typer.Option("--modality", help="The modality to bind: video, audio, depth, thermal.")],
    start: Annotated[
        str,
        typer.Option("--start", help="open_clip:MODEL_NAME:PRETRAINED, or a LanguageBind image checkpoint folder "
                     "or hub id."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder the bound checkpoint is saved to.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="(file, caption) pairs per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-4,
    warmup: Annotated[int | None, typer.Option(help="Linear warm-up steps (default: 10% of --steps).")] = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (--method lora).")] = 16,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (--method lora).")] = 16.0,
    mask_ratio: Annotated[float, typer.Option(help="Fraction of patch tokens dropped per sample in training.")] = 0.5,
    method: Annotated[
        str, typer.Option(help="lora (image-initialised, LoRA), full (image-initialised) or scratch.")
    ] = "lora",
    device: DeviceOption = None,
    workers: Annotated[int, typer.Option(help="Decode processes (0: decode in this process).")] = 4,
    frames: Annotated[int | None, typer.Option(help="Video frames per clip (default: the released 8).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Bind a new modality on your own (file, caption) pairs (LanguageBind stage 2: frozen language tower, LoRA,
    patch masking) and save it as a LanguageBind checkpoint. Progress goes to stderr as JSON lines.

    Examples:
      lbsearch train files audiocaps.jsonl --modality audio --start open_clip:ViT-L-14:/models/clip.bin --out ./my_audio
      lbsearch train files scans.jsonl --modality depth --start LanguageBind/LanguageBind_Image --out ./my_depth
    """
    from lbsearch.library import default_device
    from lbsearch.train import recipe

    stage = recipe.file_stage(modality, steps, batch_size, lr, warmup, method, lora_rank, lora_alpha, mask_ratio)
    summary = recipe.train_files(manifest, stage, start, out, device=device or default_device(), workers=workers,
                                 num_frames=frames, log=log_record)
    if as_json:
        print_json(summary)
    else:
        console.print(f"Bound {modality} in {summary['seconds']} s; checkpoint saved to [bold]{out}[/] "
                      f"(`lbsearch models verify {out}`).", highlight=False)


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


if __name__ == "__main__":
    app()
