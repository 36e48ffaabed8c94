"""Stand-ins for the sample files of ``../shared/media``, written by the tests: the same names, formats and the
properties tests rely on (lengths, sample rates, channels, bit depths), only smaller pictures.

| file | what it is |
|---|---|
| video/0.mp4, video/1.mp4 | portrait H.264 without sound, 8.2 s and 9.0 s (shorter than one 10 s window) |
| audio/0.wav, audio/1.wav | 16 kHz mono 16-bit PCM, 10.242 s (one window and a bit) |
| audio/long_stereo_44k_25s.wav | 25 s, 44.1 kHz, 2 channels, 16-bit PCM (over 1 MB) |
| depth/0.png, depth/1.png | 16-bit single-channel depth in millimetres, 0.5-9.5 m |
| thermal/0.jpg, thermal/1.jpg | 3-channel JPEGs of a grey heat picture |
| image/0.jpg, image/1.jpg | RGB JPEG photos |

Pictures are smooth gradients with a seeded blob, so each file differs from the others and from its neighbours
in a library.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from lbsearch.toyworld.render import write_mp4

SHORT_AUDIO_SECONDS = 10.242
SHORT_AUDIO_RATE = 16_000
LONG_AUDIO_SECONDS, LONG_AUDIO_RATE = 25.0, 44_100
VIDEO_SECONDS = (8.2, 9.0)
VIDEO_FPS = 10
PICTURE = (90, 160)  # height, width: the samples are wider than tall
VIDEO_PICTURE = (160, 96)  # portrait, like the official sample videos; a width decord reads unpadded


def _picture(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A float [H, W] picture in [0, 1]: a gradient whose direction depends on the seed, plus a bright blob."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows, columns = np.mgrid[0:height, 0:width] / max(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 0.5 + 0.4 * np.sin(4 * (np.cos(angle) * rows + np.sin(angle) * columns) + rng.uniform(0, np.pi))
    centre = rng.uniform(0.2, 0.8, 2) * (height, width)
    blob = np.exp(-(((np.mgrid[0:height, 0:width] - centre[:, None, None]) ** 2).sum(0)) / (0.02 * height * width))
    return np.clip(0.7 * gradient + 0.3 * blob, 0.0, 1.0)


def _rgb(seed: int, size: tuple[int, int]) -> np.ndarray:
    channels = [_picture(seed * 3 + channel, size) for channel in range(3)]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def _sound(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """A tone that glides from a seeded pitch, with a little noise: [samples] or [samples, channels]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    pitch = rng.uniform(150, 600)
    tracks = [
        0.3 * np.sin(2 * np.pi * (pitch * (1 + 0.1 * channel) + 15 * t) * t) + 0.02 * rng.standard_normal(t.size)
        for channel in range(channels)
    ]
    return (np.stack(tracks, axis=-1) if channels > 1 else tracks[0]).astype(np.float32)


def _video(path: Path, seconds: float, seed: int) -> None:
    count = round(seconds * VIDEO_FPS)
    base = _rgb(seed, VIDEO_PICTURE)
    frames = np.stack([np.roll(base, shift=2 * index, axis=0) for index in range(count)])
    write_mp4(path, frames, seconds, None, SHORT_AUDIO_RATE)


def write_samples(root: Path) -> Path:
    """Write every sample file under ``root`` (``root/MODALITY/NAME``); returns ``root``."""
    for modality in ("video", "audio", "depth", "thermal", "image"):
        (root / modality).mkdir(parents=True, exist_ok=True)
    for index, seconds in enumerate(VIDEO_SECONDS):
        _video(root / "video" / f"{index}.mp4", seconds, seed=10 + index)
    for index in range(2):
        soundfile.write(
            root / "audio" / f"{index}.wav",
            _sound(SHORT_AUDIO_SECONDS, SHORT_AUDIO_RATE, seed=20 + index),
            SHORT_AUDIO_RATE,
            subtype="PCM_16",
        )
        millimetres = (500 + 9000 * _picture(30 + index, PICTURE)).astype(np.uint16)
        Image.fromarray(millimetres).save(root / "depth" / f"{index}.png")
        heat = (_picture(40 + index, PICTURE) * 255).astype(np.uint8)
        Image.fromarray(np.repeat(heat[..., None], 3, axis=2)).save(root / "thermal" / f"{index}.jpg", quality=90)
        Image.fromarray(_rgb(50 + index, PICTURE)).save(root / "image" / f"{index}.jpg", quality=90)
    soundfile.write(
        root / "audio" / "long_stereo_44k_25s.wav",
        _sound(LONG_AUDIO_SECONDS, LONG_AUDIO_RATE, seed=60, channels=2),
        LONG_AUDIO_RATE,
        subtype="PCM_16",
    )
    return root
