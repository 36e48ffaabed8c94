"""Zero-shot classification with prompt templates, following the official protocol.

Classifier: every template filled with a class name is embedded by the language tower, each embedding L2-normalised,
the class's embeddings averaged and the mean normalised again. Logits are ``100 * cos`` between L2-normalised item
embeddings and the class vectors (the official code uses a fixed 100, not the checkpoint's ``logit_scale``).
The official classifier is laid out ``[D, C]``; here it is ``[C, D]``, one row per class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lbsearch.errors import QueryError
from lbsearch.eval.metrics import CLASSIFICATION_KS, top_k_accuracy
from lbsearch.search.templates import prompts_for, templates_for

LOGIT_SCALE = 100.0

TextEncoder = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class Label:
    """One predicted class of an item: its name, index, logit (``100 * cos``) and softmax probability."""

    name: str
    index: int
    logit: float
    probability: float


def build_classifier(
    class_names: Sequence[str],
    modality: str,
    encode_text: TextEncoder,
    templates: Sequence[str] | None = None,
) -> torch.Tensor:
    """``[C, D]`` unit class vectors from the modality's official templates (or ``templates``, ``{c}`` fields)."""
    if not class_names:
        raise QueryError("zero-shot classification needs at least one class name")
    if len(set(class_names)) != len(class_names):
        raise QueryError("zero-shot class names must be distinct")
    templates = templates_for(modality) if templates is None else tuple(templates)
    if not templates or not all("{c}" in template for template in templates):
        raise QueryError("prompt templates must be non-empty and each hold a {c} field for the class name")
    rows = []
    for name in class_names:
        embeddings = torch.as_tensor(encode_text(prompts_for(name, templates))).float()
        if embeddings.ndim != 2 or embeddings.shape[0] != len(templates):
            raise QueryError(
                f"class {name!r}: the text encoder returned shape {tuple(embeddings.shape)} "
                f"for {len(templates)} prompts; expected [{len(templates)}, D]"
            )
        rows.append(F.normalize(F.normalize(embeddings, dim=-1).mean(dim=0), dim=0))
    return torch.stack(rows)


def _checked_pair(embeddings: torch.Tensor, classifier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, classifier = torch.as_tensor(embeddings).float(), torch.as_tensor(classifier).float()
    if embeddings.ndim != 2 or classifier.ndim != 2 or embeddings.shape[1] != classifier.shape[1]:
        raise QueryError(
            f"embeddings {tuple(embeddings.shape)} and classifier {tuple(classifier.shape)} must be [N, D] and [C, D]"
        )
    return embeddings, classifier


def classify(embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` logits, ``100 * cos`` of each item embedding ``[N, D]`` with each class vector ``[C, D]``."""
    embeddings, classifier = _checked_pair(embeddings, classifier)
    return LOGIT_SCALE * F.normalize(embeddings, dim=-1) @ classifier.T


def top_k_labels(logits: torch.Tensor, class_names: Sequence[str], k: int = 5) -> list[list[Label]]:
    """The ``k`` best classes of each item (best first), from ``[N, C]`` logits."""
    logits = torch.as_tensor(logits).float()
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise QueryError(f"logits {tuple(logits.shape)} do not match {len(class_names)} class names")
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}")
    probabilities = logits.softmax(dim=1)
    best_logits, best_indices = logits.topk(min(k, len(class_names)), dim=1)
    return [
        [
            Label(class_names[index], index, float(logit), float(probabilities[row, index]))
            for logit, index in zip(row_logits.tolist(), row_indices.tolist(), strict=True)
        ]
        for row, (row_logits, row_indices) in enumerate(zip(best_logits, best_indices, strict=True))
    ]


def accuracy(
    embeddings: torch.Tensor,
    classifier: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = CLASSIFICATION_KS,
) -> dict[int, float]:
    """Top-k accuracy (fractions in [0, 1], ties pessimistic) of classifying ``embeddings`` whose true classes are
    ``labels`` (class indices)."""
    logits = classify(embeddings, classifier).detach().cpu().numpy()
    return top_k_accuracy(logits, torch.as_tensor(labels).cpu().numpy(), ks)
