"""The synthetic world: seeded scenes, what each attribute looks/sounds like, splits, and the files written."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from lbsearch.errors import ConfigError, LbsearchError, MediaError
from lbsearch.modalities import MODALITIES
from lbsearch.toyworld import (
    LIBRARY_PATHS,
    MANIFEST,
    SHAPES,
    SOUNDS,
    VISIBLE_ATTRIBUTES,
    LibraryLayout,
    RenderConfig,
    World,
    WorldSpec,
    read_manifest,
    render_modality,
    write_library,
    write_scene,
)

CONFIG = RenderConfig()
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _changed_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels that differ clearly from the background (estimated from the frame's border)."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(float)
    return np.abs(image.astype(float) - np.median(border, axis=0)).max(axis=-1) > 30


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _band_profile(wave: np.ndarray, rate: int) -> np.ndarray:
    """Normalised log energy in 24 log-spaced bands from 50 Hz to the Nyquist frequency: the timbre."""
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    frequencies = np.fft.rfftfreq(len(wave), 1 / rate)
    edges = np.geomspace(50, rate / 2, 25)
    bands = np.array([spectrum[(frequencies >= lo) & (frequencies < hi)].sum() for lo, hi in itertools.pairwise(edges)])
    profile = np.log(bands + 1e-9)
    return (profile - profile.mean()) / profile.std()


# ---------------------------------------------------------------------------------------------- the world


def test_same_seed_gives_the_same_scenes_and_prefixes_are_stable():
    first, again = World(7).scenes("train", 30), World(7).scenes("train", 60)
    assert first == again[:30] == list(itertools.islice(World(7).iter_scenes("train"), 30))
    assert World(7).scene("test", 12) == World(7).scenes("test", 20)[12]
    other = World(8).scenes("train", 30)
    assert [s.nuisance for s in other] != [s.nuisance for s in first]
    assert len({s.id for s in again}) == 60


def test_combination_counts_and_heldout_split_never_meets_training():
    spec = WorldSpec()
    assert len(spec.combinations()) == 4 * 4 * 4 * 2 * 2
    seen, heldout = set(spec.seen_combinations()), set(spec.heldout_combinations())
    assert not seen & heldout and len(heldout) >= 16 and len(seen) >= 128
    world = World(3)
    train = world.scenes("train", 600)
    assert {s.combination for s in train} == seen  # rounds over the combinations cover all of them
    assert not {s.combination for s in world.scenes("heldout", 100)} & {s.combination for s in train}
    tests = world.scenes("test", len(seen))
    assert {s.combination for s in tests} == seen  # the first round of a split: every combination once
    # Composition is possible: every pair of attribute values, and each held-out combination with any one
    # attribute changed, does occur in training.
    for a, b in itertools.combinations(range(len(VISIBLE_ATTRIBUTES)), 2):
        pairs = {(c[a], c[b]) for c in seen}
        assert len(pairs) == len(list(spec.values.values())[a]) * len(list(spec.values.values())[b])
    for combination in heldout:
        for position, values in enumerate(spec.values.values()):
            neighbours = [(*combination[:position], v, *combination[position + 1 :]) for v in values]
            assert any(n in seen for n in neighbours)


def test_captions_name_every_attribute():
    for scene in World(1).scenes("train", 40) + World(1).scenes("heldout", 10):
        assert len(set(scene.captions)) == len(scene.captions) >= 2
        for caption in scene.captions:
            words = caption.replace(",", " ").split()
            for name in VISIBLE_ATTRIBUTES:
                assert scene.attributes[name] in words, (caption, name)
            assert SOUNDS[scene.attributes["shape"]] in caption
        assert f"moving {scene.attributes['direction']}" in scene.caption


def test_bad_settings_raise_typed_errors(tmp_path):
    with pytest.raises(ConfigError, match="colours"):
        WorldSpec(colours=("red", "mauve"))
    with pytest.raises(ConfigError, match="split"):
        World(0).scene("validation", 0)
    with pytest.raises(ConfigError, match="even"):
        RenderConfig(size=55)
    with pytest.raises(ConfigError, match="modality"):
        render_modality(World(0).scene("train", 0), "smell")
    with pytest.raises(LbsearchError, match="manifest"):
        read_manifest(tmp_path)
    (tmp_path / "taken").write_text("a file where the library's folders should go")
    with pytest.raises(MediaError, match="cannot write"):
        write_scene(World(0).scene("train", 0), tmp_path / "taken")
    (tmp_path / MANIFEST).write_text('{"id": "x"}\n')
    with pytest.raises(LbsearchError, match=rf"{MANIFEST}:1"):
        read_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------- what shows


def test_motion_shows_as_a_trail_behind_the_still_and_as_movement_in_the_video():
    size = CONFIG.size
    odd = RenderConfig(num_frames=9)  # its middle frame is the still's moment, without the trail
    for scene in World(2).scenes("train", 48):
        step = np.array(STEP[scene.attributes["direction"]])
        centre = np.array([scene.nuisance.x, scene.nuisance.y]) * size
        still, middle = render_modality(scene, "image"), render_modality(scene, "video", odd)[4]
        ys, xs = np.nonzero(np.abs(still.astype(float) - middle).max(axis=-1) > 10)
        along = (np.stack([xs + 0.5, ys + 0.5], axis=1) - centre) @ step
        # The trail lies behind (a few ghost pixels may fill a star's notches ahead of its centre).
        assert len(along) >= 10 and (along < 0).mean() > 0.9, scene.caption
        assert along.mean() < -0.4 * scene.nuisance.trail * size, scene.caption
        frames = render_modality(scene, "video")
        assert frames.shape == (CONFIG.num_frames, size, size, 3)
        path = _centroid(_changed_pixels(frames[-1])) - _centroid(_changed_pixels(frames[0]))
        assert path @ step > 0.8 * scene.nuisance.travel * size and abs(path @ step[::-1]) < 2.0, (scene.caption, path)


def test_temperature_shows_in_thermal_and_rgb():
    scenes = World(4).scenes("train", 64)
    for scene in scenes:
        thermal = render_modality(scene, "thermal")
        x, y = int(scene.nuisance.x * CONFIG.size), int(scene.nuisance.y * CONFIG.size)
        room = np.median(np.concatenate([thermal[0], thermal[-1]]))
        if scene.attributes["temperature"] == "hot":
            assert thermal[y, x] > room + 80
        else:
            assert thermal[y, x] < room - 30
    # In RGB a hot shape is surrounded by a glow, so it changes more pixels for its size than a cold one;
    # a cold shape is frosted: its pixels (where the depth map has it) are paler than any pure colour.
    spread, paleness = {"hot": [], "cold": []}, {"hot": [], "cold": []}
    for scene in scenes:
        temperature = scene.attributes["temperature"]
        changed = _changed_pixels(render_modality(scene, "video")[0])
        spread[temperature].append(changed.sum() / (scene.nuisance.radius * CONFIG.size) ** 2)
        on_shape = render_modality(scene, "depth") < 4500
        paleness[temperature].append(render_modality(scene, "image")[on_shape].min(axis=-1).mean())
    assert min(spread["hot"]) > max(spread["cold"])
    assert min(paleness["cold"]) > max(paleness["hot"]) + 20


def test_near_shapes_are_closer_and_larger():
    areas = {("near", s): [] for s in SHAPES[:4]} | {("far", s): [] for s in SHAPES[:4]}
    for scene in World(5).scenes("train", 96):
        depth = render_modality(scene, "depth")
        assert depth.dtype == np.uint16
        surface = depth < 4500
        measured = np.median(depth[surface])
        assert (measured < 1600) == (scene.attributes["distance"] == "near")
        assert 5000 < np.median(depth[~surface]) < 9100
        areas[(scene.attributes["distance"], scene.attributes["shape"])].append(surface.sum())
    for shape in SHAPES[:4]:
        assert min(areas[("near", shape)]) > 1.5 * max(areas[("far", shape)]), shape


def test_each_shape_sounds_different():
    world = World(6, WorldSpec(shapes=SHAPES))
    profiles, labels, peaks = [], [], {}
    for scene in world.scenes("train", 120):
        wave = render_modality(scene, "audio")
        assert wave.dtype == np.float32 and len(wave) == round(scene.nuisance.seconds * CONFIG.sample_rate)
        wave = wave[: CONFIG.sample_rate]  # one second tells the sound
        profiles.append(_band_profile(wave, CONFIG.sample_rate))
        labels.append(scene.attributes["shape"])
        spectrum = np.abs(np.fft.rfft(wave))
        peaks.setdefault(labels[-1], []).append(np.argmax(spectrum) * CONFIG.sample_rate / len(wave))
    # Tonal sounds: the loudest frequency orders the shapes (hum < buzz < chime < beep < whistle).
    order = ["circle", "square", "triangle", "diamond", "star"]
    for low, high in itertools.pairwise(order):
        assert max(peaks[low]) < min(peaks[high]), (low, high)
    # Timbre: every clip's nearest other clip (by band energies) has the same shape.
    profiles = np.stack(profiles)
    distances = ((profiles[:, None] - profiles[None]) ** 2).sum(-1) + np.eye(len(profiles)) * 1e9
    assert all(labels[i] == labels[j] for i, j in enumerate(distances.argmin(1)))


def test_audio_lengths_straddle_the_ten_second_window():
    seconds = [s.nuisance.seconds for s in World(0).scenes("train", 300)]
    long = sum(s > 10.375 for s in seconds)
    assert 10 <= long <= 60 and min(seconds) >= 1.0


# ---------------------------------------------------------------------------------------------- files


def test_files_decode_to_the_rendered_arrays(tmp_path):
    scene = next(s for s in World(9).scenes("train", 40) if s.nuisance.seconds > 10.375)
    paths = write_scene(scene, tmp_path)
    assert set(paths) == set(MODALITIES)
    for modality in ("image", "thermal", "depth"):
        decoded = np.asarray(Image.open(paths[modality]))
        assert np.array_equal(decoded, render_modality(scene, modality)), modality
    assert Image.open(paths["depth"]).mode.startswith("I;16")
    wave, rate = soundfile.read(paths["audio"], dtype="float32")
    assert rate == CONFIG.sample_rate and np.array_equal(wave, render_modality(scene, "audio"))
    with av.open(str(paths["video"])) as container:
        assert container.streams.video[0].codec_context.name in ("h264", "mpeg4")
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert abs(container.duration / 1e6 - scene.nuisance.seconds) < 0.2
    expected = render_modality(scene, "video")
    assert frames.shape == expected.shape
    assert np.abs(frames.astype(float) - expected).mean() < 4.0
    with av.open(str(paths["video"])) as container:
        track = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(track) >= len(wave) and np.corrcoef(track[: len(wave)], wave)[0, 1] > 0.99


def test_same_seed_writes_identical_bytes(tmp_path):
    scene = World(11).scene("test", 5)
    first, second = write_scene(scene, tmp_path / "a"), write_scene(World(11).scene("test", 5), tmp_path / "b")
    for modality in MODALITIES:
        assert first[modality].read_bytes() == second[modality].read_bytes(), modality


def test_write_library_layout_and_manifest(tmp_path):
    world = World(12)
    scenes = world.scenes("train", 6) + world.scenes("test", 3) + world.scenes("heldout", 3)
    progress = []
    manifest = write_library(tmp_path, scenes, workers=2, on_progress=lambda done, total: progress.append(done))
    assert manifest == tmp_path / MANIFEST and progress[-1] == len(scenes)
    entries = read_manifest(tmp_path)
    assert [e.scene for e in entries] == scenes
    for entry in entries:
        assert entry.video_has_audio
        for modality, template in LIBRARY_PATHS.items():
            assert entry.files[modality] == tmp_path / template.format(id=entry.scene.id)
            assert entry.files[modality].is_file()
        stills = [entry.files[m] for m in ("image", "depth", "thermal")]
        assert len({p.name for p in stills}) == 1 and len({p.parent.parent for p in stills}) == 1
    record = json.loads(manifest.read_text().splitlines()[0])
    assert record["captions"][0] == scenes[0].caption and record["attributes"] == scenes[0].attributes
    assert record["files"]["depth"] == LIBRARY_PATHS["depth"].format(id=scenes[0].id)  # relative to the root
    # A layout without standalone sounds and without muxed audio: silent videos and stills only.
    layout = LibraryLayout(modalities=("video", "image"), mux_audio=False)
    write_library(tmp_path / "silent", scenes[:2], layout=layout, workers=1)
    entry = read_manifest(tmp_path / "silent")[0]
    assert set(entry.files) == {"video", "image"} and not entry.video_has_audio
    with av.open(str(entry.files["video"])) as container:
        assert not container.streams.audio
    assert not (tmp_path / "silent" / "sounds").exists()


def test_other_resolutions_render_and_write(tmp_path):
    config = RenderConfig(size=64, num_frames=10)
    scene = World(13).scene("train", 0)
    paths = write_scene(scene, tmp_path, config=config)
    assert np.asarray(Image.open(paths["image"])).shape == (64, 64, 3)
    with av.open(str(paths["video"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10


def test_library_goes_through_lbsearch_preprocess(tmp_path):
    preprocess = pytest.importorskip("lbsearch.preprocess", reason="lbsearch.preprocess is not written yet")
    scene = next(s for s in World(14).scenes("train", 40) if s.nuisance.seconds > 10.375)
    paths = write_scene(scene, tmp_path)
    waveform, rate = preprocess.load_audio(paths["audio"])
    assert rate == CONFIG.sample_rate
    assert np.array_equal(waveform.numpy()[0], render_modality(scene, "audio"))
    track, _ = preprocess.load_audio(paths["video"])
    assert track.shape[1] >= waveform.shape[1]
    with preprocess.VideoFrames(paths["video"]) as video:
        frames = video.read(video.indices(CONFIG.num_frames))
    assert np.abs(frames.astype(float) - render_modality(scene, "video")).mean() < 4.0
    settings = preprocess.PreprocessSettings(
        image_size=(CONFIG.size, CONFIG.size),
        num_frames=CONFIG.num_frames,
        num_mel_bins=64,
        target_length=256,
        sample_rate=CONFIG.sample_rate,
        audio_mean=-4.27,
        audio_std=4.57,
        max_depth=10.0,
    )
    for modality in MODALITIES:
        tensor = preprocess.preprocessor_for(modality, settings)(paths[modality])
        assert np.isfinite(tensor.numpy()).all()
        assert tensor.shape[0] == 3 and tensor.shape[-2:] != (0, 0), modality


def test_library_scans_as_one_item_per_scene_still_set(tmp_path):
    scan = pytest.importorskip("lbsearch.ingest.scan", reason="lbsearch.ingest.scan is not written yet")
    scenes = World(15).scenes("test", 3)
    write_library(tmp_path, scenes, workers=1)
    found = scan.scan([tmp_path])
    by_path = {Path(f.path): f for f in found}
    assert len(found) == len(scenes) * len(MODALITIES)
    for entry in read_manifest(tmp_path):
        files = {m: by_path[p.resolve()] for m, p in entry.files.items()}
        assert {m: f.modality for m, f in files.items()} == {m: m for m in MODALITIES}
        assert len({files[m].item_key for m in ("image", "depth", "thermal")}) == 1
        assert len({files[m].item_key for m in ("image", "video", "audio")}) == 3
