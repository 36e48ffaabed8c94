"""What a search answers: ranked `Hit`s, each with how every searched modality matched it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Match:
    """How one modality matched a hit: its best segment there and the scores."""

    modality: str
    cosine: float
    calibrated: float
    contribution: float
    path: str
    start: float | None
    end: float | None
    vector_id: int


@dataclass(frozen=True)
class Hit:
    """One result: the item and file it comes from, its best moment, its score and the per-modality parts."""

    rank: int
    item_id: int | None
    item_key: str | None
    file_id: int
    path: str
    modality: str  # the modality of the best match
    start: float | None
    end: float | None
    score: float  # the fused score (for one modality: the cosine, or for "rrf" the fused rank score)
    calibrated: float  # z-score against the query's background (weighted over modalities for joint hits)
    parts: dict[str, float]  # modality -> contribution to ``score``
    matches: dict[str, Match]
    # Whether every index search behind the hit compared the query with all stored vectors; False when an
    # approximate index (tuned to recall@10 >= its target) found the candidates.
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
