"""Pieces every preprocessor shares: the CLIP normalisation, centre crop, file checks and time windows."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from lbsearch.errors import ConfigError, MediaError
from lbsearch.preprocess.settings import PreprocessSettings

# OpenAI CLIP's pixel statistics; every LanguageBind vision input is normalised with them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Times are multiplied by a rate before rounding up to an index; rounding the product to this many decimals
# first keeps float noise (0.1 * 30 = 3.0000000000000004) from moving a boundary by one index.
_INDEX_DECIMALS = 6

# decord messages start with "[hh:mm:ss] /path/to/source.cc:123: "; the reason follows.
_DECORD_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")
_PYAV_LOG_MARKER = "last error log:"

# Float32 values of an image converted at once (48 MiB): a larger image is resized strip by strip.
_STRIP_VALUES = 1 << 22

# PIL signals unreadable files with all of these, depending on the format plugin.
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; channels are the first axis ([3,H,W] or [3,T,H,W])."""
    shape = (3,) + (1,) * (pixels.dim() - 1)
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype).view(shape)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype).view(shape)
    return (pixels - mean) / std


def center_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Square centre crop of the last two axes, with torchvision's offsets int(round((h - size) / 2))."""
    height, width = pixels.shape[-2:]
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return pixels[..., top : top + size, left : left + size]


def still_tensor(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Pixels in [0, 1], ``[3,H,W]`` or a batch ``[B,3,H,W]`` -> bicubic short-side resize to ``size``, centre
    crop, CLIP normalisation: the still modalities' model input (a batch gives each item's own result)."""
    batch = pixels if pixels.dim() == 4 else pixels[None]
    resized = _bicubic(batch, *short_side_shape(*batch.shape[-2:], size))
    # clip_normalize wants the channels first; in a batch they come second.
    channels_first = center_crop(resized, size).movedim(-3, 0)
    normalized = clip_normalize(channels_first).movedim(0, -3).contiguous()
    return normalized if pixels.dim() == 4 else normalized[0]


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size): the short side becomes ``size``, the long one int(size * long / short)."""
    short, long = sorted((height, width))
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def require_file(path: str | Path) -> Path:
    """The path as a Path, or MediaError when it is missing, not a regular file or empty."""
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "file not found")
    if not path.is_file():
        raise MediaError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty")
    return path


def open_image(path: Path) -> Image.Image:
    """The image at ``path``, fully decoded (so truncation shows here), or MediaError.

    A header claiming more than PIL's ``MAX_IMAGE_PIXELS`` (89 million; PIL itself only warns up to twice that)
    is refused before anything is decoded: a small file may claim a huge picture (a decompression bomb).
    """
    try:
        image = Image.open(path)
        try:
            pixels = image.width * image.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                raise MediaError(
                    path,
                    f"image of {image.width}x{image.height} pixels is larger than lbsearch decodes "
                    f"({Image.MAX_IMAGE_PIXELS:,} pixels): a decompression bomb, or a picture to scale down first",
                )
            image.load()
            if image.fp is None:  # PIL closed the file it opened (one frame): the pixels stay
                return image
            with image:  # a multi-frame format keeps its file open: keep the pixels, close the file
                return image.copy()
        except BaseException:
            image.close()
            raise
    except PIL_ERRORS as exc:
        raise MediaError(path, f"cannot decode image: {short_reason(exc)}") from exc


def short_reason(exc: BaseException) -> str:
    """A one-line reason from a decoder exception, without the file name the caller reports anyway.

    PyAV errors carry FFmpeg's message in ``strerror`` and its last log line after "last error log: ";
    decord prefixes a timestamp and its source line.
    """
    strerror = getattr(exc, "strerror", None)
    if strerror:
        log = str(exc).partition(_PYAV_LOG_MARKER)[2].strip()
        return f"{strerror} ({log})" if log else str(strerror)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return _DECORD_PREFIX.sub("", lines[0]) if lines else type(exc).__name__


def window_bounds(
    count: int, rate: float, start: float | None, end: float | None, source: str | Path
) -> tuple[int, int]:
    """Indices [first, stop) of the items (frames, samples) whose time index / rate lies in [start, end).

    ``None`` means the beginning or the end of the media. A window that holds no item is a MediaError.
    """
    if start is None and end is None:
        return 0, count
    if start is not None and end is not None and end <= start:
        raise MediaError(source, f"empty time window [{start}, {end})")
    if rate <= 0:
        raise MediaError(source, "unknown frame or sample rate; cannot cut a time window")
    first = 0 if start is None else max(0, math.ceil(round(start * rate, _INDEX_DECIMALS)))
    stop = count if end is None else min(count, math.ceil(round(end * rate, _INDEX_DECIMALS)))
    if stop <= first:
        raise MediaError(source, f"time window [{start}, {end}) s lies outside the media ({count / rate:.3f} s)")
    return first, stop


@dataclass(frozen=True)
class Preprocessor:
    """Turns one media file into the model input tensor of its modality.

    Plain frozen dataclasses (settings only, no open handles) so that they pickle into worker processes.
    """

    settings: PreprocessSettings
    modality: ClassVar[str]

    def __call__(self, path: str | Path, start: float | None = None, end: float | None = None) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class StillPreprocessor(Preprocessor):
    """Image-like modalities: pixels [3,H,W] in [0,1] -> bicubic short-side resize -> centre crop -> CLIP norm."""

    def __post_init__(self) -> None:
        if self.settings.crop_size <= 0:
            raise ConfigError(f"{self.modality} preprocessing needs a positive image size; got {self.settings}")

    def __call__(self, path: str | Path, start: float | None = None, end: float | None = None) -> torch.Tensor:
        if start is not None or end is not None:
            raise MediaError(path, f"{self.modality} inputs have no time axis; got a window [{start}, {end})")
        path = require_file(path)
        image = self.open(path)
        size = self.settings.crop_size
        height, width = image.height, image.width
        new_height, new_width = short_side_shape(height, width, size)
        # The bicubic filter runs along the rows, then along the columns: the row pass goes strip by strip, so a
        # large photo is never held as float32 whole (a 9000x9000 one would take 972 MB), with the same result.
        rows = self.strip_rows(image)
        narrowed = torch.cat(
            [
                _bicubic(self.pixels(image.crop((0, top, width, min(top + rows, height)))), None, new_width)
                for top in range(0, height, rows)
            ],
            dim=1,
        )
        resized = _bicubic(narrowed, new_height, new_width)
        return clip_normalize(center_crop(resized, size)).contiguous()

    def open(self, path: Path) -> Image.Image:
        """The decoded image, checked to be one this modality reads."""
        return open_image(path)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """An image (or a strip of one) as a float32 tensor [3,H,W]."""
        raise NotImplementedError

    def strip_rows(self, image: Image.Image) -> int:
        """Rows converted to float32 at a time: ``_STRIP_VALUES`` values' worth."""
        return max(1, _STRIP_VALUES // (3 * image.width))


def _bicubic(pixels: torch.Tensor, height: int | None, width: int) -> torch.Tensor:
    """[3,H,W] or [B,3,H,W] -> height x width (None: H) by antialiased bicubic interpolation, as torchvision's
    tensor Resize (with its current default antialias=True, as the official processors run today)."""
    batch = pixels if pixels.dim() == 4 else pixels[None]
    size = (batch.shape[-2] if height is None else height, width)
    resized = F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized if pixels.dim() == 4 else resized[0]
