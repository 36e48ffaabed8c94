"""Pictures of hits for the results grid, drawn with numpy and PIL (no plotting library).

- audio: the waveform's envelope, with the matched segment shaded;
- depth maps: millimetres through a perceptual colour map (near is warm, far is cool, missing is black);
- thermal frames: intensity through an "ironbow" infrared palette;
- photos: thumbnails; videos too large to send whole: the frame of the matched moment.
Decoding reuses lbsearch's own readers, so a file that cannot be read raises the same `MediaError` as a search.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lbsearch.preprocess.audio import load_audio
from lbsearch.preprocess.common import open_image
from lbsearch.preprocess.video import VideoFrames

THUMBNAIL_SIZE = 360
WAVEFORM_SIZE = (640, 120)
WAVEFORM_COLOUR = (46, 117, 182)
MATCH_SHADE = (255, 214, 102)
BACKGROUND = (248, 249, 251)

# Anchor colours (position in [0, 1], RGB) that the lookup tables interpolate between.
DEPTH_ANCHORS = (
    (0.00, (122, 4, 3)),
    (0.20, (231, 78, 12)),
    (0.40, (249, 189, 38)),
    (0.60, (164, 252, 60)),
    (0.80, (40, 188, 235)),
    (1.00, (48, 18, 59)),
)
IRONBOW_ANCHORS = (
    (0.00, (0, 0, 10)),
    (0.25, (70, 10, 130)),
    (0.50, (200, 30, 90)),
    (0.70, (245, 110, 20)),
    (0.88, (255, 210, 60)),
    (1.00, (255, 255, 235)),
)
# Depth is stretched between these percentiles of the valid pixels, so one far wall does not flatten the rest.
DEPTH_PERCENTILES = (2.0, 98.0)


def lookup_table(anchors: tuple[tuple[float, tuple[int, int, int]], ...]) -> np.ndarray:
    """A [256, 3] uint8 table interpolating linearly between the anchor colours."""
    positions = np.array([position for position, _ in anchors])
    colours = np.array([colour for _, colour in anchors], dtype=np.float64)
    steps = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(steps, positions, colours[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


DEPTH_LUT = lookup_table(DEPTH_ANCHORS)
IRONBOW_LUT = lookup_table(IRONBOW_ANCHORS)


def thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> Image.Image:
    shrunk = image.copy()
    shrunk.thumbnail((size, size))
    return shrunk


def colourise_depth(depth: np.ndarray) -> Image.Image:
    """A depth map [H, W] (any unit; 0 = no reading) as an RGB image: near warm, far cool, missing black."""
    values = depth.astype(np.float64)
    if values.ndim == 3:  # depth saved as grey RGB
        values = values[..., 0]
    valid = values > 0
    rgb = np.zeros((*values.shape, 3), dtype=np.uint8)
    if valid.any():
        low, high = np.percentile(values[valid], DEPTH_PERCENTILES)
        scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
        rgb[valid] = DEPTH_LUT[np.round(scaled[valid] * 255).astype(np.uint8)]
    return Image.fromarray(rgb)


def colourise_thermal(image: Image.Image) -> Image.Image:
    """A thermal frame (grey, or grey stored as RGB) through the ironbow palette, stretched to its own range."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    low, high = grey.min(), grey.max()
    scaled = (grey - low) / max(high - low, 1e-9)
    return Image.fromarray(IRONBOW_LUT[np.round(scaled * 255).astype(np.uint8)])


def waveform_image(
    samples: np.ndarray,
    sample_rate: int,
    match: tuple[float | None, float | None] | None = None,
    size: tuple[int, int] = WAVEFORM_SIZE,
) -> Image.Image:
    """The envelope (min and max per pixel column) of mono ``samples``; ``match`` (seconds) is shaded."""
    width, height = size
    picture = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(picture)
    seconds = len(samples) / sample_rate
    if match is not None and seconds > 0:
        start = match[0] or 0.0
        end = match[1] if match[1] is not None else seconds
        draw.rectangle(
            (round(width * start / seconds), 0, round(width * min(end, seconds) / seconds), height), fill=MATCH_SHADE
        )
    if len(samples) == 0:
        return picture
    columns = np.array_split(samples, min(width, len(samples)))
    peak = max(float(np.abs(samples).max()), 1e-9)
    middle = height / 2
    scale = (height / 2 - 2) / peak
    for x, column in enumerate(columns):
        x_pixel = x * width // len(columns)
        top = middle - float(column.max()) * scale
        bottom = middle - float(column.min()) * scale
        draw.line((x_pixel, top, x_pixel, bottom), fill=WAVEFORM_COLOUR)
    return picture


def audio_waveform(path: str | Path, start: float | None = None, end: float | None = None) -> Image.Image:
    """The waveform picture of an audio file (or a video's sound track), channels mixed down, with the moment
    from ``start`` to ``end`` shaded (nothing is shaded when both are None: the whole file matched)."""
    waveform, sample_rate = load_audio(path)
    match = None if start is None and end is None else (start, end)
    return waveform_image(waveform.mean(dim=0).numpy(), sample_rate, match)


def video_frame(path: str | Path, seconds: float | None) -> Image.Image:
    """A thumbnail of the video frame at ``seconds`` (the first frame for None)."""
    with VideoFrames(path) as video:
        index = min(round((seconds or 0.0) * video.fps), video.frame_count - 1)
        return thumbnail(Image.fromarray(video.read([index])[0]))


def still_preview(path: str | Path, modality: str) -> Image.Image:
    """A thumbnail of an image file as what it is: a depth map, a thermal frame or a photo."""
    image = open_image(Path(path))
    if modality == "depth":
        return thumbnail(colourise_depth(np.asarray(image)))
    if modality == "thermal":
        return thumbnail(colourise_thermal(image))
    return thumbnail(image.convert("RGB"))
