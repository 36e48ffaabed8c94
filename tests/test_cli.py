"""The `lbsearch` command, through Typer's runner and as a real process: the library is indexed by `lbsearch index`,
every query kind, fusion mode, grouping, filter and the calibration cut-off answer in `--json` exactly what the Python
API answers (which tests/test_query.py checks against independent computations), and every error is one clear line
on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from test_query import LONG_WINDOW, TEXT, checkpoint_paths, scene_file, write_bad_files, write_media
from typer.testing import CliRunner

from lbsearch import Library
from lbsearch.cli import app
from lbsearch.search.request import FileQuery, Filters, StoredQuery

runner = CliRunner()
HIT_FIELDS = {"path", "item_id", "score", "start", "end", "parts"}
OLD_ENOUGH = "2005-01-01"  # test_query dates the WAVs under sounds/ in 2001


@dataclass(frozen=True)
class Setup:
    index: Path
    media: Path
    empty_index: Path  # models chosen, nothing indexed
    bad: dict[str, Path]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: Path) -> Setup:
    media = tmp_path_factory.mktemp("media")
    facts = write_media(media)
    checkpoints = checkpoint_paths(tiny_checkpoints)
    model_options = [option for m, p in checkpoints.items() for option in ("--model", f"{m}={p}")]
    index = tmp_path_factory.mktemp("index")
    result = runner.invoke(
        app, ["index", str(media), "--index", str(index), "--workers", "0", "--json", *model_options]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["embedded"], summary["failed"]) == (len(facts), 0)

    empty_index = tmp_path_factory.mktemp("empty-index")
    nothing = tmp_path_factory.mktemp("nothing")
    result = runner.invoke(app, ["index", str(nothing), "--index", str(empty_index), "--json", *model_options])
    assert result.exit_code == 0, result.output
    return Setup(index, media, empty_index, write_bad_files(tmp_path_factory.mktemp("bad")))


@pytest.fixture(scope="module")
def api(setup: Setup) -> Iterator[Library]:
    library = Library.open(setup.index)
    yield library
    library.close()


def search_json(setup: Setup, args: list[str]) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["search", *args, "--index", str(setup.index), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def file_id(api: Library, path: Path) -> int:
    record = api.db.file_by_path(str(path.resolve()))
    assert record is not None
    return record.id


# name: (CLI arguments, Library.search keyword arguments), both built from the media folder and the API library
Case = Callable[[Path, Library], tuple[list[str], dict[str, Any]]]


def _sound(media: Path) -> Path:
    return scene_file(media, "audio", 1)


SEARCH_CASES: dict[str, Case] = {
    "text": lambda m, a: ([TEXT, "--in", "video"], {"text": TEXT, "modalities": ["video"]}),
    "text, every indexed modality": lambda m, a: ([TEXT], {"text": TEXT}),
    "audio file -> video": lambda m, a: (
        ["--like", str(_sound(m)), "--in", "video"],
        {"like": FileQuery(str(_sound(m))), "modalities": ["video"]},
    ),
    "thermal file -> image": lambda m, a: (
        ["--like", str(scene_file(m, "thermal", 0)), "--like-as", "thermal", "--in", "image"],
        {"like": FileQuery(str(scene_file(m, "thermal", 0)), as_modality="thermal"), "modalities": ["image"]},
    ),
    "stored file by id": lambda m, a: (
        ["--like", str(file_id(a, m / "long.wav")), "--in", "audio", "--in", "video"],
        {"like": StoredQuery(file_id(a, m / "long.wav")), "modalities": ["audio", "video"]},
    ),
    "time range of a stored file": lambda m, a: (
        [
            "--like",
            str(file_id(a, m / "long.wav")),
            "--from",
            "10",
            "--to",
            "20",
            "--in",
            "audio",
            "--group",
            "segment",
        ],
        {"like": StoredQuery(file_id(a, m / "long.wav"), *LONG_WINDOW), "modalities": ["audio"], "group": "segment"},
    ),
    "sound of a stored video": lambda m, a: (
        ["--like", str(file_id(a, scene_file(m, "video", 2))), "--like-as", "audio", "--in", "audio"],
        {"like": StoredQuery(file_id(a, scene_file(m, "video", 2)), modality="audio"), "modalities": ["audio"]},
    ),
    "time range of a file on disk": lambda m, a: (
        ["--like", str(m / "long.wav"), "--from", "10", "--to", "20", "--in", "audio", "--group", "segment"],
        {"like": FileQuery(str(m / "long.wav"), start=10, end=20), "modalities": ["audio"], "group": "segment"},
    ),
    "weighted parts": lambda m, a: (
        ["--part", f"{_sound(m)}=2", "--part", "at night=0.5", "--part", "people=-1", "--in", "video"],
        {"parts": [(str(_sound(m)), 2.0), ("at night", 0.5), ("people", -1.0)], "modalities": ["video"]},
    ),
    **{
        f"joint {mode}": lambda m, a, mode=mode: (
            [TEXT, "--in", "video", "--in", "audio", "--fuse", mode, "--weight", "video=2", "--weight", "audio=-0.5"],
            {"text": TEXT, "modalities": ["video", "audio"], "fuse": mode, "weights": {"video": 2, "audio": -0.5}},
        )
        for mode in ("sum", "temperature", "rrf")
    },
    "segments": lambda m, a: (
        [TEXT, "--in", "audio", "--group", "segment", "-k", "20"],
        {"text": TEXT, "modalities": ["audio"], "group": "segment", "k": 20},
    ),
    "items": lambda m, a: (
        [TEXT, "--in", "image", "--in", "thermal", "--group", "item"],
        {"text": TEXT, "modalities": ["image", "thermal"], "group": "item"},
    ),
    "page": lambda m, a: (
        [TEXT, "--in", "audio", "-k", "2", "--offset", "3"],
        {"text": TEXT, "modalities": ["audio"], "k": 2, "offset": 3},
    ),
    "glob": lambda m, a: (
        [TEXT, "--in", "audio", "--glob", "*/sounds/*"],
        {"text": TEXT, "modalities": ["audio"], "filters": Filters(path_glob="*/sounds/*")},
    ),
    "file modality": lambda m, a: (
        [TEXT, "--in", "audio", "--file-modality", "video"],
        {"text": TEXT, "modalities": ["audio"], "filters": Filters(file_modalities=("video",))},
    ),
    "duration": lambda m, a: (
        [TEXT, "--in", "audio", "--min-duration", "2", "--max-duration", "20"],
        {"text": TEXT, "modalities": ["audio"], "filters": Filters(min_duration=2, max_duration=20)},
    ),
    "modified before": lambda m, a: (
        [TEXT, "--in", "audio", "--before", OLD_ENOUGH],
        {"text": TEXT, "modalities": ["audio"], "filters": Filters(modified_before=datetime.fromisoformat(OLD_ENOUGH))},
    ),
    "modified after": lambda m, a: (
        [TEXT, "--in", "audio", "--after", OLD_ENOUGH],
        {"text": TEXT, "modalities": ["audio"], "filters": Filters(modified_after=datetime.fromisoformat(OLD_ENOUGH))},
    ),
    "where": lambda m, a: (
        [TEXT, "--in", "video", "--where", "width=56", "--where", "has_audio=true"],
        {"text": TEXT, "modalities": ["video"], "filters": Filters(where={"width": 56, "has_audio": True})},
    ),
    "calibrated cut-off": lambda m, a: (
        [TEXT, "--in", "audio", "--group", "segment", "-k", "20", "--min-score", "0.3"],
        {"text": TEXT, "modalities": ["audio"], "group": "segment", "k": 20, "min_score": 0.3},
    ),
}


@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_search_json_answers_what_the_api_answers(setup: Setup, api: Library, case: str) -> None:
    args, query = SEARCH_CASES[case](setup.media, api)
    hits = search_json(setup, args)
    assert hits, "every case is built to find something"
    assert hits == as_json([hit.to_dict() for hit in api.search(**query)])
    for hit in hits:
        assert set(hit) >= HIT_FIELDS
        assert all(isinstance(value, float) for value in hit["parts"].values())


def test_where_values_are_typed(setup: Setup) -> None:
    """``--where has_audio=false`` means the boolean, not the text "false"."""
    hits = search_json(setup, [TEXT, "--in", "video", "--where", "has_audio=false"])
    assert [hit["path"] for hit in hits] == [str((setup.media / "silent.mp4").resolve())]


def test_search_prints_a_table_for_people(setup: Setup) -> None:
    result = runner.invoke(app, ["search", TEXT, "--in", "audio", "-k", "3", "--index", str(setup.index)])
    assert result.exit_code == 0, result.output
    assert "3 hits" in result.stdout and "audio" in result.stdout


def test_classify_and_status(setup: Setup, api: Library) -> None:
    result = runner.invoke(
        app, ["classify", "dog", "rain", "--in", "audio", "-k", "2", "--index", str(setup.index), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    labels = api.classify(["dog", "rain"], "audio", k=2)
    assert {str(row["file_id"]): row["labels"] for row in rows} == as_json(labels)
    assert all(row["path"] == api.db.file(row["file_id"]).path for row in rows)

    result = runner.invoke(app, ["status", "--index", str(setup.index), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["models"] == api.models and status["failed"] == []


def test_status_shows_the_precision_of_the_vectors(setup: Setup) -> None:
    # The tiny golden towers were indexed at the default, auto: towers this small stay exact (fp32).
    result = runner.invoke(app, ["status", "--index", str(setup.index), "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["vectors"]
    assert groups and all(group["precisions"] == {"fp32": group["vectors"]} for group in groups)
    result = runner.invoke(app, ["status", "--index", str(setup.index)])
    assert result.exit_code == 0, result.output
    assert "precision" in result.output and "fp32" in result.output


# ---------------------------------------------------------------------------------------------------- errors

# name: (arguments after the command, which library, exit code, what the message says)
ERROR_CASES: dict[str, tuple[Callable[[Setup], list[str]], str, int, str]] = {
    "unknown modality": (lambda s: ["search", TEXT, "--in", "smell"], "index", 1, "unknown modality 'smell'"),
    "missing file": (lambda s: ["search", "--like", str(s.media / "missing.wav")], "index", 1, "no such file"),
    "missing file in a part": (lambda s: ["search", "--part", "missing.wav=1"], "index", 1, "no such file"),
    "undecodable audio": (lambda s: ["search", "--like", str(s.bad["bad.wav"])], "index", 1, "cannot decode audio"),
    "undecodable video": (lambda s: ["search", "--like", str(s.bad["bad.mp4"])], "index", 1, "cannot open as video"),
    "undecodable image": (lambda s: ["search", "--like", str(s.bad["bad.png"])], "index", 1, "cannot decode image"),
    "not media": (lambda s: ["search", "--like", str(s.bad["notes.txt"])], "index", 1, "unknown extension"),
    "no library": (lambda s: ["search", TEXT], "missing", 1, "no library at"),
    "precision the CPU cannot run": (
        lambda s: ["search", TEXT, "--device", "cpu", "--precision", "fp16"], "index", 1,
        "precision 'fp16' is not available on cpu",
    ),
    "empty library": (lambda s: ["search", TEXT], "empty", 1, "is empty"),
    "empty query": (lambda s: ["search"], "index", 1, "empty query"),
    "part without weight": (lambda s: ["search", "--part", "rain"], "index", 2, "expected NAME=VALUE"),
    "part weight not a number": (lambda s: ["search", "--part", "rain=loud"], "index", 2, "'loud' is not a number"),
    "weight without value": (lambda s: ["search", TEXT, "--weight", "video"], "index", 2, "expected NAME=VALUE"),
    "weight not a number": (lambda s: ["search", TEXT, "--weight", "video=x"], "index", 2, "'x' is not a number"),
    "weight of an unsearched modality": (
        lambda s: ["search", TEXT, "--in", "video", "--weight", "audio=1"],
        "index",
        1,
        "not searched",
    ),
    "parts cancel": (lambda s: ["search", "--part", "rain=1", "--part", "rain=-1"], "index", 1, "cancel out"),
    "unknown fusion": (lambda s: ["search", TEXT, "--fuse", "max"], "index", 1, "unknown fusion mode"),
    "unknown grouping": (lambda s: ["search", TEXT, "--group", "day"], "index", 1, "unknown grouping"),
    "time range of an image": (
        lambda s: ["search", "--like", str(scene_file(s.media, "image", 0)), "--from", "1", "--to", "2"],
        "index",
        1,
        "video and audio only",
    ),
    "range without --like": (lambda s: ["search", TEXT, "--from", "1"], "index", 2, "give --like too"),
    "bad date": (lambda s: ["search", TEXT, "--after", "yesterday"], "index", 2, "expected a date"),
    "unknown column": (lambda s: ["search", TEXT, "--where", "colour=red"], "index", 1, "no column 'colour'"),
    "stored file not there": (lambda s: ["search", "--like", "99999"], "index", 1, "no file with id 99999"),
    "classify unknown modality": (lambda s: ["classify", "dog", "--in", "smell"], "index", 1, "unknown modality"),
}


def index_of(setup: Setup, which: str) -> Path:
    return {"index": setup.index, "empty": setup.empty_index, "missing": setup.index.parent / "no-such-index"}[which]


def assert_one_line_error(stderr: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_clear_line_and_an_exit_code(setup: Setup, case: str) -> None:
    build, which, code, message = ERROR_CASES[case]
    result = runner.invoke(app, [*build(setup), "--index", str(index_of(setup, which))])
    assert result.exit_code == code, result.output
    # Raised on purpose (typer.Exit), not an exception escaping the command (which the runner would swallow).
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert_one_line_error(result.stderr, message)
    assert index_of(setup, "missing").exists() is False  # a read-only command never creates a library


def test_read_only_commands_leave_a_folder_that_is_not_a_library_alone(tmp_path: Path) -> None:
    # A mistyped --index that names an existing folder of other things (say ~/Videos).
    (tmp_path / "holiday.mp4").write_bytes(b"")
    for command in (["status"], ["search", TEXT], ["verify"]):
        result = runner.invoke(app, [*command, "--index", str(tmp_path)])
        assert result.exit_code == 1, result.output
        assert_one_line_error(result.stderr, f"no library at {tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday.mp4"]


def test_a_bad_option_value_is_a_usage_error(setup: Setup) -> None:
    result = runner.invoke(app, ["search", TEXT, "-k", "many", "--index", str(setup.index)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for '-k'" in result.stderr


# ------------------------------------------------------------------------------------------- a real process

# The cases run as real processes, all started at once (each but the usage error pays for importing torch).
PROCESS_CASES = ["unknown modality", "missing file", "empty library", "undecodable video", "part without weight"]


@pytest.fixture(scope="module")
def processes(setup: Setup) -> Iterator[dict[str, subprocess.Popen]]:
    """`python -m lbsearch.cli` (what the `lbsearch` console script runs), one process per case, started together."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def start(args: list[str]) -> subprocess.Popen:
        command = [sys.executable, "-m", "lbsearch.cli", *args]
        return subprocess.Popen(
            command, cwd=setup.media, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    sound = str(scene_file(setup.media, "audio", 1))
    started = {"search": start(["search", "--like", sound, "--in", "audio", "--json", "--index", str(setup.index)])}
    for case in PROCESS_CASES:
        build, which, _, _ = ERROR_CASES[case]
        started[case] = start([*build(setup), "--index", str(index_of(setup, which))])
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_real_process_searches(processes: dict[str, subprocess.Popen], setup: Setup, api: Library) -> None:
    stdout, stderr = processes["search"].communicate(timeout=300)
    assert processes["search"].returncode == 0, stderr
    expected = api.search(like=str(scene_file(setup.media, "audio", 1)), modalities=["audio"])
    assert json.loads(stdout) == as_json([hit.to_dict() for hit in expected])


@pytest.mark.parametrize("case", PROCESS_CASES)
def test_a_real_process_fails_cleanly(processes: dict[str, subprocess.Popen], case: str) -> None:
    _, _, code, message = ERROR_CASES[case]
    stdout, stderr = processes[case].communicate(timeout=300)
    assert processes[case].returncode == code
    assert stdout == "" and "Traceback" not in stderr
    if case == "undecodable video":
        # decord and FFmpeg write to the process's stderr themselves; our own message is still the one error line.
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], stderr
    else:
        assert_one_line_error(stderr, message)
