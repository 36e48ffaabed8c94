"""The symmetric contrastive (InfoNCE) loss with a learnable temperature, as CLIP and LanguageBind train with."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lbsearch.errors import LbsearchError

INIT_TEMPERATURE = 0.07
# CLIP clamps the learned scale at 100 so the logits cannot blow up.
MAX_LOGIT_SCALE = math.log(100.0)


class LearnableTemperature(nn.Module):
    """``logit_scale`` (log of the inverse temperature), learned; starts at ``log(1 / 0.07)``."""

    def __init__(self, temperature: float = INIT_TEMPERATURE):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self) -> torch.Tensor:
        """The clamped log scale (the value a checkpoint stores as ``logit_scale``)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE)


def contrastive_loss(
    media: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between ``[B, D]`` media and ``[B, D]`` text embeddings (normalised here).

    ``positives`` (``[B, B]`` bool, row = media, column = text) marks every pair that matches; the default is the
    diagonal. In a small world the same description recurs within a batch, and counting those repeats as negatives
    would push apart embeddings that should coincide, so each side's target spreads evenly over its positives.
    """
    media, text = F.normalize(media, dim=-1), F.normalize(text, dim=-1)
    logits = logit_scale.exp() * media @ text.T
    if positives is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
    if positives.shape != logits.shape or not positives.any(dim=1).all() or not positives.any(dim=0).all():
        raise LbsearchError(
            f"positives must be a {tuple(logits.shape)} mask with a positive in every row and column, "
            f"got shape {tuple(positives.shape)}"
        )
    weights = positives.float()
    media_to_text = -(F.log_softmax(logits, dim=1) * weights / weights.sum(1, keepdim=True)).sum(1).mean()
    text_to_media = -(F.log_softmax(logits.T, dim=1) * weights.T / weights.sum(0)[:, None]).sum(1).mean()
    return 0.5 * (media_to_text + text_to_media)
