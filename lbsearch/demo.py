"""The offline demo: a generated toy-world library, indexed with the bundled demo models, and a few queries
whose right answers are known (each scene's attributes are in the manifest).

    report = run_demo("lbsearch-demo")     # what `lbsearch demo` prints
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lbsearch.errors import ConfigError
from lbsearch.ingest.pipeline import IngestOptions, IngestProgress, IngestReport
from lbsearch.library import Library
from lbsearch.models.registry import DEMO_DIR, MODEL_SETS
from lbsearch.search.request import FileQuery
from lbsearch.search.results import Hit
from lbsearch.toyworld import World, read_manifest, write_library


@dataclass
class DemoQuery:
    """One demo query, what it is meant to find, and whether the top hit has it."""

    kind: str  # "text->video", "audio->video (emergent)", ...
    query: str
    expect: dict[str, str]  # attribute -> value the top hit should have
    hits: list[Hit] = field(default_factory=list)
    top_matches: bool = False


@dataclass
class DemoReport:
    folder: Path
    library: Path
    index: Path
    ingest: IngestReport
    queries: list[DemoQuery]


def demo_models_present() -> bool:
    return all((Path(p) / "config.json").is_file() for p in MODEL_SETS["demo"].values())


def run_demo(
    folder: str | Path,
    scenes: int = 40,
    seed: int = 0,
    workers: int = 2,
    progress: Callable[[IngestProgress], None] | None = None,
) -> DemoReport:
    """Generate ``scenes`` toy-world scenes under ``folder``, index them with the demo models, and query."""
    if not demo_models_present():
        raise ConfigError(
            f"the demo models are missing from {DEMO_DIR}; reproduce them with `lbsearch train toy`"
        )
    folder = Path(folder).expanduser()
    library_dir, index_dir = folder / "library", folder / "indexes"
    world_scenes = World(seed).scenes("test", scenes)
    if not (library_dir / "manifest.jsonl").is_file():
        shutil.rmtree(library_dir, ignore_errors=True)
        write_library(library_dir, world_scenes, workers=workers)
    entries = read_manifest(library_dir)
    with Library.open(index_dir) as lib:
        lib.use_models("demo")
        report = lib.add(library_dir, options=IngestOptions(workers=workers), progress=progress)
        queries = _queries(entries)
        by_path = {str(path.resolve()): entry.scene for entry in entries for path in entry.files.values()}
        for query in queries:
            query.hits = _run(lib, query)
            top = by_path.get(str(Path(query.hits[0].path).resolve())) if query.hits else None
            query.top_matches = top is not None and all(top.attributes.get(a) == v for a, v in query.expect.items())
    return DemoReport(folder, library_dir, index_dir, report, queries)


def _queries(entries) -> list[DemoQuery]:
    """Text->X, X->Y and joint queries built from the library's own scenes, so each has a known answer."""
    first, second = entries[0].scene, entries[1].scene
    a1, a2 = first.attributes, second.attributes
    audio_of_second = entries[1].files["audio"]
    thermal_of_first = entries[0].files["thermal"]
    return [
        DemoQuery("text->video", first.caption, dict(a1)),
        DemoQuery("text->image", f"a {a2['colour']} {a2['shape']}", {"colour": a2["colour"], "shape": a2["shape"]}),
        DemoQuery("text->audio", f"the sound of a {a1['shape']}", {"shape": a1["shape"]}),
        DemoQuery("audio->video (emergent)", str(audio_of_second), {"shape": a2["shape"]}),
        DemoQuery("thermal->image (emergent)", str(thermal_of_first), {"shape": a1["shape"]}),
        DemoQuery(
            "joint video+audio",
            f"a {a2['shape']} moving {a2['direction']}",
            {"shape": a2["shape"], "direction": a2["direction"]},
        ),
    ]


def _run(lib: Library, query: DemoQuery) -> list[Hit]:
    if query.kind == "audio->video (emergent)":
        return lib.search(like=FileQuery(query.query), modalities=["video"], k=3)
    if query.kind == "thermal->image (emergent)":
        return lib.search(like=FileQuery(query.query, as_modality="thermal"), modalities=["image"], k=3)
    if query.kind == "joint video+audio":
        return lib.search(query.query, modalities=["video", "audio"], k=3)
    target = query.kind.split("->")[1]
    return lib.search(query.query, modalities=[target], k=3)
