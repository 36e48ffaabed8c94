"""Audio: PyAV waveform -> kaldi filter bank -> three chunks [3, M, L], as the official ``AudioTransform``.

Decoding uses PyAV (any container FFmpeg reads, the audio track of a video included) and scales samples the
way ``torchaudio.load`` does, so the result equals the official pipeline without torchaudio's I/O backends.
Chunks of long clips start at the first index of each third, the official code's deterministic alternative.
"""

from __future__ import annotations

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

# Integer sample formats and the divisor that maps them to [-1, 1) (torchaudio.load's normalisation).
# Planar variants ("s16p", ...) share the entry of their packed name.
_INT_FORMATS = {"u8": 128.0, "s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}
_FLOAT_FORMATS = {"flt", "dbl"}

# RIFF sizes that mean "unknown length" (written by streaming encoders); they say nothing about truncation.
_RIFF_UNKNOWN_SIZES = {0, 0xFFFFFFFF}
# Open a WAV from its header alone: no probing read-ahead.
_WAV_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0"}


def load_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Decode the first audio track of ``path``: float32 waveform [channels, samples] and its sample rate."""
    path = require_file(path)
    # A WAV header states the codec, rate and channels: FFmpeg's stream probing (it decodes ahead to find them)
    # took 55-80% of decoding a WAV, and the samples are the same without it.
    options = _WAV_OPEN_OPTIONS if _checked_wav(path) else {}
    blocks: list[np.ndarray] = []
    rates: set[int] = set()
    try:
        with av.open(str(path), options=options) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio track")
            for frame in container.decode(container.streams.audio[0]):
                blocks.append(_frame_samples(frame, path))
                rates.add(frame.sample_rate)
    except av.FFmpegError as exc:
        raise MediaError(path, f"cannot decode audio: {short_reason(exc)}") from exc
    if not blocks or sum(block.shape[1] for block in blocks) == 0:
        raise MediaError(path, "no audio samples")
    if len(rates) != 1 or len({block.shape[0] for block in blocks}) != 1:
        raise MediaError(path, "the sample rate or channel count changes inside the audio track")
    return torch.from_numpy(np.concatenate(blocks, axis=1)), rates.pop()


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
    window_samples = int(settings.sample_rate * _FRAME_LENGTH_MS * 0.001)  # kaldi's own rounding
    if wave.shape[1] < window_samples:
        seconds = waveform.shape[1] / sample_rate
        raise MediaError(source, f"audio too short ({seconds:.4f} s): it needs one {_FRAME_LENGTH_MS:g} ms frame")
    fbank = kaldi.fbank(
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
    return normalize_fbank(_three_chunks(fbank, settings.target_length).transpose(1, 2), settings)


def normalize_fbank(bank: torch.Tensor, settings: PreprocessSettings) -> torch.Tensor:
    """Log-mel chunks (``[3, M, L]``, or a batch of them) -> the model input: (x - mean) / (2 * std), the
    official normalisation with the checkpoint's constants."""
    return ((bank.float() - settings.audio_mean) / (2 * settings.audio_std)).contiguous()


def _three_chunks(fbank: torch.Tensor, length: int) -> torch.Tensor:
    """[frames, M] -> [3, length, M]: three fixed chunks of a long clip, or three copies of a tiled short one."""
    frames = fbank.shape[0]
    if frames <= length:
        tiled = fbank.repeat(length // frames + 1, 1)[:length]
        return torch.stack([tiled, tiled, tiled])
    thirds = np.array_split(np.arange(frames - length + 1), 3)
    starts = [int(third[0]) if len(third) else 0 for third in thirds]
    return torch.stack([fbank[begin : begin + length] for begin in starts])


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
