"""`Encoder`: one LanguageBind checkpoint ready for inference (its modality tower + the language tower)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lbsearch.errors import LbsearchError
from lbsearch.models import autotune
from lbsearch.models.config import ModelConfig
from lbsearch.models.precision import AUTO, FP32, apply_to_tower
from lbsearch.models.tokenizer import tokenize
from lbsearch.models.towers import TextTower, VisionTower

if TYPE_CHECKING:
    from lbsearch.preprocess import Preprocessor


class Encoder:
    """Embeds media of one modality and text into the shared space.

    Embeddings come out L2-normalised, float32, on the CPU. The temperature ``exp(logit_scale)`` is kept apart
    (``temperature``) and never folded into vectors, so stored vectors stay plain cosines. A tower may be left
    out (``None``) when only the other one is needed, e.g. the language tower for text queries.

    ``precision`` (`lbsearch.models.precision`) is the one the modality tower runs at; ``auto`` is settled by the
    first `encode` call, whose batch calibrates the choice.
    """

    def __init__(
        self,
        config: ModelConfig,
        vision: VisionTower | None,
        text: TextTower | None,
        logit_scale: float,
        source: str = "",
        weights_hash: str = "",
        text_hash: str = "",
        precision: str = FP32,
    ):
        self.config = config
        self.modality = config.modality
        self.vision = vision.eval() if vision is not None else None
        self.text = text.eval() if text is not None else None
        self.logit_scale = float(logit_scale)
        self.source = source
        self.weights_hash = weights_hash
        self.text_hash = text_hash
        self.precision = precision
        # Counted at fp32: int8 layers hide their weights from `parameters()`.
        self.vision_parameters = autotune.parameter_count(vision) if vision is not None else 0

    @cached_property
    def preprocessor(self) -> Preprocessor:
        """The official processor of this modality. Made on first use: the media readers it brings (torchvision,
        torchaudio, PyAV) cost seconds to import, which a text search never needs."""
        from lbsearch.preprocess import PreprocessSettings, preprocessor_for

        return preprocessor_for(self.modality, PreprocessSettings.from_vision_config(self.config.vision))

    @property
    def dim(self) -> int:
        return self.config.projection_dim

    @property
    def temperature(self) -> float:
        return float(torch.tensor(self.logit_scale).exp())

    @property
    def towers(self) -> list[torch.nn.Module]:
        return [tower for tower in (self.vision, self.text) if tower is not None]

    @property
    def device(self) -> torch.device:
        return next(self.towers[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.towers[0].parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Encoder:
        for tower in self.towers:
            tower.to(device=device, dtype=dtype)
        return self

    def preprocess(self, path: str | Path, start: float | None = None, end: float | None = None) -> torch.Tensor:
        """One file (optionally a time window of it) -> the model input the official processor gives."""
        return self.preprocessor(path, start=start, end=end)

    def encode(self, batch: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``[B, ...]`` preprocessed inputs -> ``[B, D]`` L2-normalised embeddings."""
        if self.vision is None:
            raise LbsearchError(f"{self.source}: loaded without its {self.modality} tower")
        if self.precision == AUTO:
            self.precision = autotune.resolve(self.config, self.vision, batch)
            apply_to_tower(self.vision, self.precision)
        return self._run(self.vision, batch, batch_size)

    def encode_text(self, texts: str | Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Texts -> ``[N, D]`` L2-normalised embeddings through this checkpoint's language tower."""
        if self.text is None:
            raise LbsearchError(f"{self.source}: loaded without its language tower")
        return self._run(self.text, tokenize(texts), batch_size)

    def _run(self, tower: torch.nn.Module, inputs: torch.Tensor, batch_size: int | None) -> torch.Tensor:
        if inputs.shape[0] == 0:
            return torch.empty(0, self.dim)
        step = batch_size or inputs.shape[0]
        device, dtype = self.device, next(tower.parameters()).dtype
        outputs = []
        with torch.inference_mode():
            for chunk in inputs.split(step):
                chunk = chunk.to(device, dtype=dtype) if chunk.is_floating_point() else chunk.to(device)
                outputs.append(F.normalize(tower(chunk).float(), dim=-1).cpu())
        return torch.cat(outputs)
