"""Audio: PyAV waveform -> kaldi filter bank -> three chunks [3, M, L], as the official ``AudioTransform``.

Decoding uses PyAV (any container FFmpeg reads, the audio track of a video included) and scales samples the
way ``torchaudio.load`` does, so the result equals the official pipeline without torchaudio's I/O backends.
Chunks of long clips start at the first index of each third, the official code's deterministic alternative.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import av
import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as taf

from lbsearch.errors import ConfigError, MediaError
from lbsearch.preprocess.common import Preprocessor, require_file, short_reason, window_bounds
from lbsearch.preprocess.settings import PreprocessSettings

_FRAME_LENGTH_MS = 25.0
_FRAME_SHIFT_MS = 10.0

# torchaudio.functional.resample's defaults, which fix how far its filter reaches.
_LOWPASS_FILTER_WIDTH = 6
_ROLLOFF = 0.99

# Integer sample formats and the divisor that maps them to [-1, 1) (torchaudio.load's normalisation).
# Planar variants ("s16p", ...) share the entry of their packed name.
_INT_FORMATS = {"u8": 128.0, "s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}
_FLOAT_FORMATS = {"flt", "dbl"}

# RIFF sizes that mean "unknown length" (written by streaming encoders); they say nothing about truncation.
_RIFF_UNKNOWN_SIZES = {0, 0xFFFFFFFF}
# Open a WAV from its header alone: no probing read-ahead; and read it in packets of 256 KiB, not FFmpeg's 4 KiB:
# a 3-hour WAV was 170,000 frames of 1,024 samples, and the work per frame took most of the time (109 s, vs 5 s).
_WAV_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0", "max_size": str(1 << 18)}
# Decoding after a seek starts this long before the first sample wanted (a margin for the seek's own rounding).
_SEEK_PREROLL_SECONDS = 1.0
# Codecs whose frames decode alone: after a seek they give the samples a decoding from the start gives.
_EXACT_SEEK_CODEC_PREFIXES = ("pcm_", "flac")


@dataclass(frozen=True)
class AudioTrack:
    """What one streaming pass over the first audio track of a file found: enough to plan every read of it."""

    sample_rate: int
    channels: int
    samples: int
    mean: float  # of every sample of every channel

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate


def load_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Decode the first audio track of ``path``: float32 waveform [channels, samples] and its sample rate."""
    return read_audio(path)


def read_audio(path: str | Path, start: float | None = None, end: float | None = None) -> tuple[torch.Tensor, int]:
    """The samples of [start, end) seconds of the first audio track of ``path`` (None: its beginning, its end):
    float32 [channels, samples] and the sample rate, cut as `cut_window` cuts the whole waveform.

    Memory follows the span, not the file. Past the beginning the decoder seeks (to ``_SEEK_PREROLL_SECONDS``
    before ``start``) where that gives the very samples a decoding from the beginning gives (PCM, FLAC): time
    follows the span too. A lossy track (AAC, MP3) is decoded from its beginning up to the span: after a seek its
    decoder gives samples that differ in the last bits (measured on AAC: 3e-5 in most samples), and the vectors
    then differ from those of the whole file's waveform.
    """
    path = require_file(path)
    blocks: list[np.ndarray] = []
    rate = 0
    span: tuple[int, int] | None = None
    for index, block, rate in _decoded_blocks(path, start or 0.0):
        if span is None:  # the rate is the decoder's, known from the first frame on
            span = window_bounds(sys.maxsize, rate, start, end, path)
        first, stop = span
        if index >= stop:
            break
        begin, finish = max(first - index, 0), min(stop - index, block.shape[1])
        if finish > begin:
            blocks.append(block[:, begin:finish])
    if not blocks:
        where = "" if start is None else f" in [{start}, {end}) s"
        raise MediaError(path, f"no audio samples{where}")
    return torch.from_numpy(np.concatenate(blocks, axis=1)), rate


def scan_audio(path: str | Path, keep: int) -> tuple[AudioTrack, torch.Tensor | None]:
    """Rate, channels, length and mean of the first audio track of ``path`` from one decoding pass, and the
    waveform too when it holds at most ``keep`` values (samples x channels). Past that the pass holds one frame at
    a time: what a header claims (a WAV may say it lasts hours) is never allocated."""
    path = require_file(path)
    blocks: list[np.ndarray] | None = []
    samples, total, channels, rate = 0, 0.0, 0, 0
    for _, block, frame_rate in _decoded_blocks(path):
        rate, channels = frame_rate, block.shape[0]
        samples += block.shape[1]
        total += float(block.sum(dtype=np.float64))
        if blocks is not None:
            blocks.append(block)
            if samples * channels > keep:
                blocks = None
    if samples == 0:
        raise MediaError(path, "no audio samples")
    track = AudioTrack(rate, channels, samples, total / (samples * channels))
    return track, None if blocks is None else torch.from_numpy(np.concatenate(blocks, axis=1))


def _decoded_blocks(path: Path, seconds: float = 0.0) -> Iterator[tuple[int, np.ndarray, int]]:
    """(index of its first sample, float32 samples [channels, n], sample rate) of each decoded frame of the
    first audio track, from the frame holding the sample at ``seconds`` or an earlier one (`read_audio` says
    when it seeks)."""
    # A WAV header states the codec, rate and channels: FFmpeg's stream probing (it decodes ahead to find them)
    # took most of the time of decoding a WAV, and the samples are the same without it.
    options = _WAV_OPEN_OPTIONS if _checked_wav(path) else {}
    layout: tuple[int, int] | None = None  # (rate, channels) of the first frame: every frame must match it
    try:
        with av.open(str(path), options=options) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio track")
            stream = container.streams.audio[0]
            exact = stream.codec_context.name.startswith(_EXACT_SEEK_CODEC_PREFIXES)
            index = _seek(container, stream, seconds) if exact else 0
            for frame in container.decode(stream):
                block = _frame_samples(frame, path)
                if layout is None:
                    layout = (frame.sample_rate, block.shape[0])
                    if index is None:  # after a seek the frame's own timestamp says where it is
                        index = _sample_index(frame, stream, path)
                elif layout != (frame.sample_rate, block.shape[0]):
                    raise MediaError(path, "the sample rate or channel count changes inside the audio track")
                yield index, block, frame.sample_rate
                index += block.shape[1]
    except av.FFmpegError as exc:
        raise MediaError(path, f"cannot decode audio: {short_reason(exc)}") from exc


def _seek(container: av.container.InputContainer, stream: av.AudioStream, seconds: float) -> int | None:
    """Move the decoder to a frame a little before ``seconds``: None when it moved (the first frame's timestamp
    then gives its index), 0 when decoding starts at the beginning."""
    seconds -= _SEEK_PREROLL_SECONDS
    if seconds <= 0 or stream.time_base is None or stream.start_time is None:
        return 0
    container.seek(stream.start_time + int(seconds / stream.time_base), stream=stream, backward=True)
    return None


def _sample_index(frame: av.AudioFrame, stream: av.AudioStream, path: Path) -> int:
    """The index of a frame's first sample counted from the track's first sample, by its timestamp."""
    if frame.pts is None:
        raise MediaError(path, "cannot seek in the audio track: its frames have no timestamps")
    return round((frame.pts - stream.start_time) * stream.time_base * frame.sample_rate)


def _frame_samples(frame: av.AudioFrame, path: Path) -> np.ndarray:
    """One decoded frame as float32 [channels, samples]."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed formats interleave the channels in a single row
        data = data.reshape(-1, len(frame.layout.channels)).T
    name = frame.format.name.removesuffix("p")
    if name in _FLOAT_FORMATS:
        return data.astype(np.float32)
    if name not in _INT_FORMATS:
        raise MediaError(path, f"unsupported sample format {frame.format.name!r}")
    samples = data.astype(np.float32)
    if name == "u8":
        samples -= 128.0
    return samples / np.float32(_INT_FORMATS[name])


def _checked_wav(path: Path) -> bool:
    """Whether ``path`` is a RIFF WAVE file; one whose header promises more bytes than the file holds was cut
    short (FFmpeg reads it silently) and is rejected."""
    with path.open("rb") as handle:
        header = handle.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return False
    declared = int.from_bytes(header[4:8], "little")
    actual = path.stat().st_size
    if declared not in _RIFF_UNKNOWN_SIZES and declared + 8 > actual:
        raise MediaError(path, f"truncated WAV: the header declares {declared + 8} bytes, the file has {actual}")
    return True


def cut_window(
    waveform: torch.Tensor,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
    source: str | Path = "audio",
) -> torch.Tensor:
    """The samples of [start, end) seconds (sample i is at i / sample_rate)."""
    first, stop = window_bounds(waveform.shape[-1], sample_rate, start, end, source)
    return waveform[..., first:stop]


def resample_waveform(waveform: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """``torchaudio.functional.resample`` with its defaults (what the official code uses), if rates differ."""
    if sample_rate == target_rate:
        return waveform
    return taf.resample(waveform, orig_freq=sample_rate, new_freq=target_rate)


def audio_tensor(
    waveform: torch.Tensor, sample_rate: int, settings: PreprocessSettings, source: str | Path = "audio"
) -> torch.Tensor:
    """Float waveform [channels, samples] -> normalised model input [3, num_mel_bins, target_length]."""
    if waveform.dim() != 2 or waveform.shape[1] == 0:
        raise MediaError(source, f"expected a non-empty [channels, samples] waveform, got {tuple(waveform.shape)}")
    wave = resample_waveform(waveform.float(), sample_rate, settings.sample_rate)
    wave = wave - wave.mean()  # over every channel, though the filter bank reads channel 0 only
    frame_samples, _ = _frame_geometry(settings)
    if wave.shape[1] < frame_samples:
        seconds = waveform.shape[1] / sample_rate
        raise MediaError(source, f"audio too short ({seconds:.4f} s): it needs one {_FRAME_LENGTH_MS:g} ms frame")
    frames, length = _frame_count(wave.shape[1], settings), settings.target_length
    if frames <= length:
        fbank = _fbank(wave, settings)
        tiled = fbank.repeat(length // frames + 1, 1)[:length]
        return _normalised([tiled, tiled, tiled], settings)
    # Each frame of the filter bank is computed from its own samples alone: only the chunks' frames are computed
    # (a ten-minute window's whole filter bank took several hundred MB).
    spans = [_chunk_samples(begin, settings) for begin in _chunk_starts(frames, length)]
    return _normalised([_fbank(wave[:, first:stop], settings) for first, stop in spans], settings)


def track_tensor(path: str | Path, track: AudioTrack, settings: PreprocessSettings) -> torch.Tensor:
    """``audio_tensor`` of the whole track of ``path`` (as `scan_audio` measured it), reading only the samples of
    its three chunks and the resampling filter's reach around them: a long file is never held in memory.

    The whole-file path subtracts the resampled wave's mean before the filter bank; this one subtracts the mean
    of the decoded samples. The filter bank removes each frame's own mean, so the two agree up to rounding.
    """
    path = require_file(path)
    resampled = _resampled_length(track.samples, track.sample_rate, settings.sample_rate)
    frames, length = _frame_count(resampled, settings), settings.target_length
    if frames <= length:  # short: the frames are tiled, and the file is small
        return audio_tensor(*load_audio(path), settings, path)
    chunks = []
    for begin in _chunk_starts(frames, length):
        wave = _resampled_span(path, track, settings.sample_rate, *_chunk_samples(begin, settings))
        chunks.append(_fbank(wave - np.float32(track.mean), settings))
    return _normalised(chunks, settings)


def _frame_count(samples: int, settings: PreprocessSettings) -> int:
    """Filter-bank frames of ``samples`` at the model's rate (kaldi's snip_edges: whole frames only)."""
    frame_samples, frame_shift = _frame_geometry(settings)
    return 1 + (samples - frame_samples) // frame_shift if samples >= frame_samples else 0


def _chunk_samples(begin: int, settings: PreprocessSettings) -> tuple[int, int]:
    """Samples [first, stop) at the model's rate of the chunk of ``target_length`` frames from frame ``begin``."""
    frame_samples, frame_shift = _frame_geometry(settings)
    first = begin * frame_shift
    return first, first + (settings.target_length - 1) * frame_shift + frame_samples


def _frame_geometry(settings: PreprocessSettings) -> tuple[int, int]:
    """Samples per filter-bank frame and between frames, with kaldi's own rounding."""
    return int(settings.sample_rate * _FRAME_LENGTH_MS * 0.001), int(settings.sample_rate * _FRAME_SHIFT_MS * 0.001)


def _fbank(wave: torch.Tensor, settings: PreprocessSettings) -> torch.Tensor:
    """The official kaldi filter bank of channel 0: [frames, num_mel_bins]."""
    return kaldi.fbank(
        wave,
        htk_compat=True,
        sample_frequency=settings.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=settings.num_mel_bins,
        dither=0.0,
        frame_length=_FRAME_LENGTH_MS,
        frame_shift=_FRAME_SHIFT_MS,
    )


def normalize_fbank(bank: torch.Tensor, settings: PreprocessSettings) -> torch.Tensor:
    """Log-mel chunks (``[3, M, L]``, or a batch of them) -> the model input: (x - mean) / (2 * std), the
    official normalisation with the checkpoint's constants."""
    return ((bank.float() - settings.audio_mean) / (2 * settings.audio_std)).contiguous()


def _chunk_starts(frames: int, length: int) -> list[int]:
    """First frames of the three chunks of a clip longer than one chunk: the first index of each third."""
    thirds = np.array_split(np.arange(frames - length + 1), 3)
    return [int(third[0]) if len(third) else 0 for third in thirds]


def _normalised(chunks: list[torch.Tensor], settings: PreprocessSettings) -> torch.Tensor:
    """Three [length, M] chunks -> the model input [3, M, length]."""
    return normalize_fbank(torch.stack(chunks).transpose(1, 2), settings)


def _resampled_length(samples: int, rate: int, target: int) -> int:
    """How many samples ``resample_waveform`` makes of ``samples`` (its own float arithmetic)."""
    if rate == target:
        return samples
    divisor = math.gcd(rate, target)
    return int(torch.ceil(torch.as_tensor(target // divisor * samples / (rate // divisor))))


def _resampled_span(path: Path, track: AudioTrack, target: int, first: int, stop: int) -> torch.Tensor:
    """Samples [first, stop) of the track resampled to ``target`` Hz, equal to those of the whole resampled track.

    ``resample_waveform`` makes ``new`` samples from each block of ``old`` input samples (the rates over their
    gcd), from the inputs within the filter's reach of the block; the span is resampled from whole blocks
    reaching a block past that on each side.
    """
    rate = track.sample_rate
    if rate == target:
        return read_audio(path, first / rate, stop / rate)[0]
    divisor = math.gcd(rate, target)
    old, new = rate // divisor, target // divisor
    reach = math.ceil(_LOWPASS_FILTER_WIDTH * old / (min(old, new) * _ROLLOFF))  # torchaudio's kernel width
    margin = math.ceil(reach / old) + 1
    first_block = max(first // new - margin, 0)
    last_block = -(-stop // new) + margin
    waveform, _ = read_audio(path, first_block * old / rate, min(last_block * old, track.samples) / rate)
    resampled = resample_waveform(waveform, rate, target)
    offset = first_block * new
    return resampled[:, first - offset : stop - offset]


@dataclass(frozen=True)
class AudioPreprocessor(Preprocessor):
    modality: ClassVar[str] = "audio"

    def __post_init__(self) -> None:
        s = self.settings
        if s.num_mel_bins <= 0 or s.target_length <= 0 or s.sample_rate <= 0 or s.audio_std == 0:
            raise ConfigError(
                f"audio preprocessing needs num_mel_bins, target_length, sample_rate > 0 and audio_std != 0; got {s}"
            )

    def __call__(self, path: str | Path, start: float | None = None, end: float | None = None) -> torch.Tensor:
        waveform, sample_rate = load_audio(path)
        waveform = cut_window(waveform, sample_rate, start, end, source=path)
        return audio_tensor(waveform, sample_rate, self.settings, source=path)
