"""Precisions: the `auto` choice (with stubbed timings), reduced precisions against fp32 on real models and a real
toy library, the precision recorded with every vector, and the decode workers' priority beside a heavy encoder."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.encode import large_config
from lbsearch import Library
from lbsearch.errors import ConfigError
from lbsearch.ingest.pipeline import WORKER_NICENESS, IngestOptions, Ingestor
from lbsearch.models import autotune, build_encoder, load_checkpoint
from lbsearch.models.autotune import Trial
from lbsearch.models.precision import apply_to_tower
from lbsearch.models.registry import model_set
from lbsearch.search.engine import StoredQuery
from lbsearch.storage.database import Database
from lbsearch.storage.schema import SCHEMA_VERSION
from lbsearch.toyworld import LIBRARY_PATHS, World, write_library

DEMO = model_set("demo")
SCENES = 16  # 16 files per modality: a top-10 is a real choice
K = 10
# Measured, and kept visible (strict: it fails the day int8 reaches the goal here): int8 on the width-64 demo towers
# keeps 96.8% of fp32's top-10 for text queries and 95.7% for X->Y, short of 99%. Their 64-d embeddings of a toy
# world lie close together, so the activation rounding reorders near ties. `auto` never runs them at int8: towers
# this small stay fp32 (test_auto_keeps_a_light_tower_exact), and the demo audio tower's int8 cosine (0.998) fails
# the 0.999 check anyway.
INT8_ON_TINY_TOWERS = pytest.mark.xfail(
    strict=True, reason="int8 keeps 95.7-96.8% of fp32's top-10 on the width-64 demo towers (goal 99%)"
)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The precision cache of each test in its own folder (never the user's)."""
    monkeypatch.setenv("LBSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------- the auto choice


def test_auto_on_a_cpu_without_bf16_never_times_bf16() -> None:
    assert autotune.candidates("cpu", flags={"avx2", "fma", "f16c"}) == ("fp32", "int8")
    assert autotune.candidates("cpu", flags={"avx2", "avx512_bf16"}) == ("fp32", "bf16", "int8")
    assert autotune.candidates("cpu", flags={"amx_bf16"}) == ("fp32", "bf16", "int8")


@pytest.mark.parametrize(
    ("trials", "expected"),
    [
        # int8 faster and agreeing: int8
        ([Trial("fp32", 1.0, 1.0), Trial("int8", 4.6, 0.9995)], "int8"),
        # int8 slower (no fast int8 kernels): fp32, never the slower precision
        ([Trial("fp32", 1.0, 1.0), Trial("int8", 0.8, 0.9999)], "fp32"),
        # int8 faster but disagreeing with fp32 on one item: fp32
        ([Trial("fp32", 1.0, 1.0), Trial("int8", 4.6, 0.998)], "fp32"),
        # where bf16 runs in hardware and beats int8
        ([Trial("fp32", 1.0, 1.0), Trial("bf16", 5.0, 0.9999), Trial("int8", 4.6, 0.9995)], "bf16"),
        # emulated bf16 (3x slower) against int8
        ([Trial("fp32", 1.0, 1.0), Trial("bf16", 0.33, 0.9999), Trial("int8", 4.6, 0.9995)], "int8"),
    ],
)
def test_auto_picks_the_fastest_precision_that_agrees(trials: list[Trial], expected: str) -> None:
    assert autotune.choose(trials) == expected


def test_auto_measures_once_per_machine_and_model_shape(monkeypatch: pytest.MonkeyPatch, own_cache: Path) -> None:
    monkeypatch.setattr(autotune, "HEAVY_ENCODER_PARAMETERS", 0)  # the demo tower stands in for a heavy one
    monkeypatch.setattr(autotune, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    calls: list[tuple[int, tuple[str, ...]]] = []

    def stub(tower: torch.nn.Module, batch: torch.Tensor, names) -> list[Trial]:
        calls.append((batch.shape[0], tuple(names)))
        return [Trial("fp32", 1.0, 1.0), Trial("int8", 3.0, 0.9996)]

    monkeypatch.setattr(autotune, "measure", stub)
    encoder = load_checkpoint(DEMO["image"], precision="auto")
    real = torch.randn(6, 3, 56, 56)
    out = encoder.encode(real)
    assert encoder.precision == "int8" and out.shape == (6, encoder.dim)
    # The calibration batch: the first real inputs, at most CALIBRATION_ITEMS of them; no bf16 on this CPU.
    assert calls == [(autotune.CALIBRATION_ITEMS, ("fp32", "int8"))]
    assert (own_cache / autotune.CACHE_FILE).is_file()
    again = load_checkpoint(DEMO["image"], precision="auto")
    again.encode(real[:1])
    assert again.precision == "int8" and len(calls) == 1  # from the cache
    other_shape = load_checkpoint(DEMO["audio"], precision="auto")
    other_shape.encode(torch.randn(1, 3, *other_shape.config.vision.image_size))
    assert len(calls) == 2  # another model shape is measured on its own


def test_auto_keeps_a_light_tower_exact() -> None:
    encoder = load_checkpoint(DEMO["image"], precision="auto")
    inputs = torch.randn(3, 3, 56, 56)
    assert torch.equal(encoder.encode(inputs), load_checkpoint(DEMO["image"]).encode(inputs))
    assert encoder.precision == "fp32"


def test_auto_measures_real_precisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The micro-benchmark itself (unstubbed) on a real tower: every candidate timed, each compared with fp32."""
    encoder = load_checkpoint(DEMO["video"])
    batch = autotune.example_inputs(encoder.config, 2)
    trials = autotune.measure(encoder.vision, batch, ("fp32", "bf16", "int8"))
    assert [t.precision for t in trials] == ["fp32", "bf16", "int8"]
    assert all(t.items_per_second > 0 for t in trials)
    assert trials[0].min_cosine == pytest.approx(1.0, abs=1e-6)
    assert all(0.99 < t.min_cosine <= 1.0 + 1e-6 for t in trials)


@pytest.mark.parametrize(("precision", "device"), [("fp16", "cpu"), ("int8", "cuda"), ("fp64", "cpu")])
def test_a_precision_the_device_cannot_run_is_a_clear_error(precision: str, device: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"precision '{precision}' is not available on {device}"):
        Library.open(tmp_path / "lib", device=device, precision=precision)


# ------------------------------------------------------------------------------------ agreement with fp32


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_large_encoders_agree_with_fp32(precision: str, modality: str) -> None:
    """ViT-L-shaped towers with random weights: cosine >= 0.999 on every item. Kept cheap: 2 of the 24 layers
    (the error per layer is what precision changes; the width, heads and inputs are the Large ones), 2 items."""
    config = large_config(modality)
    config = replace(config, vision=replace(config.vision, num_hidden_layers=2))
    torch.manual_seed(0)
    encoder = build_encoder(config)
    encoder.text = None
    batch = autotune.example_inputs(config, 2)
    reference = encoder.encode(batch)
    apply_to_tower(encoder.vision, precision)
    cosines = (encoder.encode(batch) * reference).sum(-1)
    assert cosines.min() >= autotune.MIN_COSINE, cosines


@pytest.fixture(scope="module")
def toy_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_library(root, World(0).scenes("test", SCENES), workers=1)
    return root


@pytest.fixture(scope="module")
def libraries(toy_library: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Library]:
    """The toy library indexed with the demo models at each CPU precision."""
    opened = {}
    for precision in ("fp32", "bf16", "int8"):
        lib = Library.open(tmp_path_factory.mktemp(precision), device="cpu", precision=precision)
        lib.use_models("demo")
        report = lib.add(toy_library, options=IngestOptions(workers=1))
        assert report.failed == 0 and report.embedded == SCENES * len(LIBRARY_PATHS)
        opened[precision] = lib
    yield opened
    for lib in opened.values():
        lib.close()


def _top(lib: Library, **query) -> list[str]:
    return [hit.path for hit in lib.search(k=K, group="file", **query)]


def _agreement(libraries: dict[str, Library], precision: str, queries: list[dict]) -> float:
    overlaps = []
    for query in queries:
        expected, found = _top(libraries["fp32"], **query), _top(libraries[precision], **query)
        assert len(expected) == K
        overlaps.append(len(set(expected) & set(found)) / K)
    return float(np.mean(overlaps))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_every_vector_records_its_precision(libraries: dict[str, Library], precision: str) -> None:
    status = libraries[precision].status()
    assert {g["modality"]: g["precisions"] for g in status["vectors"]} == {
        # a video also gives its sound track: audio vectors of the WAVs and of the videos
        m: {precision: SCENES * (2 if m == "audio" else 1)} for m in LIBRARY_PATHS
    }


@pytest.mark.parametrize("precision", ["bf16", pytest.param("int8", marks=INT8_ON_TINY_TOWERS)])
def test_text_queries_agree_with_fp32(libraries: dict[str, Library], toy_library: Path, precision: str) -> None:
    captions = [f"a {shape} moving" for shape in ("circle", "square", "triangle", "star")] + [
        "a red circle", "a loud sound", "a hot object", "something far away"
    ]
    queries = [{"text": caption, "modalities": [m]} for caption in captions for m in LIBRARY_PATHS]
    assert _agreement(libraries, precision, queries) >= 0.99


@pytest.mark.parametrize("precision", ["bf16", pytest.param("int8", marks=INT8_ON_TINY_TOWERS)])
def test_x_to_y_queries_agree_with_fp32(libraries: dict[str, Library], toy_library: Path, precision: str) -> None:
    pairs = [("audio", "video"), ("thermal", "image"), ("image", "depth"), ("video", "audio"), ("depth", "thermal")]
    queries = [
        {"like": StoredQuery(str((toy_library / LIBRARY_PATHS[x].format(id=path.stem)).resolve())), "modalities": [y]}
        for x, y in pairs
        for path in sorted((toy_library / Path(LIBRARY_PATHS[x]).parent).glob(f"*{Path(LIBRARY_PATHS[x]).suffix}"))[:6]
    ]
    assert _agreement(libraries, precision, queries) >= 0.99


# -------------------------------------------------------------------------------------------- the schema


def test_an_old_library_upgrades_and_shows_unrecorded_vectors(toy_library: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    with Library.open(folder, device="cpu", precision="fp32") as lib:
        lib.use_models("demo")
        lib.add(toy_library / "sounds", options=IngestOptions(workers=0))
    # Make it a version-1 library (before vectors recorded their precision): no column, no version table.
    with sqlite3.connect(folder / "metadata.sqlite") as connection:
        connection.execute("ALTER TABLE vectors DROP COLUMN precision")
        connection.execute("DROP TABLE schema_version")
    with Library.open(folder, device="cpu", precision="int8") as lib:
        assert lib.status()["vectors"][0]["precisions"] == {"unrecorded": SCENES}
        lib.add(toy_library / "scenes" / "rgb", options=IngestOptions(workers=0))
        counts = {g["modality"]: g["precisions"] for g in lib.status()["vectors"]}
        assert counts == {"audio": {"unrecorded": SCENES}, "image": {"int8": SCENES}}
    with Database.open(folder) as db, db.session() as session:
        assert session.connection().exec_driver_sql("SELECT version FROM schema_version").scalar() == SCHEMA_VERSION


# -------------------------------------------------------------------------------------------- the pipeline


def test_decode_workers_yield_to_a_heavy_encoder_on_the_cpu(tmp_path: Path) -> None:
    light = {"image": load_checkpoint(DEMO["image"])}
    config = large_config("image")
    heavy = build_encoder(replace(config, vision=replace(config.vision, num_hidden_layers=2)))
    heavy.text = None
    base = os.nice(0)
    with Database.open(tmp_path) as db:
        for encoders, niceness in ((light, base), ({"image": heavy}, base + WORKER_NICENESS)):
            with Ingestor(db, encoders, {"image": 1}, IngestOptions(workers=1)).start_decoding() as pool:
                assert pool.executor.submit(os.nice, 0).result() == min(niceness, 19)
