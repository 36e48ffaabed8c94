"""Decoding and per-modality preprocessing: media file -> the tensor a LanguageBind tower takes.

Each modality computes what the official LanguageBind processors compute (``../shared/golden`` proves it),
with the official random choices held fixed: no random video flip, fixed audio chunk starts.

    pre = preprocessor_for("audio")          # released settings; or pass a VisionConfig / PreprocessSettings
    x = pre("clip.mp4", start=10.0, end=20.0)  # video [3,T,S,S], audio [3,M,L], others [3,S,S]

Decoders: decord for video frames (what the official code uses), PyAV for audio and probing, PIL for images.
decord 0.6.0 and PyAV 18 each bundle their own FFmpeg libraries; importing them in either order works here
(checked by the tests, which use both in one process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbsearch import modalities
from lbsearch.preprocess.audio import (
    AudioPreprocessor,
    AudioTrack,
    audio_tensor,
    cut_window,
    load_audio,
    normalize_fbank,
    read_audio,
    resample_waveform,
    scan_audio,
    track_tensor,
)
from lbsearch.preprocess.common import CLIP_MEAN, CLIP_STD, Preprocessor, still_tensor
from lbsearch.preprocess.depth import DepthPreprocessor, depth_pixels
from lbsearch.preprocess.image import ImagePreprocessor, ThermalPreprocessor, rgb_pixels
from lbsearch.preprocess.probe import MediaInfo, probe
from lbsearch.preprocess.settings import PreprocessSettings
from lbsearch.preprocess.video import VideoFrames, VideoPreprocessor, sample_indices, video_tensor

if TYPE_CHECKING:
    from lbsearch.models.config import VisionConfig

PREPROCESSORS: dict[str, type[Preprocessor]] = {
    cls.modality: cls
    for cls in (VideoPreprocessor, AudioPreprocessor, DepthPreprocessor, ThermalPreprocessor, ImagePreprocessor)
}


def preprocessor_for(modality: str, config: VisionConfig | PreprocessSettings | None = None) -> Preprocessor:
    """The preprocessor of ``modality`` with a checkpoint's settings (``None``: the released checkpoints')."""
    modalities.lookup(modality)
    if config is None:
        settings = PreprocessSettings.released()
    elif isinstance(config, PreprocessSettings):
        settings = config
    else:
        settings = PreprocessSettings.from_vision_config(config)
    return PREPROCESSORS[modality](settings)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PREPROCESSORS",
    "AudioPreprocessor",
    "AudioTrack",
    "DepthPreprocessor",
    "ImagePreprocessor",
    "MediaInfo",
    "PreprocessSettings",
    "Preprocessor",
    "ThermalPreprocessor",
    "VideoFrames",
    "VideoPreprocessor",
    "audio_tensor",
    "cut_window",
    "depth_pixels",
    "load_audio",
    "normalize_fbank",
    "preprocessor_for",
    "probe",
    "read_audio",
    "resample_waveform",
    "rgb_pixels",
    "sample_indices",
    "scan_audio",
    "still_tensor",
    "track_tensor",
    "video_tensor",
]
