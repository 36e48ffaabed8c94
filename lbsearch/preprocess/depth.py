"""Depth: 16-bit millimetre PNG -> metres, clipped and scaled -> 3 channels -> [3, S, S] (official DepthNorm)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from lbsearch.errors import MediaError
from lbsearch.preprocess.common import StillPreprocessor, open_image

MILLIMETRES_PER_METRE = 1000.0
MIN_DEPTH_METRES = 0.01
# Single-channel modes that hold depth values; "1" (bilevel) and "P" (palette indices) do not.
_DEPTH_MODES = {"L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def depth_pixels(depth_mm: np.ndarray | torch.Tensor, max_depth: float) -> torch.Tensor:
    """Depth in millimetres, ``[H,W]`` or a batch ``[B,H,W]`` -> ``[3,H,W]`` / ``[B,3,H,W]``: metres clipped to
    [0.01, max_depth] / max_depth.

    ``max_depth`` 0 scales each map by its own maximum instead, as the official ``DepthNorm`` does.
    """
    depth = depth_mm if isinstance(depth_mm, torch.Tensor) else torch.from_numpy(depth_mm.astype(np.float32))
    metres = (depth.float() / MILLIMETRES_PER_METRE).clamp(min=MIN_DEPTH_METRES)
    if max_depth > 0:
        scaled = metres.clamp(max=max_depth) / max_depth
    else:
        scaled = metres / metres.amax(dim=(-2, -1), keepdim=True)
    return scaled.unsqueeze(-3).expand(*scaled.shape[:-2], 3, *scaled.shape[-2:]).contiguous()


@dataclass(frozen=True)
class DepthPreprocessor(StillPreprocessor):
    modality: ClassVar[str] = "depth"

    def open(self, path: Path) -> Image.Image:
        image = open_image(path)
        if image.mode not in _DEPTH_MODES:
            raise MediaError(
                path,
                f"a depth map must be single-channel (16-bit PNG in millimetres); got PIL mode {image.mode!r} "
                f"with {len(image.getbands())} channel(s)",
            )
        return image

    def pixels(self, image: Image.Image) -> torch.Tensor:
        return depth_pixels(np.asarray(image), self.settings.max_depth)

    def strip_rows(self, image: Image.Image) -> int:
        # max_depth 0 scales by the whole map's maximum: the map is converted at once.
        return super().strip_rows(image) if self.settings.max_depth > 0 else image.height
