"""What a media file holds (duration, frame rate, size, audio format), read from its headers without decoding."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

from lbsearch.errors import MediaError
from lbsearch.preprocess.common import PIL_ERRORS, require_file, short_reason

_MICROSECONDS = 1_000_000  # FFmpeg's AV_TIME_BASE: container durations are in these units


@dataclass(frozen=True)
class MediaInfo:
    """Header facts about one file. Fields that do not apply (an image's duration, ...) are None.

    ``frame_count`` comes from the container, or duration x fps where the container does not say; the video
    reader's own count (``VideoFrames.frame_count``) is the one frame sampling uses.
    """

    duration: float | None
    fps: float | None
    frame_count: int | None
    width: int | None
    height: int | None
    sample_rate: int | None
    channels: int | None
    has_video: bool
    has_audio: bool


def probe(path: str | Path) -> MediaInfo:
    """Header facts about an image (PIL) or an audio/video file (PyAV); MediaError for anything else."""
    path = require_file(path)
    image_info = _probe_image(path)
    return image_info if image_info is not None else _probe_container(path)


def _probe_image(path: Path) -> MediaInfo | None:
    """MediaInfo for a file PIL recognises by its signature, else None."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except PIL_ERRORS:
        return None
    return MediaInfo(
        duration=None,
        fps=None,
        frame_count=None,
        width=width,
        height=height,
        sample_rate=None,
        channels=None,
        has_video=False,
        has_audio=False,
    )


def _probe_container(path: Path) -> MediaInfo:
    try:
        with av.open(str(path)) as container:
            # Cover art in music files shows up as a one-picture "video" stream; it is not video.
            video = next(
                (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic),
                None,
            )
            audio = container.streams.audio[0] if container.streams.audio else None
            if video is None and audio is None:
                raise MediaError(path, "no audio or video stream")
            duration = _duration(container, [s for s in (video, audio) if s is not None])
            fps, frame_count = _frame_facts(video, duration) if video is not None else (None, None)
            return MediaInfo(
                duration=duration,
                fps=fps,
                frame_count=frame_count,
                width=video.width if video is not None else None,
                height=video.height if video is not None else None,
                sample_rate=audio.sample_rate if audio is not None else None,
                channels=audio.channels if audio is not None else None,
                has_video=video is not None,
                has_audio=audio is not None,
            )
    except av.FFmpegError as exc:
        raise MediaError(path, f"not a readable media file: {short_reason(exc)}") from exc


def _frame_facts(video: av.video.stream.VideoStream, duration: float | None) -> tuple[float | None, int | None]:
    """Frame rate and frame count of a video stream; the count is estimated from a duration if not stored.

    The estimate uses the stream's own duration where known (an audio track may run longer).
    """
    rate = video.average_rate or video.guessed_rate
    fps = float(rate) if rate else None
    if video.frames:
        return fps, video.frames
    seconds = _stream_seconds(video)
    seconds = duration if seconds is None else seconds
    return fps, (round(seconds * fps) if seconds and fps else None)


def _stream_seconds(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _duration(container: av.container.InputContainer, streams: list[av.stream.Stream]) -> float | None:
    """Seconds: the longest stream's own duration, else the container's."""
    stream_seconds = [seconds for seconds in map(_stream_seconds, streams) if seconds is not None]
    if stream_seconds:
        return max(stream_seconds)
    if container.duration is not None:
        return float(Fraction(container.duration, _MICROSECONDS))
    return None
