"""The Streamlit UI, page by page and widget by widget, through Streamlit's AppTest against a small library.

The library holds two files of each modality of the sample media (tests/sample_media.py, renamed so every name is
unique) and one broken video, indexed with the tiny random-weight checkpoints (tests/tiny_checkpoints.py). Random
weights make text rankings arbitrary but deterministic, so every expected ranking is computed here through the
Python API; a file searched like itself must come first (cosine 1).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from streamlit.testing.v1 import AppTest

from lbsearch.app import previews, state, uploads, views
from lbsearch.app.state import index_location
from lbsearch.app.views import moment
from lbsearch.errors import ConfigError, MediaError
from lbsearch.ingest.pipeline import IngestOptions
from lbsearch.library import Library
from lbsearch.search.request import FileQuery, Filters, StoredQuery

APP = REPO / "app" / "streamlit_app.py"
CHECKPOINTS = {
    "video": "video_ft",
    "audio": "audio_ft",
    "image": "image",
    "depth": "depth_lora",
    "thermal": "thermal_lora",
}
MEDIA_FILES = {
    "video": ["0.mp4", "1.mp4"],
    "audio": ["0.wav", "1.wav"],
    "image": ["0.jpg", "1.jpg"],
    "depth": ["0.png", "1.png"],
    "thermal": ["0.jpg", "1.jpg"],
}
TIMEOUT = 120
K = 12
TITLE = re.compile(r"^\*\*(\d+)\. (.+)\*\*$")
SECTION = re.compile(r"^(.+) \((\d+)\)$")


def model_set(tiny_checkpoints: Path) -> dict[str, str]:
    return {modality: str(tiny_checkpoints / name) for modality, name in CHECKPOINTS.items()}


def copy_media(samples: Path, target: Path) -> Path:
    """Two files per modality, each in a folder named after its modality, as "<modality>_<name>"."""
    for modality, names in MEDIA_FILES.items():
        (target / modality).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(samples / modality / name, target / modality / f"{modality}_{name}")
    return target


def build_library(tiny_checkpoints: Path, sample_media: Path, root: Path) -> tuple[Path, Path]:
    """An indexed library under ``root``: (index folder, media folder)."""
    folder = copy_media(sample_media, root / "media")
    (folder / "video" / "broken.mp4").write_bytes(b"this is not a video")
    index = root / "index"
    with Library.open(index) as lib:
        lib.use_models(model_set(tiny_checkpoints))
        lib.add(folder, options=IngestOptions(workers=0))
    return index, folder


@pytest.fixture(scope="module")
def indexed(tiny_checkpoints: Path, sample_media: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_library(tiny_checkpoints, sample_media, tmp_path_factory.mktemp("library"))


@pytest.fixture(scope="module")
def lib(indexed: tuple[Path, Path]) -> Iterator[Library]:
    with Library.open(indexed[0]) as library:
        yield library


def app_on(index: Path, monkeypatch: pytest.MonkeyPatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("LBSEARCH_INDEX", str(index))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sections(at: AppTest) -> dict[str, list[str]]:
    """Result sections in page order: their title (without the count) -> the hit file names, by rank."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for node in at.main:  # depth first, in page order
        if node.type == "subheader" and (title := SECTION.match(node.value)):
            current = found.setdefault(title.group(1), [])
        elif node.type == "markdown" and current is not None and (card := TITLE.match(node.value)):
            assert int(card.group(1)) == len(current) + 1
            current.append(card.group(2))
    return found


def names(hits) -> list[str]:
    return [Path(hit.path).name for hit in hits]


# ------------------------------------------------------------------------------------------------ search page


def test_text_search_in_one_modality_shows_the_api_ranking(indexed, lib, monkeypatch):
    at = app_on(indexed[0], monkeypatch)
    assert at.text_input(key="search-text").label == "What are you looking for?"
    at.pills(key="search-modalities").set_value(["video"])
    at.text_input(key="search-text").input("a dog running on a beach").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    expected = lib.search("a dog running on a beach", modalities=["video"], k=K, filters=Filters())
    assert sections(at) == {"video": names(expected)}
    # Each card: a playing video, its score and one contribution bar per fused modality.
    assert len(at.get("video")) == len(expected)
    assert re.match(r"video: [+-]\d", next(p.proto.text for p in at.get("progress")))
    assert any(f"score {expected[0].score:.3f}" in c.value for c in at.caption)


def test_large_videos_show_the_matched_frame_until_played(indexed, lib, monkeypatch):
    monkeypatch.setattr(views, "INLINE_VIDEO_BYTES", 0)
    at = app_on(indexed[0], monkeypatch)
    at.pills(key="search-modalities").set_value(["video"])
    at.text_input(key="search-text").input("fireworks").run()
    shown = sections(at)["video"]
    assert len(at.image) == len(shown) and not at.get("video")
    at.toggle(key="search-video-1-play").set_value(True).run()
    assert len(at.get("video")) == 1 and len(at.image) == len(shown) - 1


def test_every_modality_gets_its_own_section_unless_joint(indexed, lib, monkeypatch):
    at = app_on(indexed[0], monkeypatch)
    at.text_input(key="search-text").input("rain at night").run()
    found = sections(at)
    assert list(found) == ["video", "audio", "depth", "thermal", "image"]
    for modality, shown in found.items():
        assert shown == names(lib.search("rain at night", modalities=[modality], k=K))
    # Audio hits show a waveform picture and a player; stills show an image.
    assert len(at.get("audio")) == len(found["audio"])
    assert len(at.image) >= len(found["audio"]) + len(found["depth"]) + len(found["image"])


@pytest.mark.parametrize("fuse", ["sum", "temperature", "rrf"])
def test_joint_search_fuses_with_the_chosen_mode_and_weights(indexed, lib, monkeypatch, fuse):
    at = app_on(indexed[0], monkeypatch)
    at.pills(key="search-modalities").set_value(["video", "audio"])
    at.text_input(key="search-text").input("a street band").run()
    at.toggle(key="search-joint").set_value(True).run()
    at.segmented_control(key="search-fuse").set_value(fuse).run()
    at.slider(key="search-weight-audio").set_value(2.0).run()
    assert not at.exception and not at.error
    expected = lib.search(
        "a street band", modalities=["video", "audio"], k=K, fuse=fuse, weights={"video": 1.0, "audio": 2.0}
    )
    assert sections(at) == {"video + audio": names(expected)}
    bars = [p.proto.text for p in at.get("progress")]
    assert sum(text.startswith(("video:", "audio:")) for text in bars) == 2 * len(expected)


def test_joint_needs_two_modalities(indexed, monkeypatch):
    at = app_on(indexed[0], monkeypatch)
    at.pills(key="search-modalities").set_value(["image"]).run()
    assert at.toggle(key="search-joint").disabled
    at.pills(key="search-modalities").set_value([]).run()
    assert any("at least one modality" in i.value for i in at.info)


def test_filters_reach_the_search(indexed, lib, monkeypatch):
    at = app_on(indexed[0], monkeypatch)
    at.text_input(key="search-text").input("a quiet room").run()
    at.text_input(key="search-glob").input("*/audio/*").run()
    found = sections(at)
    assert found["audio"] and found["video"] == [] and found["image"] == []
    assert found["audio"] == names(lib.search("a quiet room", modalities=["audio"], k=K))

    at.text_input(key="search-glob").input("").run()
    at.number_input(key="search-min-duration").set_value(10.0).run()
    found = sections(at)
    long_enough = lib.search("a quiet room", modalities=["audio"], k=K, filters=Filters(min_duration=10.0))
    assert found["audio"] == names(long_enough) and found["video"] == []

    at.number_input(key="search-min-duration").set_value(None).run()
    at.date_input(key="search-before").set_value(np.datetime64("2000-01-01").item()).run()
    assert all(shown == [] for shown in sections(at).values())
    assert any("No hits" in i.value for i in at.info)

    at.date_input(key="search-before").set_value(None).run()
    at.number_input(key="search-min-score").set_value(1000.0).run()
    assert all(shown == [] for shown in sections(at).values())
    at.number_input(key="search-min-score").set_value(-1000.0).run()
    assert sections(at)["video"] == names(lib.search("a quiet room", modalities=["video"], k=K, min_score=-1000.0))


def test_k_limits_the_hits(indexed, monkeypatch):
    at = app_on(indexed[0], monkeypatch)
    at.pills(key="search-modalities").set_value(["audio"])
    at.number_input(key="search-k").set_value(1)
    at.text_input(key="search-text").input("birds").run()
    assert len(sections(at)["audio"]) == 1


def test_more_like_this_opens_the_example_page_on_that_moment(indexed, lib, monkeypatch):
    at = app_on(indexed[0], monkeypatch)
    at.pills(key="search-modalities").set_value(["audio"])
    at.text_input(key="search-text").input("thunder").run()
    first = lib.search("thunder", modalities=["audio"], k=K)[0]
    at.button(key="search-audio-1-more").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Query by example"
    assert at.radio(key="example-source").value == "An item in the library"
    assert at.selectbox(key="example-file").value == first.file_id
    assert at.pills(key="example-modalities").value == ["audio"]
    like = StoredQuery(first.file_id, first.start, first.end, modality="audio")
    expected = lib.search(like=like, modalities=["audio"], k=K)
    shown = sections(at)["audio"]
    assert shown == names(expected) and shown[0] == Path(first.path).name


# ---------------------------------------------------------------------------------------- query by example page


def upload(at: AppTest, path: Path, name: str | None = None) -> AppTest:
    at.file_uploader(key="example-upload").upload(name or path.name, path.read_bytes()).run()
    return at


def test_upload_audio_searches_video_and_finds_itself_in_audio(indexed, lib, sample_media, monkeypatch):
    at = app_on(indexed[0], monkeypatch, state.EXAMPLE_PAGE)
    at.pills(key="example-modalities").set_value(["audio", "video"])
    upload(at, sample_media / "audio" / "1.wav")
    assert not at.exception and not at.error, [e.value for e in at.error]
    found = sections(at)
    assert found["audio"][0] == "audio_1.wav"
    saved = next(uploads_folder().glob("*-1.wav"))
    assert found["video"] == names(lib.search(like=FileQuery(str(saved)), modalities=["video"], k=K))
    # A moment of the upload.
    at.slider(key="example-upload-range").set_value((2.0, 5.0)).run()
    expected = lib.search(like=FileQuery(str(saved), start=2.0, end=5.0), modalities=["video"], k=K)
    assert sections(at)["video"] == names(expected)


def uploads_folder() -> Path:
    return state.current().uploads.path


def test_uploaded_image_can_be_a_depth_map(indexed, lib, sample_media, monkeypatch):
    at = app_on(indexed[0], monkeypatch, state.EXAMPLE_PAGE)
    at.pills(key="example-modalities").set_value(["depth", "image"])
    upload(at, sample_media / "depth" / "0.png", "scene.png")
    assert at.radio(key="example-upload-kind").value == "image"
    at.radio(key="example-upload-kind").set_value("depth").run()
    found = sections(at)
    assert found["depth"][0] == "depth_0.png"
    saved = next(uploads_folder().glob("*-scene.png"))
    assert found["image"] == names(lib.search(like=FileQuery(str(saved), as_modality="depth"), modalities=["image"]))


def test_bad_uploads_show_a_message(indexed, sample_media, monkeypatch):
    at = app_on(indexed[0], monkeypatch, state.EXAMPLE_PAGE)
    at.file_uploader(key="example-upload").upload("notes.wav", b"not a sound at all").run()
    assert any(e.value.startswith("Reading notes.wav failed: notes.wav: not a readable media file") for e in at.error)
    at.file_uploader(key="example-upload").clear().upload("notes.txt", b"text").run()
    assert any("not a media file" in e.value for e in at.error)
    monkeypatch.setenv(uploads.UPLOAD_LIMIT_ENV, "1")
    at.run()  # the uploader takes the new limit (and is a new widget)
    big = sample_media / "audio" / "long_stereo_44k_25s.wav"
    at.file_uploader(key="example-upload").clear().upload("big.wav", big.read_bytes()).run()
    assert any("too large" in e.value and "limit is 1 MB" in e.value for e in at.error)
    assert not at.exception


def test_crafted_upload_names_stay_in_the_upload_folder(indexed, sample_media, monkeypatch):
    at = app_on(indexed[0], monkeypatch, state.EXAMPLE_PAGE)
    folder = uploads_folder()
    sound = (sample_media / "audio" / "0.wav").read_bytes()
    for crafted in ("../../escape.wav", "/etc/passwd.wav", "..\\..\\win.wav"):
        at.file_uploader(key="example-upload").clear().upload(crafted, sound).run()
        assert not at.error and not at.exception
    assert not (folder.parent.parent / "escape.wav").exists() and not Path("/etc/passwd.wav").exists()
    assert all(p.parent == folder for p in folder.iterdir())
    assert not any(p.name.startswith("lbsearch-uploads") for p in indexed[0].rglob("*"))


def test_library_item_with_a_moment_and_its_track(indexed, lib, monkeypatch):
    at = app_on(indexed[0], monkeypatch, state.EXAMPLE_PAGE)
    at.radio(key="example-source").set_value("An item in the library").run()
    at.pills(key="example-modalities").set_value(["video", "image"]).run()
    at.text_input(key="example-name-filter").input("video_1").run()
    record = lib.db.file_by_path(str((indexed[1] / "video" / "video_1.mp4").resolve()))
    assert at.selectbox(key="example-file").options == [f"video · {record.path}"]
    found = sections(at)
    assert found["video"][0] == "video_1.mp4"
    assert found["image"] == names(lib.search(like=StoredQuery(record.id, modality="video"), modalities=["image"]))
    top = at.slider(key="example-range").max
    at.slider(key="example-range").set_value((0.0, 0.5)).run()
    expected = lib.search(like=StoredQuery(record.id, 0.0, 0.5, modality="video"), modalities=["image"], k=K)
    assert sections(at)["image"] == names(expected) and top > 0.5
    at.text_input(key="example-name-filter").input("no such name").run()
    assert any("No indexed file" in i.value for i in at.info)


# ---------------------------------------------------------------------------------------------- library page


def test_library_page_counts_failures_and_index_health(indexed, lib, monkeypatch):
    at = app_on(indexed[0], monkeypatch, state.LIBRARY_PAGE)
    status = lib.status()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Files"] == str(sum(sum(per.values()) for per in status["files"].values()))
    assert metrics["Segments"] == str(status["segments"])
    frames = [d.value for d in at.dataframe]
    failed = next(f for f in frames if "error" in f.columns and "path" in f.columns)
    assert list(failed["path"]) == [str((indexed[1] / "video" / "broken.mp4").resolve())]
    assert failed["error"][0]
    health = next(f for f in frames if "recall@10" in f.columns)
    assert sorted(health["modality"]) == sorted(i["modality"] for i in status["indexes"])
    assert list(health["vectors"]) == [i["ntotal"] for i in status["indexes"]]
    at.button(key="verify").click().run()
    assert any("agrees" in s.value for s in at.success)
    at.button(key="repair").click().run()
    assert any("Nothing needed repair" in s.value for s in at.success)


def test_add_a_folder_with_live_progress_then_search_it(tiny_checkpoints, sample_media, tmp_path, monkeypatch):
    index = tmp_path / "index"
    with Library.open(index) as fresh:
        fresh.use_models({m: model_set(tiny_checkpoints)[m] for m in ("audio", "image")})
    at = app_on(index, monkeypatch, state.LIBRARY_PAGE)
    assert any("Nothing is indexed yet: add a folder above" in i.value for i in at.info)
    at.text_input(key="add-folder").input(str(tmp_path / "missing"))
    at.button(key="FormSubmitter:add-form-Add to library").click().run()
    assert any("is not a folder" in e.value for e in at.error)

    folder = tmp_path / "photos" / "shots"
    folder.mkdir(parents=True)
    shutil.copy(sample_media / "thermal" / "0.jpg", folder / "night.jpg")
    shutil.copy(sample_media / "audio" / "0.wav", folder / "hum.wav")
    at.text_input(key="add-folder").input(str(folder))
    at.selectbox(key="add-kind").set_value("thermal")
    at.number_input(key="add-workers").set_value(0)
    at.button(key="FormSubmitter:add-form-Add to library").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("2 files embedded" in s.value for s in at.success)
    # The progress bar ended full, and its text says what was done.
    assert any(p.proto.value == 100 and "2 of 2 files" in p.proto.text for p in at.get("progress"))
    # No thermal model is set: the thermal frame is stored but has no vector; the sound is searchable.
    at.switch_page(state.SEARCH_PAGE).run()
    at.text_input(key="search-text").input("a hum").run()
    assert sections(at) == {"audio": ["hum.wav"]}
    (folder / "hum.wav").unlink()
    at.run()
    assert any("hum.wav is no longer there" in w.value for w in at.warning)


def test_choosing_models_from_the_library_page(tiny_checkpoints, tmp_path, monkeypatch):
    index = tmp_path / "index"
    at = app_on(index, monkeypatch)
    assert any("no model set" in w.value for w in at.warning)
    assert any("lbsearch index --models demo" in i.value for i in at.info)
    at.switch_page(state.LIBRARY_PAGE).run()
    at.button(key="FormSubmitter:models-form-Use these models").click().run()
    assert any("Pick a named set" in w.value for w in at.warning)
    at.text_area(key="models-custom").input("sound=/nowhere")
    at.button(key="FormSubmitter:models-form-Use these models").click().run()
    assert any("Choosing models failed" in e.value and "sound=/nowhere" in e.value for e in at.error)
    at.text_area(key="models-custom").input(f"video={tiny_checkpoints / 'video_ft'}")
    at.button(key="FormSubmitter:models-form-Use these models").click().run()
    assert any("Model set saved" in s.value for s in at.success)
    with Library.open(index) as lib:
        assert lib.models == {"video": str(tiny_checkpoints / "video_ft")}
    at.switch_page(state.SEARCH_PAGE).run()
    assert any("Nothing is indexed yet" in i.value for i in at.info)


def test_a_missing_checkpoint_is_a_message_with_how_to_get_one(sample_media, tmp_path, monkeypatch):
    index = tmp_path / "index"
    with Library.open(index) as fresh:
        fresh.use_models({"audio": str(tmp_path / "no-such-checkpoint")})
    folder = copy_media(sample_media, tmp_path / "media") / "audio"
    at = app_on(index, monkeypatch, state.LIBRARY_PAGE)
    at.text_input(key="add-folder").input(str(folder))
    at.number_input(key="add-workers").set_value(0)
    at.button(key="FormSubmitter:add-form-Add to library").click().run()
    assert not at.exception
    assert any("failed" in e.value and "no-such-checkpoint" in e.value for e in at.error), [e.value for e in at.error]
    assert any("lbsearch models download" in i.value for i in at.info)


# ------------------------------------------------------------------------------- helpers (no Streamlit)


def test_index_location_comes_from_the_command_line_then_the_environment(monkeypatch):
    monkeypatch.setenv("LBSEARCH_INDEX", "/from/env")
    assert index_location(["--index", "/from/args"]) == "/from/args"
    assert index_location(["--other"]) == "/from/env"


@pytest.mark.parametrize(
    ("name", "saved"),
    [
        ("../../x.wav", "x.wav"),
        ("/etc/passwd.mp4", "passwd.mp4"),
        ("..\\..\\evil.JPG", "evil.jpg"),
        ("..wav.mp3", "wav.mp3"),
        ("my holiday (1).mov", "my_holiday_1_.mov"),
    ],
)
def test_safe_name_keeps_only_the_last_component(name, saved):
    assert uploads.safe_name(name) == saved


@pytest.mark.parametrize("name", ["/etc/passwd", "../..", ".wav", "notes.txt", ""])
def test_safe_name_refuses_what_is_not_a_media_name(name):
    with pytest.raises(MediaError, match="not a media file"):
        uploads.safe_name(name)


def test_upload_folder_is_private_and_refuses_the_library(sample_media, tmp_path, monkeypatch):
    folder = uploads.UploadFolder()
    try:
        assert folder.path.stat().st_mode & 0o077 == 0
        data = (sample_media / "image" / "0.jpg").read_bytes()
        first = folder.save("../../../photo.jpg", data, limit_mb=1)
        assert first.parent == folder.path and first.read_bytes() == data
        assert folder.save("photo.jpg", data, limit_mb=1) == first  # the same upload is written once
        with pytest.raises(MediaError, match="too large"):
            folder.save("photo.jpg", data, limit_mb=len(data) // (1 << 20) or 0)
        with pytest.raises(MediaError, match="empty"):
            folder.save("photo.jpg", b"", limit_mb=1)
    finally:
        folder.cleanup()
    assert not folder.path.exists()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with pytest.raises(ConfigError, match="inside the library folder"):
        uploads.UploadFolder(avoid=[tmp_path])
    assert list(tmp_path.iterdir()) == []


def test_upload_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv(uploads.UPLOAD_LIMIT_ENV, "5")
    assert uploads.upload_limit_mb() == 5
    monkeypatch.setenv(uploads.UPLOAD_LIMIT_ENV, "lots")
    with pytest.raises(ConfigError, match="LBSEARCH_UPLOAD_MB"):
        uploads.upload_limit_mb()


def test_depth_colour_map_runs_near_to_far_and_leaves_holes_black():
    depth = np.tile(np.linspace(500, 5000, 100), (10, 1)).astype(np.uint16)
    depth[:, :5] = 0
    rgb = np.asarray(previews.colourise_depth(depth))
    assert (rgb[:, :5] == 0).all()
    assert (rgb[0, 6] == previews.DEPTH_LUT[0]).all() and (rgb[0, -1] == previews.DEPTH_LUT[255]).all()
    assert rgb[0, 6, 0] > rgb[0, 6, 2] and rgb[0, -1, 2] > rgb[0, -1, 1]  # near is warm, far is cool


def test_thermal_palette_runs_from_dark_to_white_hot():
    grey = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    from PIL import Image

    rgb = np.asarray(previews.colourise_thermal(Image.fromarray(grey).convert("RGB")))
    assert (rgb[0, 0] == previews.IRONBOW_LUT[0]).all() and rgb[0, -1].min() > 200
    brightness = rgb[0].astype(int).sum(axis=1)
    assert brightness[-1] > brightness[128] > brightness[0]


def test_waveform_shades_the_matched_moment(sample_media):
    sound = sample_media / "audio" / "0.wav"
    assert (np.asarray(previews.audio_waveform(sound)) != previews.MATCH_SHADE).any(axis=2).all()
    picture = previews.audio_waveform(sound, 2.0, 4.0)
    pixels = np.asarray(picture)
    width = picture.width
    seconds = 10.24  # the sample's length (tests/sample_media.py: 10.242 s)
    inside = round(width * 3.0 / seconds)
    outside = round(width * 8.0 / seconds)
    assert tuple(pixels[1, inside]) == previews.MATCH_SHADE
    assert tuple(pixels[1, outside]) == previews.BACKGROUND
    assert (pixels[:, :, 2] > pixels[:, :, 0]).any()  # the blue envelope is drawn


def test_moment_labels():
    assert moment(None, None) == "whole file"
    assert moment(63.0, 65.5) == "1:03.0–1:05.5"
