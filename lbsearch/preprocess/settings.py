"""What the preprocessors need to know: sizes, frame count, mel grid and audio/depth constants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a runtime import would tie this package to the model layer (and risk an import cycle)
    from lbsearch.models.config import VisionConfig


@dataclass(frozen=True)
class PreprocessSettings:
    """Preprocessing parameters, as carried by the ``vision_config`` of a LanguageBind checkpoint.

    ``image_size`` is (height, width) of the model input; video, image, thermal and depth inputs are square
    crops of side ``image_size[0]``. Audio uses ``num_mel_bins`` x ``target_length`` instead.
    """

    image_size: tuple[int, int]
    num_frames: int
    num_mel_bins: int
    target_length: int
    sample_rate: int
    audio_mean: float
    audio_std: float
    max_depth: float

    @property
    def crop_size(self) -> int:
        """Side of the square crop for video frames, images, thermal and depth maps."""
        return self.image_size[0]

    @classmethod
    def released(cls) -> PreprocessSettings:
        """The settings of the released LanguageBind checkpoints (``LanguageBind_Audio_FT`` for audio)."""
        return cls(
            image_size=(224, 224),
            num_frames=8,
            num_mel_bins=112,
            target_length=1036,
            sample_rate=16000,
            audio_mean=-4.2677393,
            audio_std=4.5689974,
            max_depth=10.0,
        )

    @classmethod
    def from_vision_config(cls, vc: VisionConfig) -> PreprocessSettings:
        """The settings a checkpoint's vision tower was trained with."""
        return cls(
            image_size=(int(vc.image_size[0]), int(vc.image_size[1])),
            num_frames=int(vc.num_frames),
            num_mel_bins=int(vc.num_mel_bins),
            target_length=int(vc.target_length),
            sample_rate=int(vc.audio_sample_rate),
            audio_mean=float(vc.audio_mean),
            audio_std=float(vc.audio_std),
            max_depth=float(vc.max_depth),
        )
