"""Draw toy-world scenes as arrays, and write them as the media files a user's library holds.

The array renderers are what training uses (no decoding needed); the writers store exactly those arrays:
PNG and WAV files decode to them bit for bit, the MP4's frames up to H.264 loss.

Arrays per modality:
- image: uint8 [S, S, 3], the RGB still: the shape with a fading trail behind it (its motion), an orange glow
  around it (hot) or frost on it (cold), bigger when near;
- video: uint8 [T, S, S, 3], the shape moving through the clip, glow or frost but no trail: only the frames'
  order shows the motion;
- audio: float32 [n], mono at ``sample_rate``, on the 16-bit grid; its timbre and pitch tell the shape;
- depth: uint16 [S, S], millimetres: the shape at its distance before a farther wall;
- thermal: uint8 [S, S], infrared brightness: a bright, blooming shape when hot, a dark one when cold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image

from lbsearch import modalities
from lbsearch.errors import ConfigError, LbsearchError, MediaError
from lbsearch.modalities import MODALITIES
from lbsearch.toyworld.world import COLOURS, Scene

HOT_GLOW = np.array([255.0, 150.0, 40.0])
FROST = np.array([215.0, 240.0, 255.0])
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
TRAIL_GHOSTS = 6


def _ring(radii: list[float]) -> np.ndarray:
    """Vertices at equal angles, the first pointing up, at the given distances from the centre."""
    angles = -np.pi / 2 + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Polygon outlines at unit size, pointing up (image y grows downwards); the circle is exact.
OUTLINES: dict[str, np.ndarray] = {
    "square": np.array([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]),
    "triangle": _ring([1.15] * 3),
    "star": _ring([1.2, 0.5] * 5),
    "cross": np.array([(-0.33, -1.0), (0.33, -1.0), (0.33, -0.33), (1.0, -0.33), (1.0, 0.33), (0.33, 0.33),
                       (0.33, 1.0), (-0.33, 1.0), (-0.33, 0.33), (-1.0, 0.33), (-1.0, -0.33), (-0.33, -0.33)]),
    "diamond": np.array([(0.0, -1.15), (0.8, 0.0), (0.0, 1.15), (-0.8, 0.0)]),
}


@dataclass(frozen=True)
class RenderConfig:
    """Resolution of the rendered media."""

    size: int = 56
    num_frames: int = 8
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        # H.264 in yuv420p needs even sides.
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"RenderConfig.size={self.size}: must be even and at least 16")
        if self.num_frames < 2:
            raise ConfigError(f"RenderConfig.num_frames={self.num_frames}: need at least 2 frames")
        if self.sample_rate < 8000:
            raise ConfigError(f"RenderConfig.sample_rate={self.sample_rate}: need at least 8000 Hz")


# ---------------------------------------------------------------------------------------------- geometry


def _polygon_distance(px: np.ndarray, py: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """Signed distance from points to a closed polygon (negative inside)."""
    nearest = np.full(px.shape, np.inf)
    inside = np.zeros(px.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(outline, np.roll(outline, 1, axis=0), strict=True):
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        nearest = np.minimum(nearest, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        # Even-odd rule: count the edges a ray towards +x crosses.
        crosses = (ay <= py) != (by <= py)
        inside ^= crosses & ((ex * wy > ey * wx) == (by > ay))
    return np.where(inside, -1.0, 1.0) * np.sqrt(nearest)


def _shape_distance(scene: Scene, size: int, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance in pixels to the scene's shape centred at ``centre`` (pixels), and shape-local coords."""
    nuisance = scene.nuisance
    radius = nuisance.radius * size
    grid = np.arange(size) + 0.5
    dx, dy = grid[None, :] - centre[0], grid[:, None] - centre[1]
    cos, sin = np.cos(nuisance.rotation), np.sin(nuisance.rotation)
    u, v = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius
    shape = scene.attributes["shape"]
    unit = np.hypot(u, v) - 1.0 if shape == "circle" else _polygon_distance(u, v, OUTLINES[shape])
    return unit * radius, np.stack([u, v])


def _coverage(distance: np.ndarray, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased fraction of each pixel the shape covers."""
    return np.clip(0.5 - distance / softness, 0.0, 1.0)


def _centre(scene: Scene, size: int, progress: float) -> tuple[float, float]:
    """Shape centre in pixels at clip time ``progress`` (0..1); negative values lie behind the start."""
    nuisance = scene.nuisance
    vx, vy = DIRECTION_VECTORS[scene.attributes["direction"]]
    shift = (progress - 0.5) * nuisance.travel
    return (nuisance.x + vx * shift) * size, (nuisance.y + vy * shift) * size


def _blend(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return canvas * (1.0 - alpha[..., None]) + colour * alpha[..., None]


def _frost_speckle(scene: Scene, local: np.ndarray) -> np.ndarray:
    """Frost crystals fixed to the shape's surface, so they move with it between frames."""
    texture = np.random.default_rng(scene.nuisance.noise_seed + 1).uniform(size=(64, 64)) < 0.35
    cells = np.floor(local * 4.0).astype(int) % 64
    return texture[cells[1], cells[0]]


# ---------------------------------------------------------------------------------------------- arrays


def _rgb_background(scene: Scene, size: int) -> np.ndarray:
    rng = np.random.default_rng(scene.nuisance.noise_seed)
    shade = np.linspace(-8.0, 8.0, size)[:, None, None]
    return np.asarray(scene.nuisance.background) + shade + rng.normal(0.0, 2.0, size=(size, size, 3))


def _draw_shape(canvas: np.ndarray, scene: Scene, centre: tuple[float, float]) -> np.ndarray:
    """The shape, with its temperature's glow or frost, composited onto ``canvas``."""
    size = canvas.shape[0]
    distance, local = _shape_distance(scene, size, centre)
    cover = _coverage(distance)
    if scene.attributes["temperature"] == "hot":
        reach = 0.25 * scene.nuisance.radius * size + 1.0
        canvas = _blend(canvas, HOT_GLOW, 0.85 * np.exp(-np.maximum(distance, 0.0) / reach) * (1.0 - cover))
    colour = np.asarray(COLOURS[scene.attributes["colour"]], dtype=float) * scene.nuisance.brightness
    canvas = _blend(canvas, colour, cover)
    if scene.attributes["temperature"] == "cold":
        rim = np.clip(1.0 - np.abs(distance + 0.8) / 1.2, 0.0, 1.0)
        canvas = _blend(canvas, FROST, np.maximum(0.7 * _frost_speckle(scene, local), 0.8 * rim) * cover)
    return canvas


def render_image(scene: Scene, config: RenderConfig) -> np.ndarray:
    """The RGB still at mid-clip, with a fading trail behind the shape."""
    size = config.size
    canvas = _rgb_background(scene, size)
    colour = np.asarray(COLOURS[scene.attributes["colour"]], dtype=float) * scene.nuisance.brightness
    step = scene.nuisance.trail / scene.nuisance.travel / TRAIL_GHOSTS
    for ghost in range(TRAIL_GHOSTS, 0, -1):
        distance, _ = _shape_distance(scene, size, _centre(scene, size, 0.5 - ghost * step))
        canvas = _blend(canvas, colour, 0.6 * (1.0 - ghost / (TRAIL_GHOSTS + 1)) * _coverage(distance))
    canvas = _draw_shape(canvas, scene, _centre(scene, size, 0.5))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_video(scene: Scene, config: RenderConfig) -> np.ndarray:
    """The clip's frames: the shape crossing its path from start to end."""
    background = _rgb_background(scene, config.size)
    frames = [_draw_shape(background, scene, _centre(scene, config.size, t))
              for t in np.linspace(0.0, 1.0, config.num_frames)]
    return np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8)


def render_depth(scene: Scene, config: RenderConfig) -> np.ndarray:
    """Millimetres: a wall that comes closer towards the bottom of the frame, the shape in front of it."""
    size = config.size
    rng = np.random.default_rng(scene.nuisance.noise_seed + 2)
    wall = scene.nuisance.wall_mm - 1500.0 * np.linspace(0.0, 1.0, size)[:, None] ** 2
    distance, _ = _shape_distance(scene, size, _centre(scene, size, 0.5))
    # Depth sensors do not anti-alias: a pixel is either the shape or the wall.
    depth = np.where(distance < 0.0, scene.nuisance.surface_mm, wall) + rng.normal(0.0, 8.0, size=(size, size))
    return np.clip(np.rint(depth), 1, 65535).astype(np.uint16)


def render_thermal(scene: Scene, config: RenderConfig) -> np.ndarray:
    """Infrared brightness: warm bloom around a hot shape; a cold one is darker than the room."""
    size = config.size
    rng = np.random.default_rng(scene.nuisance.noise_seed + 3)
    room = scene.nuisance.ambient + np.linspace(6.0, -6.0, size)[:, None] + rng.normal(0.0, 3.0, (size, size))
    distance, _ = _shape_distance(scene, size, _centre(scene, size, 0.5))
    # Thermal optics are blurry: a softer edge than the RGB camera's.
    cover = _coverage(distance, softness=2.0)
    heat = room * (1.0 - cover) + scene.nuisance.heat * cover
    if scene.attributes["temperature"] == "hot":
        reach = 0.4 * scene.nuisance.radius * size + 1.5
        heat += 70.0 * np.exp(-np.maximum(distance, 0.0) / reach) * (1.0 - cover)
    return np.clip(np.rint(heat), 0, 255).astype(np.uint8)


def _sound_wave(shape: str, t: np.ndarray, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """One timbre per shape, with well-separated main frequencies."""
    if shape == "circle":  # a low hum: 110 Hz with soft harmonics and a slow tremolo
        f = 110.0 * pitch
        tone = sum(a * np.sin(2 * np.pi * k * f * t) for k, a in ((1, 1.0), (2, 0.35), (3, 0.12)))
        return tone * (1.0 + 0.2 * np.sin(2 * np.pi * 4.0 * t))
    if shape == "square":  # a buzz: a 220 Hz square-like wave (odd harmonics)
        f = 220.0 * pitch
        return sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 16, 2))
    if shape == "triangle":  # a chime: struck every half second, inharmonic bell partials decaying
        f = 880.0 * pitch
        since_strike = t % 0.5
        bell = sum(a * np.sin(2 * np.pi * r * f * t) for r, a in ((1.0, 1.0), (2.76, 0.4), (5.4, 0.2)))
        return bell * np.exp(-since_strike / 0.15)
    if shape == "star":  # a whistle: 2 kHz with vibrato
        phase = 2 * np.pi * 2000.0 * pitch * t + (30.0 / 6.0) * np.sin(2 * np.pi * 6.0 * t)
        return np.sin(phase)
    if shape == "cross":  # a rattle: short noise bursts
        bursts = (t % 0.08) < 0.012
        return rng.normal(0.0, 1.0, t.shape) * bursts
    # diamond, a beep: 1.2 kHz switched on and off four times a second
    return np.sin(2 * np.pi * 1200.0 * pitch * t) * ((t % 0.25) < 0.15)


def render_audio(scene: Scene, config: RenderConfig) -> np.ndarray:
    """The scene's sound, mono, quantised to 16 bits so a PCM_16 WAV holds it exactly."""
    rate = config.sample_rate
    t = np.arange(round(scene.nuisance.seconds * rate)) / rate
    rng = np.random.default_rng(scene.nuisance.noise_seed + 4)
    wave = _sound_wave(scene.attributes["shape"], t, scene.nuisance.pitch, rng)
    wave = wave / max(float(np.max(np.abs(wave))), 1e-9) * scene.nuisance.loudness
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms fades: no clicks at the ends
    wave = wave * ramp + rng.normal(0.0, 0.004, t.shape)
    return (_to_pcm16(wave) / 32768.0).astype(np.float32)


def _to_pcm16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(wave * 32768.0), -32768, 32767).astype(np.int16)


RENDERERS: dict[str, Callable[[Scene, RenderConfig], np.ndarray]] = {
    "video": render_video,
    "audio": render_audio,
    "depth": render_depth,
    "thermal": render_thermal,
    "image": render_image,
}


def render_modality(scene: Scene, modality: str, config: RenderConfig | None = None) -> np.ndarray:
    """One modality of a scene as an array (see the module docstring for shapes and types)."""
    return RENDERERS[modalities.lookup(modality).name](scene, config or RenderConfig())


# ---------------------------------------------------------------------------------------------- files

# Where each modality goes in a library. The stills sit in sibling folders under one parent and are named
# alike (NYU-D/LLVIP style), so an ingester sees one item per scene; "depth" and "thermal" folders mark those
# modalities.
LIBRARY_PATHS = {
    "image": "scenes/rgb/{id}.png",
    "depth": "scenes/depth/{id}.png",
    "thermal": "scenes/thermal/{id}.png",
    "video": "videos/{id}.mp4",
    "audio": "sounds/{id}.wav",
}
MANIFEST = "manifest.jsonl"
VIDEO_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


@dataclass(frozen=True)
class LibraryLayout:
    """Which files a library holds.

    ``mux_audio`` puts the scene's sound into the MP4 as its audio track (AAC), so a video and its own audio
    are one item; ``audio`` among the modalities also writes it as a standalone WAV under ``sounds/``.
    """

    modalities: tuple[str, ...] = MODALITIES
    mux_audio: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ConfigError(f"LibraryLayout.modalities={self.modalities!r}: choose from {MODALITIES}")


@dataclass(frozen=True)
class LibraryEntry:
    """One scene of a written library and its files (absolute paths)."""

    scene: Scene
    files: dict[str, Path]
    video_has_audio: bool


def write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 grey or RGB, or uint16 grey (16-bit PNG)."""
    Image.fromarray(pixels).save(path, format="PNG")


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    soundfile.write(path, _to_pcm16(wave), sample_rate, subtype="PCM_16", format="WAV")


def write_mp4(path: Path, frames: np.ndarray, seconds: float, wave: np.ndarray | None, sample_rate: int) -> None:
    """H.264 (yuv420p) frames spread over ``seconds``, with ``wave`` as an AAC audio track when given."""
    rate = Fraction(len(frames) * 1000, max(1, round(seconds * 1000)))
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream(VIDEO_CODEC, rate=rate)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        # One thread: libraries are written by a process pool, one worker per core.
        video.options = {"crf": "12", "preset": "veryfast", "threads": "1"} if VIDEO_CODEC == "libx264" else {}
        sound = None
        if wave is not None:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
            # FFmpeg's fast AAC coder at a tone-friendly bit rate: several times faster than the default.
            sound.options = {"aac_coder": "fast", "b": "48k"}
        for index, pixels in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            picture.pts, picture.time_base = index, 1 / rate
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
        if sound is not None:
            samples = av.AudioFrame.from_ndarray(_to_pcm16(wave)[None], format="s16", layout="mono")
            # An explicit start lets the muxer write an edit list that hides the AAC encoder's priming samples.
            samples.sample_rate, samples.pts, samples.time_base = sample_rate, 0, Fraction(1, sample_rate)
            container.mux(sound.encode(samples))
            container.mux(sound.encode(None))


def write_scene(scene: Scene, root: str | Path, config: RenderConfig | None = None,
                layout: LibraryLayout | None = None) -> dict[str, Path]:
    """Render a scene and write its files under ``root`` (see LIBRARY_PATHS); returns modality -> path."""
    config, layout = config or RenderConfig(), layout or LibraryLayout()
    root = Path(root)
    paths = {m: root / LIBRARY_PATHS[m].format(id=scene.id) for m in MODALITIES if m in layout.modalities}
    needs_wave = "audio" in paths or ("video" in paths and layout.mux_audio)
    wave = render_audio(scene, config) if needs_wave else None
    for modality, path in paths.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if modality == "audio":
                write_wav(path, wave, config.sample_rate)
            elif modality == "video":
                write_mp4(path, render_video(scene, config), scene.nuisance.seconds,
                          wave if layout.mux_audio else None, config.sample_rate)
            else:
                write_png(path, RENDERERS[modality](scene, config))
        except (OSError, av.FFmpegError, soundfile.LibsndfileError) as error:
            raise MediaError(path, f"cannot write the {modality} file: {error}") from error
    return paths


def _write_batch(scenes: list[Scene], root: Path, config: RenderConfig, layout: LibraryLayout) -> list[dict]:
    return [_manifest_record(scene, write_scene(scene, root, config, layout), root, layout) for scene in scenes]


def _manifest_record(scene: Scene, paths: dict[str, Path], root: Path, layout: LibraryLayout) -> dict:
    return {**scene.to_dict(), "files": {m: p.relative_to(root).as_posix() for m, p in paths.items()},
            "video_has_audio": "video" in paths and layout.mux_audio}


def write_library(root: str | Path, scenes: Sequence[Scene], config: RenderConfig | None = None,
                  layout: LibraryLayout | None = None, workers: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Write every scene's files under ``root`` and a manifest of captions, labels and files; returns it.

    ``workers`` processes share the work (default: one per core; 1 writes in this process).
    ``on_progress(done, total)`` is called as batches finish. The manifest (``root/manifest.jsonl``, one JSON
    object per scene, in ``scenes`` order) is written last and atomically, so it only lists finished files.
    """
    config, layout = config or RenderConfig(), layout or LibraryLayout()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or os.cpu_count() or 1)
    scenes = list(scenes)
    batch = max(1, min(64, len(scenes) // (4 * workers) or 1))
    batches = [scenes[i:i + batch] for i in range(0, len(scenes), batch)]
    records: list[dict] = []
    if workers == 1:
        results = (_write_batch(b, root, config, layout) for b in batches)
        _collect(results, records, len(scenes), on_progress)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_write_batch, b, root, config, layout) for b in batches]
            _collect((f.result() for f in futures), records, len(scenes), on_progress)
    manifest = root / MANIFEST
    partial = manifest.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
    partial.replace(manifest)
    return manifest


def _collect(results, records: list[dict], total: int, on_progress: Callable[[int, int], None] | None) -> None:
    for batch_records in results:
        records.extend(batch_records)
        if on_progress is not None:
            on_progress(len(records), total)


def read_manifest(root: str | Path) -> list[LibraryEntry]:
    """The scenes of a library written by ``write_library``, with absolute file paths."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise LbsearchError(f"{manifest}: no toy-world manifest here (write the library with write_library)")
    entries = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            files = {m: root / p for m, p in record["files"].items()}
            entries.append(LibraryEntry(Scene.from_dict(record), files, bool(record["video_has_audio"])))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, LbsearchError) as error:
            raise LbsearchError(f"{manifest}:{number}: unreadable manifest line ({error})") from error
    return entries
