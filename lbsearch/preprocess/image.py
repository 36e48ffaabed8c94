"""Images and thermal images: PIL -> RGB -> [3, S, S], as the official image/thermal processors.

The official processors feed ``Image.open`` straight to ``ToTensor``, which breaks on greyscale, palette or
RGBA files; converting to RGB first gives those a result and leaves RGB files (all the official inputs) as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from lbsearch.preprocess.common import StillPreprocessor

# Greyscale modes wider than 8 bits; Pillow's own convert("RGB") clips them at 255 (white above 0.4 %).
_WIDE_GREY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_UINT16_TO_UINT8 = 257.0  # maps 0..65535 onto 0..255


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: alpha dropped, palette and CMYK resolved, 16-bit grey scaled to 8 bits."""
    if image.mode in _WIDE_GREY_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / _UINT16_TO_UINT8
        image = Image.fromarray(np.round(grey).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def rgb_pixels(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """8-bit RGB, ``[H,W,3]`` (a PIL image) or a batch ``[B,H,W,3]`` -> float32 ``[3,H,W]`` / ``[B,3,H,W]`` in
    [0,1] (torchvision's ToTensor)."""
    pixels = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.movedim(-1, -3).float() / 255.0


@dataclass(frozen=True)
class ImagePreprocessor(StillPreprocessor):
    modality: ClassVar[str] = "image"

    def pixels(self, image: Image.Image) -> torch.Tensor:
        return rgb_pixels(to_rgb(image))


@dataclass(frozen=True)
class ThermalPreprocessor(ImagePreprocessor):
    """Thermal images go through exactly the image pipeline (the official code is identical)."""

    modality: ClassVar[str] = "thermal"
