"""The decode stage of ingestion: one file (or one slice of a long file's windows) -> model inputs.

Runs in worker processes, so everything here is picklable plain data and never raises for a bad file: the
error travels back as text with the file's path, and the run goes on.

A long video or audio file gets a whole-file input and one input per time window. Windows are decoded in
parts of ``WINDOWS_PER_PART`` so that one long file never holds more than a few dozen tensors in memory. Audio
is held whole only up to ``AUDIO_HELD_VALUES``; a longer track is streamed: one pass measures it, and each input
decodes only its own span (the whole-file input: its three chunks), so memory does not grow with its length.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from lbsearch import modalities
from lbsearch.errors import ConfigError, MediaError
from lbsearch.preprocess import (
    MediaInfo,
    PreprocessSettings,
    VideoFrames,
    audio_tensor,
    preprocessor_for,
    probe,
    read_audio,
    scan_audio,
    track_tensor,
    video_tensor,
)
from lbsearch.preprocess.common import window_bounds

WINDOWS_PER_PART = 16
# Samples x channels of an audio track kept from its first decoding pass (64 MiB of float32: 17.5 minutes of
# 16 kHz mono, 2.9 of 48 kHz stereo). A longer track is read again span by span.
AUDIO_HELD_VALUES = 1 << 24
# The sample rate (x channels) a span of windows is sized for: a 48 kHz stereo track's at most 2x more.
_SPAN_RATE_BOUND = 48000


@dataclass(frozen=True)
class WindowSpec:
    """Time windows for long media: ``length`` seconds every ``hop`` seconds (0 length: none)."""

    length: float = 10.0
    hop: float = 5.0

    def __post_init__(self) -> None:
        if not (self.length >= 0 and math.isfinite(self.length)) or (self.length > 0 and not self.hop > 0):
            raise ConfigError(
                f"--window {self.length:g} --hop {self.hop:g}: the window length must be >= 0 seconds (0: no "
                "windows) and the hop > 0"
            )

    def windows(self, duration: float | None) -> list[tuple[float, float]]:
        """Windows covering ``duration`` seconds; none when the media is not longer than one window.

        Starts step by ``hop``; a last window is aligned to the end so the tail is always covered.
        """
        if not self.length or not duration or duration <= self.length:
            return []
        count = math.ceil(round((duration - self.length) / self.hop, 6)) + 1
        starts = [min(i * self.hop, duration - self.length) for i in range(count)]
        return [(round(s, 6), round(min(s + self.length, duration), 6)) for s in starts]


@dataclass(frozen=True)
class DecodeTask:
    """Decode ``path`` for the modalities in ``settings``: the whole file (part 0) and windows [first, last)."""

    path: str
    modality: str  # the file's modality: video, audio, image, depth or thermal
    settings: Mapping[str, PreprocessSettings]  # modalities the model set embeds -> their preprocessing
    windows: WindowSpec = WindowSpec()
    part: int = 0
    spans: tuple[tuple[float, float], ...] = ()  # a later part's windows (the first part measured the file)
    size: int = 0  # the file's bytes on disk: small files go to a worker several at a time


@dataclass
class ModelInput:
    modality: str
    start: float | None  # None: the whole file
    end: float | None
    tensor: torch.Tensor

    def __reduce__(self) -> tuple:
        # Sent back from the decode workers as a plain array: torch's multiprocessing pickler gives every tensor
        # its own shared-memory file, which costs far more than copying tensors of this size through the pipe.
        return (_model_input, (self.modality, self.start, self.end, self.tensor.numpy()))


def _model_input(modality: str, start: float | None, end: float | None, array: np.ndarray) -> ModelInput:
    return ModelInput(modality, start, end, torch.from_numpy(array))


@dataclass
class DecodedPart:
    """What a worker sends back for one task."""

    task: DecodeTask
    info: MediaInfo | None = None
    inputs: list[ModelInput] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)  # all windows of the file (part 0 only)
    # The file's modality, where decoding found it other than its name says: an .mp4 holding only sound is audio.
    modality: str | None = None
    error: str | None = None  # the file cannot be embedded at all
    warning: str | None = None  # something was skipped (e.g. an undecodable audio track of a good video)


def decode(task: DecodeTask) -> DecodedPart:
    """Decode one task. Never raises for a media problem: it comes back in ``error``."""
    result = DecodedPart(task)
    try:
        # An audio file is described by its own decoding (`_decode_audio`): opening it once instead of twice
        # saves much of the decode time of short clips (docs/benchmarks.md, Ingest).
        if not (task.modality == "audio" and "audio" in task.settings):
            result.info = probe(task.path)
        if task.modality == "video" and result.info is not None and not result.info.has_video:
            _decode_sound_only(task, result)
        elif modalities.lookup(task.modality).timed:
            _decode_timed(task, result)
        elif task.modality in task.settings:
            tensor = preprocessor_for(task.modality, task.settings[task.modality])(task.path)
            result.inputs.append(ModelInput(task.modality, None, None, tensor))
    except MediaError as exc:
        result.error = exc.reason
        result.inputs.clear()
    except Exception as exc:  # a decoder bug must not take the run down; the file is recorded as failed
        result.error = f"unexpected {type(exc).__name__}: {exc}"
        result.inputs.clear()
    return result


def _decode_timed(task: DecodeTask, result: DecodedPart) -> None:
    """Whole file (part 0) and windows. Window times come from the decoder's own length, not the header."""
    if task.modality == "video":
        if "video" in task.settings:
            settings = task.settings["video"]
            # One FFmpeg thread: ingestion decodes a file per core already. Its own threading (one per core) spent
            # more CPU time for the same wall time, and fought the encoder for the cores (docs/benchmarks.md).
            with VideoFrames(task.path, decoder_threads=1) as video:
                spans = _spans(task, result, video.duration)
                for start, end in spans:
                    frames = video.read(video.indices(settings.num_frames, start, end))
                    result.inputs.append(ModelInput("video", start, end, video_tensor(frames, settings)))
        else:
            spans = _spans(task, result, result.info.duration if result.info else None)
        if "audio" in task.settings and result.info is not None and result.info.has_audio:
            try:
                _decode_audio(task, result, spans, lenient=True)
            except MediaError as exc:
                result.warning = f"audio track skipped: {exc.reason}"
                result.inputs = [i for i in result.inputs if i.modality != "audio"]
                # Recorded as no (usable) track: otherwise every later run would find the audio vector missing
                # and decode the file again.
                result.info = replace(result.info, has_audio=False)
    elif "audio" in task.settings:
        _decode_audio(task, result, None, lenient=False)


def _decode_sound_only(task: DecodeTask, result: DecodedPart) -> None:
    """A video container with a sound track and no pictures (music in an .mp4) is an audio file."""
    if "audio" not in task.settings:
        raise MediaError(task.path, "no video stream, only sound, and the model set has no audio model")
    result.modality = "audio"
    _decode_audio(task, result, None, lenient=False)


def _spans(task: DecodeTask, result: DecodedPart, duration: float | None) -> list[tuple[float | None, float | None]]:
    """This task's share of (whole file, windows...)."""
    if task.part:
        return list(task.spans)
    result.windows = task.windows.windows(duration)
    return [(None, None), *result.windows[:WINDOWS_PER_PART]]


def _decode_audio(task: DecodeTask, result: DecodedPart, spans, lenient: bool) -> None:
    """Audio inputs for ``spans`` (None: the file's own spans). ``lenient``: a video's audio track may be
    shorter than its pictures, so windows past its end are skipped rather than failing the file."""
    track, waveform = None, None
    if task.part == 0:  # the whole file is wanted: measure it (and keep it, when short)
        track, waveform = scan_audio(task.path, keep=AUDIO_HELD_VALUES)
    if result.info is None and track is not None:  # an audio file, not probed: what its decoding says
        result.info = MediaInfo(
            duration=track.duration,
            fps=None,
            frame_count=None,
            width=None,
            height=None,
            sample_rate=track.sample_rate,
            channels=track.channels,
            has_video=False,
            has_audio=True,
        )
    if spans is None:
        spans = _spans(task, result, track.duration if track is not None else None)
    settings = task.settings["audio"]
    if (None, None) in spans:
        if waveform is not None:
            whole = audio_tensor(waveform, track.sample_rate, settings, task.path)
        else:
            whole = track_tensor(task.path, track, settings)
        result.inputs.append(ModelInput("audio", None, None, whole))
    windows = [(start, end) for start, end in spans if start is not None]
    if not windows:
        return
    if waveform is not None:
        _cut_windows(task, result, windows, waveform, track.sample_rate, 0, lenient)
        return
    # Windows are read in groups, each group as one span (a lossy track is decoded from its start for each read)
    # of at most AUDIO_HELD_VALUES / _SPAN_RATE_BOUND seconds: 350 s, 64 MiB of 48 kHz mono. Memory follows
    # neither the track's length nor the number of windows in a part.
    groups: list[list[tuple[float, float]]] = []
    for window in windows:
        if groups and window[1] - groups[-1][0][0] <= AUDIO_HELD_VALUES / _SPAN_RATE_BOUND:
            groups[-1].append(window)
        else:
            groups.append([window])
    for group in groups:
        try:
            waveform, rate = read_audio(task.path, group[0][0], max(end for _, end in group))
        except MediaError:
            if lenient:  # the sound track ends before these windows of the pictures
                continue
            raise
        offset = window_bounds(sys.maxsize, rate, group[0][0], None, task.path)[0]
        _cut_windows(task, result, group, waveform, rate, offset, lenient)


def _cut_windows(
    task: DecodeTask,
    result: DecodedPart,
    windows: list[tuple[float, float]],
    waveform: torch.Tensor,
    rate: int,
    offset: int,
    lenient: bool,
) -> None:
    """Audio inputs of ``windows`` from ``waveform``, which starts at sample ``offset`` of the track: cut by the
    whole track's sample indices, as `cut_window` cuts them from the whole waveform."""
    for start, end in windows:
        try:
            first, stop = window_bounds(offset + waveform.shape[1], rate, start, end, task.path)
        except MediaError:
            if lenient:
                continue
            raise
        piece = waveform[:, first - offset : stop - offset]
        result.inputs.append(
            ModelInput("audio", start, end, audio_tensor(piece, rate, task.settings["audio"], task.path))
        )


def follow_up_tasks(first: DecodedPart) -> list[DecodeTask]:
    """The tasks for the windows the first part of a long file did not cover."""
    return [
        replace(
            first.task,
            modality=first.modality or first.task.modality,
            part=index,
            spans=tuple(first.windows[begin : begin + WINDOWS_PER_PART]),
        )
        for index, begin in enumerate(range(WINDOWS_PER_PART, len(first.windows), WINDOWS_PER_PART), start=1)
    ]
