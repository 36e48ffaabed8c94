"""Video: decord frames -> [3, T, S, S], as the official ``load_and_transform_video`` (decord backend).

Sampling: ``num_frames`` indices ``linspace(first, last, num_frames)`` truncated to int over the frames of the
file (or of a time window). Transform: /255, CLIP normalisation, short side to S with bilinear interpolation
(no antialias, pytorchvideo's ShortSideScale), centre crop. The official random horizontal flip is left out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import decord
import numpy as np
import torch
import torch.nn.functional as F

from lbsearch.errors import ConfigError, MediaError
from lbsearch.preprocess.common import (
    Preprocessor,
    center_crop,
    clip_normalize,
    require_file,
    short_reason,
    window_bounds,
)
from lbsearch.preprocess.settings import PreprocessSettings

# decord reports failures both as its own DECORDError and as plain RuntimeError ("Error reading ...").
_DECORD_ERRORS = (decord.DECORDError, RuntimeError)


def _open_failure(exc: Exception) -> str:
    message = str(exc)
    if "cannot find video stream" in message:
        return "no video stream (no frames to sample)"
    if message.startswith("Error reading"):  # decord's whole message; FFmpeg's reason went to stderr
        return "cannot open as video: unknown format, or a corrupt or truncated file"
    return f"cannot open as video: {short_reason(exc)}"


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def sample_indices(
    frame_count: int,
    fps: float,
    num_frames: int,
    start: float | None = None,
    end: float | None = None,
    source: str | Path = "video",
) -> list[int]:
    """Frame indices to sample: ``num_frames`` evenly spaced over the frames in [start, end) seconds.

    Frame i is shown at i / fps. Without a window this is the official ``linspace(0, n - 1, num_frames)``.
    """
    first, stop = window_bounds(frame_count, fps, start, end, source)
    return [int(i) for i in np.linspace(first, stop - 1, num_frames).astype(int)]


def short_side_scale(video: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [C,T,H,W] so the short side is ``size``; long side floor(long / short * size)."""
    height, width = video.shape[-2:]
    # The ratio-then-multiply order is pytorchvideo's; it decides the floor when long*size/short is integral.
    if width < height:
        new_height, new_width = math.floor(height / width * size), size
    else:
        new_height, new_width = size, math.floor(width / height * size)
    return F.interpolate(video, size=(new_height, new_width), mode="bilinear", align_corners=False)


def video_tensor(frames: np.ndarray | torch.Tensor, settings: PreprocessSettings) -> torch.Tensor:
    """uint8 frames [T,H,W,3] -> normalised model input [3,T,S,S] (S = ``settings.crop_size``)."""
    video = torch.as_tensor(frames).permute(3, 0, 1, 2) / 255.0
    video = short_side_scale(clip_normalize(video), settings.crop_size)
    return center_crop(video, settings.crop_size).contiguous()


class VideoFrames:
    """An open video file (decord): its frame count, frame rate and the frames at chosen indices.

    Open once and read many windows from it; close it (or use ``with``) to free the decoder. ``decoder_threads``:
    FFmpeg's threads for this file (0: its own choice, one per core).
    """

    def __init__(self, path: str | Path, decoder_threads: int = 0):
        self.path = require_file(path)
        self._descriptor: int | None = None
        name = str(self.path)
        if not name.isascii() and _undecodable(name):
            # decord takes UTF-8 names only: a name with undecodable bytes is opened by its descriptor's name.
            self._descriptor = os.open(self.path, os.O_RDONLY)
            name = f"/proc/self/fd/{self._descriptor}"
        try:
            self._reader: decord.VideoReader | None = decord.VideoReader(
                name, ctx=decord.cpu(0), num_threads=decoder_threads
            )
            self.frame_count = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except _DECORD_ERRORS as exc:
            self.close()
            raise MediaError(self.path, _open_failure(exc)) from exc
        if self.frame_count <= 0:
            self.close()
            raise MediaError(self.path, "the video has no frames")

    @property
    def duration(self) -> float:
        """Seconds covered by the frames (frame_count / fps); 0 when the rate is unknown."""
        return self.frame_count / self.fps if self.fps > 0 else 0.0

    def indices(self, num_frames: int, start: float | None = None, end: float | None = None) -> list[int]:
        return sample_indices(self.frame_count, self.fps, num_frames, start, end, source=self.path)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames [T,H,W,3] at the given indices."""
        if self._reader is None:
            raise ValueError(f"{self.path}: the video reader is closed")
        try:
            return self._reader.get_batch(list(indices)).asnumpy()
        except _DECORD_ERRORS as exc:
            raise MediaError(self.path, f"cannot decode frames: {short_reason(exc)}") from exc

    def close(self) -> None:
        self._reader = None
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class VideoPreprocessor(Preprocessor):
    modality: ClassVar[str] = "video"

    def __post_init__(self) -> None:
        if self.settings.num_frames <= 0 or self.settings.crop_size <= 0:
            raise ConfigError(f"video preprocessing needs num_frames and image size > 0; got {self.settings}")

    def __call__(self, path: str | Path, start: float | None = None, end: float | None = None) -> torch.Tensor:
        with VideoFrames(path) as video:
            frames = video.read(video.indices(self.settings.num_frames, start, end))
        return video_tensor(frames, self.settings)
