"""The query engine through the Python API, on a small library the tests write and index with the tiny official-format
checkpoints (random weights: rankings are arbitrary but deterministic).

Every expectation is computed apart from the engine: query embeddings from independently loaded encoders, rankings by
brute force in numpy over the vectors the database stores, fusion, calibration and zero-shot labels from their
definitions, filters from what the test knows about the files it wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image

from lbsearch import Library
from lbsearch.errors import ConfigError, LbsearchError, MediaError, QueryError
from lbsearch.ingest.pipeline import IngestOptions
from lbsearch.models import Encoder, load_checkpoint
from lbsearch.search.request import FileQuery, Filters, StoredQuery
from lbsearch.search.results import Hit
from lbsearch.search.templates import prompts_for, templates_for
from lbsearch.storage.records import VectorInfo
from lbsearch.toyworld import LIBRARY_PATHS, World, write_library
from lbsearch.toyworld.render import write_mp4

CHECKPOINTS = {
    "video": "video_ft",
    "audio": "audio_ft",
    "depth": "depth_lora",
    "thermal": "thermal_lora",
    "image": "image",
}
TEXT = "a dog barking at night"
# Files whose modification time the tests set to this moment before indexing (for the date filters).
DATED = datetime(2001, 2, 3, 12, 0)
SCENES = 4
LONG_AUDIO_SECONDS = 25.0
SAMPLE_RATE = 16_000
TOLERANCE = 1e-5
# Where the indexing windows (10 s every 5 s) put one window of the long audio.
LONG_WINDOW = (10.0, 20.0)


@dataclass(frozen=True)
class MediaFacts:
    """What the test knows about a file it wrote."""

    modality: str
    duration: float | None
    has_audio: bool
    width: int | None
    dated: bool


def checkpoint_paths(tiny_checkpoints: Path) -> dict[str, str]:
    return {modality: str(tiny_checkpoints / name) for modality, name in CHECKPOINTS.items()}


def write_media(root: Path) -> dict[str, MediaFacts]:
    """The test library: toy-world scenes (a video with its sound, the sound as a WAV, RGB/depth/thermal frames of
    one scene), a 25 s audio (indexed in windows), a silent 64x48 video. The WAVs under sounds/ are dated
    `DATED`. Returns the facts of every file by absolute path."""
    scenes = World(0).scenes("train", SCENES)
    write_library(root, scenes, workers=1)
    facts: dict[str, MediaFacts] = {}
    for scene in scenes:
        for modality, template in LIBRARY_PATHS.items():
            path = root / template.format(id=scene.id)
            timed = modality in ("video", "audio")
            width = 56 if modality != "audio" else None
            facts[str(path.resolve())] = MediaFacts(
                modality, scene.nuisance.seconds if timed else None, timed, width, modality == "audio"
            )
            if modality == "audio":
                moment = DATED.timestamp()
                os.utime(path, (moment, moment))

    seconds = np.arange(int(LONG_AUDIO_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 30 * seconds) * seconds)
    soundfile.write(root / "long.wav", chirp.astype(np.float32), SAMPLE_RATE)
    facts[str((root / "long.wav").resolve())] = MediaFacts("audio", LONG_AUDIO_SECONDS, True, None, False)

    frames = np.random.default_rng(0).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    write_mp4(root / "silent.mp4", frames, 2.0, None, SAMPLE_RATE)
    facts[str((root / "silent.mp4").resolve())] = MediaFacts("video", 2.0, False, 64, False)
    return facts


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Files that cannot be decoded, by kind, plus a file that is no media at all."""
    folder.mkdir(parents=True, exist_ok=True)
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files = {}
    for name in ("bad.wav", "bad.mp4", "bad.png"):
        files[name] = folder / name
        files[name].write_bytes(garbage)
    files["notes.txt"] = folder / "notes.txt"
    files["notes.txt"].write_text("not media")
    return files


def build_library(folder: Path, media_root: Path, checkpoints: dict[str, str]) -> Library:
    lib = Library.open(folder)
    lib.use_models(checkpoints)
    report = lib.add(media_root, options=IngestOptions(workers=0))
    assert report.failed == 0, report.errors
    return lib


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoints: Path) -> dict[str, str]:
    return checkpoint_paths(tiny_checkpoints)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def facts(media_root: Path) -> dict[str, MediaFacts]:
    return write_media(media_root)


@pytest.fixture(scope="module")
def lib(
    tmp_path_factory: pytest.TempPathFactory, media_root: Path, facts: dict, checkpoints: dict
) -> Iterator[Library]:
    library = build_library(tmp_path_factory.mktemp("index"), media_root, checkpoints)
    yield library
    library.close()


@pytest.fixture(scope="module")
def encoders(checkpoints: dict[str, str]) -> dict[str, Encoder]:
    """Encoders loaded apart from the library, to compute query embeddings independently."""
    return {modality: load_checkpoint(path) for modality, path in checkpoints.items()}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bad_files(tmp_path_factory.mktemp("bad"))


# ------------------------------------------------------------------------------------------------- helpers


def stored(lib: Library, modality: str) -> list[tuple[VectorInfo, np.ndarray]]:
    """Every stored vector of ``modality`` (there is one model per modality here) with where it comes from."""
    (model,) = [m for m in lib.db.models() if m.modality == modality]
    batches = list(lib.db.iter_vectors(model.id, modality))
    ids = np.concatenate([ids for ids, _ in batches])
    vectors = np.concatenate([vectors for _, vectors in batches])
    infos = lib.db.describe_vectors(ids.tolist())
    return [(infos[int(i)], vector) for i, vector in zip(ids, vectors, strict=True)]


def best_per_group(
    rows: list[tuple[VectorInfo, np.ndarray]], query: np.ndarray, key: Callable[[VectorInfo], Any]
) -> dict[Any, tuple[float, VectorInfo]]:
    """The best cosine and its vector per group, by brute force."""
    best: dict[Any, tuple[float, VectorInfo]] = {}
    for info, vector in rows:
        cosine = float(vector @ query)
        if key(info) not in best or cosine > best[key(info)][0]:
            best[key(info)] = (cosine, info)
    return best


def ranking(best: dict[Any, tuple[float, VectorInfo]]) -> list[tuple[Any, float, VectorInfo]]:
    return [(key, cosine, info) for key, (cosine, info) in sorted(best.items(), key=lambda kv: -kv[1][0])]


def by_file(info: VectorInfo) -> int:
    return info.file_id


def by_item(info: VectorInfo) -> int:
    assert info.item_id is not None
    return info.item_id


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def text_embedding(encoders: dict[str, Encoder], modality: str, text: str = TEXT) -> np.ndarray:
    return encoders[modality].encode_text([text])[0].numpy()


def file_embedding(encoders: dict[str, Encoder], modality: str, path: Path) -> np.ndarray:
    encoder = encoders[modality]
    return encoder.encode(encoder.preprocess(path)[None])[0].numpy()


def assert_file_ranking(hits: list[Hit], expected: list[tuple[Any, float, VectorInfo]]) -> None:
    """Hits grouped per file equal a brute-force per-file ranking: order, scores, best segment."""
    assert [hit.file_id for hit in hits] == [file_id for file_id, _, _ in expected]
    for hit, (_, cosine, info) in zip(hits, expected, strict=True):
        assert hit.score == pytest.approx(cosine, abs=TOLERANCE)
        assert (hit.start, hit.end, hit.path) == (info.start, info.end, info.path)
        assert hit.matches[hit.modality].vector_id == info.vector_id


def z_scores(lib: Library, modality: str, query: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the query's cosines with the whole index (smaller than the background
    sample, so the sample is all of it)."""
    cosines = np.array([float(vector @ query) for _, vector in stored(lib, modality)])
    return float(cosines.mean()), float(cosines.std())


def file_id(lib: Library, path: Path) -> int:
    record = lib.db.file_by_path(str(path.resolve()))
    assert record is not None, path
    return record.id


def scene_file(root: Path, modality: str, scene: int) -> Path:
    return root / LIBRARY_PATHS[modality].format(id=f"train-{scene:06d}")


# --------------------------------------------------------------------------------------------------- text->X


@pytest.mark.parametrize("modality", list(CHECKPOINTS))
def test_text_search_ranks_files_by_their_best_segment(lib: Library, encoders: dict, modality: str) -> None:
    hits = lib.search(TEXT, modalities=[modality], k=100)
    expected = ranking(best_per_group(stored(lib, modality), text_embedding(encoders, modality), by_file))
    assert_file_ranking(hits, expected)
    assert [hit.rank for hit in hits] == list(range(1, len(hits) + 1))
    assert all(hit.modality == modality and hit.parts == {modality: hit.score} for hit in hits)


def test_grouping_per_file_gives_each_file_once_with_its_best_window(
    lib: Library, encoders: dict, media_root: Path
) -> None:
    hits = lib.search(TEXT, modalities=["audio"], k=100)
    assert len({hit.file_id for hit in hits}) == len(hits)
    long_hit = next(hit for hit in hits if hit.path == str((media_root / "long.wav").resolve()))
    spans = [(info, vector) for info, vector in stored(lib, "audio") if info.file_id == long_hit.file_id]
    # The whole file and windows of 10 s every 5 s.
    assert sorted((info.start, info.end) for info, _ in spans if info.start is not None) == [
        (0.0, 10.0),
        (5.0, 15.0),
        (10.0, 20.0),
        (15.0, 25.0),
    ]
    query = text_embedding(encoders, "audio")
    best_info, best_vector = max(spans, key=lambda span: float(span[1] @ query))
    assert (long_hit.start, long_hit.end) == (best_info.start, best_info.end)
    assert long_hit.score == pytest.approx(float(best_vector @ query), abs=TOLERANCE)


def test_ungrouped_search_returns_every_segment(lib: Library, encoders: dict) -> None:
    rows = stored(lib, "audio")
    hits = lib.search(TEXT, modalities=["audio"], group="segment", k=100)
    query = text_embedding(encoders, "audio")
    expected = sorted(rows, key=lambda row: -float(row[1] @ query))
    assert [hit.matches["audio"].vector_id for hit in hits] == [info.vector_id for info, _ in expected]
    assert [(hit.start, hit.end) for hit in hits] == [(info.start, info.end) for info, _ in expected]
    assert len({hit.file_id for hit in hits}) < len(hits)  # windowed files appear once per window


def test_a_modality_named_twice_is_searched_once(lib: Library) -> None:
    assert lib.search(TEXT, modalities=["audio", "audio"]) == lib.search(TEXT, modalities=["audio"])


def test_paging_is_consistent(lib: Library) -> None:
    full = lib.search(TEXT, modalities=["audio"], group="segment", k=7)
    page = lib.search(TEXT, modalities=["audio"], group="segment", k=3, offset=4)
    assert [hit.matches["audio"].vector_id for hit in page] == [hit.matches["audio"].vector_id for hit in full[4:7]]
    assert [hit.rank for hit in page] == [5, 6, 7]
    assert lib.search(TEXT, modalities=["audio"], k=2) == lib.search(TEXT, modalities=["audio"], k=5)[:2]
    joint = lib.search(TEXT, modalities=["video", "audio"], k=4)
    assert lib.search(TEXT, modalities=["video", "audio"], k=2, offset=2) == joint[2:4]
    assert lib.search(TEXT, modalities=["audio"], k=5, offset=1000) == []


# ------------------------------------------------------------------------------------------ joint and fusion


def expected_fusion(
    lib: Library, queries: dict[str, np.ndarray], mode: str, weights: dict[str, float], scales: dict[str, float]
) -> dict[int, dict[str, float]]:
    """{item id: {modality: contribution}} from the definitions of the fusion modes, every item a candidate."""
    cosines = {
        m: {item: c for item, (c, _) in best_per_group(stored(lib, m), q, by_item).items()} for m, q in queries.items()
    }
    contributions: dict[int, dict[str, float]] = {}
    for modality, per_item in cosines.items():
        for item, cosine in per_item.items():
            if mode == "rrf":
                rank = 1 + sum(other > cosine for other in per_item.values())
                value = weights[modality] / (60 + rank)
            else:
                value = weights[modality] * scales[modality] * cosine
            contributions.setdefault(item, dict.fromkeys(queries, 0.0))[modality] = value
    return contributions


@pytest.mark.parametrize("mode", ["sum", "temperature", "rrf"])
def test_joint_fusion_modes_follow_their_definitions(lib: Library, encoders: dict, mode: str) -> None:
    weights = {"video": 2.0, "audio": -0.5}
    queries = {m: text_embedding(encoders, m) for m in weights}
    scales = {m: math.exp(encoders[m].logit_scale) if mode == "temperature" else 1.0 for m in weights}
    expected = expected_fusion(lib, queries, mode, weights, scales)

    hits = lib.search(TEXT, modalities=list(weights), fuse=mode, weights=weights, k=100)
    assert {hit.item_id for hit in hits} == set(expected)
    for hit in hits:
        assert hit.parts == pytest.approx(expected[hit.item_id], abs=TOLERANCE)
        assert hit.score == pytest.approx(sum(expected[hit.item_id].values()), abs=TOLERANCE)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    # A clip found through its video carries the exact similarity of its own sound too, never a silent zero.
    both = [hit for hit in hits if set(hit.matches) == {"video", "audio"}]
    assert both and all(hit.parts["audio"] != 0.0 for hit in both)


def test_default_search_covers_every_indexed_modality_per_item(lib: Library, encoders: dict) -> None:
    hits = lib.search(TEXT, k=100)
    queries = {m: text_embedding(encoders, m) for m in CHECKPOINTS}
    expected = expected_fusion(lib, queries, "sum", dict.fromkeys(CHECKPOINTS, 1.0), dict.fromkeys(CHECKPOINTS, 1.0))
    assert {hit.item_id for hit in hits} == set(expected)
    for hit in hits:
        assert hit.score == pytest.approx(sum(expected[hit.item_id].values()), abs=TOLERANCE)
    scenes = [hit for hit in hits if hit.item_key and hit.item_key.startswith("scene:")]
    assert scenes and all(set(hit.matches) == {"image", "depth", "thermal"} for hit in scenes)


# --------------------------------------------------------------------------------------------- calibration


def test_calibrated_score_is_the_z_score_against_the_index(lib: Library, encoders: dict) -> None:
    query = text_embedding(encoders, "audio")
    mean, std = z_scores(lib, "audio", query)
    hits = lib.search(TEXT, modalities=["audio"], group="segment", k=100)
    for hit in hits:
        assert hit.calibrated == pytest.approx((hit.score - mean) / std, abs=1e-4)


def test_joint_calibrated_score_weighs_each_modality_with_its_sign(lib: Library, encoders: dict) -> None:
    weights = {"video": 2.0, "audio": -0.5}
    hits = lib.search(TEXT, modalities=list(weights), weights=weights, k=100)
    stats = {m: z_scores(lib, m, text_embedding(encoders, m)) for m in weights}
    for hit in hits:
        z = {m: (match.cosine - stats[m][0]) / stats[m][1] for m, match in hit.matches.items()}
        expected = sum(weights[m] * value for m, value in z.items()) / sum(abs(w) for w in weights.values())
        assert hit.calibrated == pytest.approx(expected, abs=1e-4)


def test_min_score_cuts_on_the_calibrated_score(lib: Library) -> None:
    everything = lib.search(TEXT, modalities=["audio"], group="segment", k=100)
    threshold = float(np.median([hit.calibrated for hit in everything]))
    kept = lib.search(TEXT, modalities=["audio"], group="segment", k=100, min_score=threshold)
    assert 0 < len(kept) < len(everything)
    expected = [hit.matches["audio"].vector_id for hit in everything if hit.calibrated >= threshold]
    assert [hit.matches["audio"].vector_id for hit in kept] == expected


# ------------------------------------------------------------------------------------------------- filters


# name: (searched modality, filters, which files they keep given their path and facts)
FILTER_CASES: dict[str, tuple[str, Filters, Callable[[str, MediaFacts], bool]]] = {
    "glob": ("audio", Filters(path_glob="*/sounds/*"), lambda path, f: "/sounds/" in path),
    "file modality": ("audio", Filters(file_modalities=("video",)), lambda path, f: f.modality == "video"),
    "min duration": ("audio", Filters(min_duration=10.0), lambda path, f: f.duration >= 10.0),
    "max duration": ("audio", Filters(max_duration=2.6), lambda path, f: f.duration <= 2.6),
    "modified before": ("audio", Filters(modified_before=DATED.replace(year=2005)), lambda path, f: f.dated),
    "modified after": ("audio", Filters(modified_after=DATED.replace(year=2005)), lambda path, f: not f.dated),
    "where": ("video", Filters(where={"has_audio": True}), lambda path, f: f.has_audio),
    "several": (
        "audio",
        Filters(path_glob="*/sounds/*", max_duration=2.6),
        lambda path, f: f.dated and f.duration < 2.6,
    ),
}


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_filters_drop_exactly_the_files_they_exclude(lib: Library, encoders: dict, facts: dict, case: str) -> None:
    modality, filters, keep = FILTER_CASES[case]
    rows = [(info, vector) for info, vector in stored(lib, modality) if keep(info.path, facts[info.path])]
    expected = ranking(best_per_group(rows, text_embedding(encoders, modality), by_file))
    assert 0 < len(expected) < len({info.file_id for info, _ in stored(lib, modality)})
    assert_file_ranking(lib.search(TEXT, modalities=[modality], filters=filters, k=100), expected)


def test_where_compares_any_file_column(lib: Library, facts: dict) -> None:
    hits = lib.search(TEXT, modalities=["video"], filters=Filters(where={"width": 64}), k=100)
    assert [hit.path for hit in hits] == [path for path, f in facts.items() if f.width == 64 and f.modality == "video"]
    with pytest.raises(ConfigError, match="no column 'colour'"):
        lib.search(TEXT, modalities=["video"], filters=Filters(where={"colour": "red"}))


def test_joint_hits_never_show_a_filtered_out_file(lib: Library) -> None:
    """Items join files: the depth frame of a scene must not fill in for a search limited to RGB files."""
    filters = Filters(file_modalities=("image",))
    hits = lib.search(TEXT, modalities=["image", "depth"], filters=filters, k=100)
    assert hits and all(set(hit.matches) == {"image"} and hit.parts["depth"] == 0.0 for hit in hits)
    glob_hits = lib.search(TEXT, modalities=["image", "depth"], filters=Filters(path_glob="*/depth/*"), k=100)
    assert glob_hits and all(set(hit.matches) == {"depth"} for hit in glob_hits)


# ------------------------------------------------------------------------------------------ zero-shot labels


def test_classify_labels_each_file_with_the_official_templates(lib: Library, encoders: dict, facts: dict) -> None:
    classes = ["dog", "rain", "engine"]
    labels = lib.classify(classes, "audio", k=3)
    whole = {info.file_id: vector for info, vector in stored(lib, "audio") if info.start is None}
    assert set(labels) == set(whole)
    text = encoders["audio"]
    classifier = np.stack(
        [
            unit(np.mean([unit(e) for e in text.encode_text(prompts_for(c, templates_for("audio"))).numpy()], 0))
            for c in classes
        ]
    )
    assert templates_for("audio") == ("a sound of {c}.",)
    for file_id_, vector in whole.items():
        logits = 100 * classifier @ vector
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        order = np.argsort(-logits)
        assert [name for name, _ in labels[file_id_]] == [classes[i] for i in order]
        assert [p for _, p in labels[file_id_]] == pytest.approx(probabilities[order].tolist(), abs=1e-4)
    assert lib.classify(classes, "audio", file_ids=[next(iter(whole))]).keys() == {next(iter(whole))}


# --------------------------------------------------------------------------------------------------- X->Y


@pytest.mark.parametrize(
    ("modality", "relative", "as_modality"),
    [
        ("video", "videos/train-000000.mp4", None),
        ("audio", "sounds/train-000001.wav", None),
        ("image", "scenes/rgb/train-000002.png", None),
        ("depth", "scenes/depth/train-000002.png", "depth"),
        ("thermal", "scenes/thermal/train-000003.png", "thermal"),
    ],
)
def test_a_library_file_on_disk_finds_itself_first(
    lib: Library, media_root: Path, modality: str, relative: str, as_modality: str | None
) -> None:
    path = media_root / relative
    hits = lib.search(like=FileQuery(str(path), as_modality=as_modality), modalities=[modality], k=3)
    assert hits[0].path == str(path.resolve())
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording and a thermal frame that are not in the library: a 10.2 s mono WAV (one window and a bit) and a
    3-channel JPEG of another size than the library's frames."""
    folder = tmp_path_factory.mktemp("outside")
    rng = np.random.default_rng(3)
    seconds = np.arange(int(10.2 * SAMPLE_RATE)) / SAMPLE_RATE
    sound = 0.2 * np.sin(2 * np.pi * 440 * seconds) + 0.05 * rng.standard_normal(seconds.size)
    soundfile.write(folder / "recording.wav", sound.astype(np.float32), SAMPLE_RATE)
    heat = np.repeat(rng.integers(0, 256, (60, 80, 1), dtype=np.uint8), 3, axis=2)
    Image.fromarray(heat).save(folder / "thermal.jpg")
    return folder


def test_audio_to_video_ranks_videos_by_the_sound(lib: Library, encoders: dict, outside: Path) -> None:
    sound = outside / "recording.wav"
    hits = lib.search(like=str(sound), modalities=["video"], k=100)
    expected = ranking(best_per_group(stored(lib, "video"), file_embedding(encoders, "audio", sound), by_file))
    assert_file_ranking(hits, expected)


def test_thermal_to_image_embeds_the_query_as_thermal(lib: Library, encoders: dict, outside: Path) -> None:
    frame = outside / "thermal.jpg"
    hits = lib.search(like=FileQuery(str(frame), as_modality="thermal"), modalities=["image"], k=100)
    as_thermal = file_embedding(encoders, "thermal", frame)
    assert_file_ranking(hits, ranking(best_per_group(stored(lib, "image"), as_thermal, by_file)))
    as_photo = lib.search(like=str(frame), modalities=["image"], k=100)  # an image file is a photo by default
    expected_photo = ranking(best_per_group(stored(lib, "image"), file_embedding(encoders, "image", frame), by_file))
    assert_file_ranking(as_photo, expected_photo)
    as_photo_scores = {hit.file_id: hit.score for hit in as_photo}
    assert max(abs(hit.score - as_photo_scores[hit.file_id]) for hit in hits) > 1e-3  # two different embeddings


def test_a_stored_file_by_id_or_path_searches_with_its_stored_vector(lib: Library, media_root: Path) -> None:
    path = media_root / "long.wav"
    by_id = lib.search(like=StoredQuery(file_id(lib, path)), modalities=["audio", "video"], k=100)
    by_path = lib.search(like=StoredQuery(str(path)), modalities=["audio", "video"], k=100)
    from_disk = lib.search(like=str(path), modalities=["audio", "video"], k=100)
    assert by_id == by_path
    assert [hit.item_id for hit in by_id] == [hit.item_id for hit in from_disk]
    assert [hit.score for hit in by_id] == pytest.approx([hit.score for hit in from_disk], abs=1e-4)
    assert by_id[0].path == str(path.resolve()) and by_id[0].matches["audio"].cosine == pytest.approx(1.0, abs=1e-5)


def test_a_time_range_of_a_stored_long_file_is_its_window(lib: Library, media_root: Path) -> None:
    path = media_root / "long.wav"
    start, end = LONG_WINDOW
    stored_hits = lib.search(like=StoredQuery(file_id(lib, path), start, end), modalities=["audio"], group="segment")
    assert (stored_hits[0].path, stored_hits[0].start, stored_hits[0].end) == (str(path.resolve()), start, end)
    assert stored_hits[0].score == pytest.approx(1.0, abs=1e-5)
    # The same range cut from the file at query time embeds like the window cut at indexing time.
    disk_hits = lib.search(like=FileQuery(str(path), start=start, end=end), modalities=["audio"], group="segment")
    assert (disk_hits[0].start, disk_hits[0].end) == (start, end)
    assert disk_hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_a_time_range_of_a_stored_image_is_refused(lib: Library, media_root: Path) -> None:
    image = file_id(lib, scene_file(media_root, "image", 0))
    with pytest.raises(QueryError, match="video and audio only"):
        lib.search(like=StoredQuery(image, 1.0, 2.0), modalities=["image"])
    with pytest.raises(QueryError, match="start < end"):
        lib.search(like=StoredQuery(file_id(lib, media_root / "long.wav"), 20.0, 10.0), modalities=["audio"])


def test_the_sound_of_a_stored_video_searches_as_audio(lib: Library, media_root: Path) -> None:
    video = media_root / "videos" / "train-000001.mp4"
    hits = lib.search(like=StoredQuery(file_id(lib, video), modality="audio"), modalities=["audio"], k=2)
    assert hits[0].path == str(video.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_joint_query_parts_sum_their_weighted_embeddings(lib: Library, encoders: dict, media_root: Path) -> None:
    sound = scene_file(media_root, "audio", 2)
    parts = [(str(sound), 2.0), ("at night", 0.5), ("people", -1.0)]
    hits = lib.search(parts=parts, modalities=["video"], k=100)
    query = unit(
        2.0 * file_embedding(encoders, "audio", sound)
        + 0.5 * text_embedding(encoders, "video", "at night")
        - 1.0 * text_embedding(encoders, "video", "people")
    )
    assert_file_ranking(hits, ranking(best_per_group(stored(lib, "video"), query, by_file)))


def test_text_and_example_combine_with_equal_weight(lib: Library, encoders: dict, media_root: Path) -> None:
    sound = scene_file(media_root, "audio", 0)
    hits = lib.search(TEXT, like=str(sound), modalities=["audio"], k=100)
    query = unit(text_embedding(encoders, "audio") + file_embedding(encoders, "audio", sound))
    assert_file_ranking(hits, ranking(best_per_group(stored(lib, "audio"), query, by_file)))


# --------------------------------------------------------------------------------------------------- errors


def test_unknown_modality(lib: Library) -> None:
    with pytest.raises(ConfigError, match="unknown modality 'smell'"):
        lib.search(TEXT, modalities=["smell"])
    with pytest.raises(ConfigError, match="unknown modality 'smell'"):
        lib.classify(["dog"], "smell")


def test_missing_query_file(lib: Library, tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(MediaError, match="no such file") as error:
        lib.search(like=str(missing), modalities=["audio"])
    assert error.value.path == str(missing)
    # A media file name among the parts is a file, so a typo is reported rather than searched for as words.
    with pytest.raises(MediaError, match="no such file"):
        lib.search(parts=[(str(missing), 1.0), ("rain", 1.0)], modalities=["audio"])
    with pytest.raises(LbsearchError, match="no file with id 99999"):
        lib.search(like=StoredQuery(99999), modalities=["audio"])
    with pytest.raises(QueryError, match="not in this library"):
        lib.search(like=StoredQuery(str(missing)), modalities=["audio"])


@pytest.mark.parametrize(
    ("name", "reason"), [("bad.wav", "cannot decode"), ("bad.mp4", "cannot open"), ("bad.png", "cannot decode")]
)
def test_a_query_file_that_cannot_be_decoded(lib: Library, bad_files: dict, name: str, reason: str) -> None:
    with pytest.raises(MediaError, match=reason) as error:
        lib.search(like=str(bad_files[name]), modalities=["image"])
    assert error.value.path == str(bad_files[name])
    with pytest.raises(MediaError, match="unknown extension"):
        lib.search(like=str(bad_files["notes.txt"]), modalities=["image"])


def test_empty_libraries(checkpoints: dict, tmp_path: Path, media_root: Path) -> None:
    with Library.open(tmp_path / "no-models") as bare, pytest.raises(ConfigError, match="no model set"):
        bare.search(TEXT)
    with Library.open(tmp_path / "empty") as empty:
        empty.use_models(checkpoints)
        with pytest.raises(QueryError, match="is empty"):
            empty.search(TEXT)
        empty.add(media_root / "scenes" / "rgb", options=IngestOptions(workers=0))
        with pytest.raises(QueryError, match="nothing is indexed as audio"):
            empty.search(TEXT, modalities=["audio"])
        with pytest.raises(QueryError, match="nothing is indexed as audio"):
            empty.classify(["dog"], "audio")
        assert empty.search(TEXT, k=1)[0].modality == "image"
        assert empty.verify() == []  # the failed searches left no stray index behind


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [
        (FileQuery("scenes/rgb/train-000000.png", start=1.0, end=2.0), QueryError, "video and audio only"),
        (FileQuery("long.wav", start=5.0, end=3.0), QueryError, "start < end"),
        (FileQuery("long.wav", start=50.0, end=60.0), MediaError, "outside the media"),
        (FileQuery("long.wav", as_modality="thermal"), QueryError, "as_modality says what an image is"),
        (FileQuery("scenes/rgb/train-000000.png", as_modality="video"), QueryError, "as_modality"),
    ],
)
def test_bad_query_files_and_ranges(
    lib: Library, media_root: Path, query: FileQuery, error: type, message: str
) -> None:
    placed = FileQuery(str(media_root / query.path), query.as_modality, query.start, query.end)
    with pytest.raises(error, match=message):
        lib.search(like=placed, modalities=["audio"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "empty query"),
        ({"text": "   "}, "text query part is empty"),
        ({"parts": [("rain", 1.0), ("rain", -1.0)]}, "cancel out"),
        ({"parts": [("rain", math.nan)]}, "must be a finite number"),
        ({"text": TEXT, "fuse": "max"}, "unknown fusion mode"),
        ({"text": TEXT, "group": "day"}, "unknown grouping"),
        ({"text": TEXT, "k": 0}, "k must be >= 1"),
        ({"text": TEXT, "offset": -1}, "offset >= 0"),
        ({"text": TEXT, "modalities": ["video"], "weights": {"audio": 1.0}}, "not searched"),
    ],
)
def test_bad_queries_raise_query_errors(lib: Library, options: dict, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        lib.search(**options)
