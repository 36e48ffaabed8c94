"""The search engine: text->X, emergent X->Y and joint retrieval over a library's stored vectors.

A `SearchRequest` holds one or more weighted parts (text, a media file on disk, or something already in the
library). Each part is embedded into the shared space, the parts are summed (`fusion.combine_query_parts`) and
every target modality's index is searched. Hits are grouped (per file by default, per item when several modalities
are searched jointly, or not at all), filtered on file metadata, scored, and calibrated: each hit's cosine becomes a
z-score against the query's own background (its cosines with a random sample of the target index), which means
the same thing for every modality pair, so ``min_score`` is one cut-off for all.

Joint retrieval fuses the per-modality similarities of each item (`fusion.fuse`: weighted sum, temperature-
weighted sum as the official code does, or reciprocal-rank fusion); an item found through one modality gets its
exact similarity for the others from its stored vectors, never a silent zero.

The engine is built from the three things a search reads: the database, the index store and the model set.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbsearch.errors import CalibrationError, ConfigError, MediaError, QueryError
from lbsearch.modalities import IMAGE_MODALITIES, MODALITIES, of_file
from lbsearch.modelset import ModelSet
from lbsearch.search.calibration import Calibrator
from lbsearch.search.fusion import combine_query_parts, fuse
from lbsearch.search.request import (
    FileQuery,
    Filters,
    QueryPart,
    SearchRequest,
    StoredQuery,
    TextQuery,
    check_range,
)
from lbsearch.search.results import Hit, Match
from lbsearch.storage.database import Database
from lbsearch.storage.records import VectorInfo
from lbsearch.storage.store import IndexStore

BACKGROUND_SAMPLE = 2048
# A search fetches this many candidates per wanted hit, and more while filters leave too few.
OVERFETCH = 4


class SearchEngine:
    def __init__(self, db: Database, store: IndexStore, models: ModelSet):
        self.db = db
        self.store = store
        self.models = models

    def search(self, request: SearchRequest) -> list[Hit]:
        if not self.models.sources:
            raise ConfigError(
                "this library has no model set: index something first (`lbsearch index PATH --models NAME`)"
            )
        indexed = set(self.db.vector_groups())
        if not indexed:
            raise QueryError("the library is empty: index some media first with `lbsearch index PATH`")
        targets = list(request.modalities or self._default_targets(indexed))
        model_ids = self._require_indexed(targets, indexed)
        group = request.group or ("item" if len(targets) > 1 else "file")
        filters, weights = request.filters, dict(request.weights or {})

        wanted = request.k + request.offset
        per_modality: dict[str, dict[Any, tuple[float, VectorInfo]]] = {}
        calibrators: dict[str, Calibrator] = {}
        queries: dict[str, np.ndarray] = {}
        searched_exactly = True
        for modality in targets:
            query = self.query_vector(request.parts, modality)
            queries[modality] = query
            found, exact = self._search_one(model_ids[modality], modality, query, wanted, group, filters)
            per_modality[modality] = found
            searched_exactly &= exact
            calibrators[modality] = self._calibrator(model_ids[modality], modality, query, request.kind)
        if len(targets) > 1 and group != "segment":
            self._fill_missing(model_ids, per_modality, queries, filters)

        scores = {m: {key: cosine for key, (cosine, _) in found.items()} for m, found in per_modality.items()}
        if not any(scores.values()):
            return []
        logit_scales = (
            {m: self.models.encoder(m, text_only=True).logit_scale for m in targets}
            if request.fuse == "temperature"
            else None
        )
        fused = fuse(scores, request.fuse, weights or None, logit_scales)
        total_weight = sum(abs(weights.get(m, 1.0)) for m in targets) or 1.0
        hits: list[Hit] = []
        for fused_hit in fused:
            matches = {}
            for modality, (cosine, info) in (
                (m, per_modality[m][fused_hit.item_id]) for m in targets if fused_hit.item_id in per_modality[m]
            ):
                matches[modality] = Match(
                    modality,
                    cosine,
                    float(calibrators[modality].z_score(cosine)),
                    fused_hit.contributions[modality],
                    info.path,
                    info.start,
                    info.end,
                    info.vector_id,
                )
            # Signed like the fused score: an item that matches a negatively weighted modality well scores lower.
            calibrated = sum(weights.get(m, 1.0) * match.calibrated for m, match in matches.items())
            calibrated /= total_weight
            if request.min_score is not None and calibrated < request.min_score:
                continue
            best = max(matches.values(), key=lambda match: match.contribution)
            info = per_modality[best.modality][fused_hit.item_id][1]
            hits.append(
                Hit(
                    len(hits) + 1,
                    info.item_id,
                    info.item_key,
                    info.file_id,
                    info.path,
                    best.modality,
                    info.start,
                    info.end,
                    fused_hit.score,
                    calibrated,
                    dict(fused_hit.contributions),
                    matches,
                    searched_exactly,
                )
            )
        return hits[request.offset : wanted]

    def classify(
        self, class_names: Sequence[str], modality: str, file_ids: Sequence[int] | None = None, k: int = 1
    ) -> dict[int, list[tuple[str, float]]]:
        """Zero-shot labels of indexed files with the official prompt templates of ``modality``."""
        from lbsearch.search.zeroshot import build_classifier, top_k_labels
        from lbsearch.search.zeroshot import classify as zero_shot

        (model_id,) = self._require_indexed([modality], set(self.db.vector_groups())).values()
        encoder = self.models.encoder(modality, text_only=True)
        classifier = build_classifier(list(class_names), modality, lambda texts: encoder.encode_text(texts))
        vectors = self.db.whole_file_vectors(model_id, modality, file_ids)
        if not vectors:
            return {}
        ids = list(vectors)
        logits = zero_shot(torch.from_numpy(np.stack([vectors[i] for i in ids])), classifier)
        labels = top_k_labels(logits, list(class_names), k=min(k, len(class_names)))
        return {
            file_id: [(label.name, label.probability) for label in row]
            for file_id, row in zip(ids, labels, strict=True)
        }

    # ------------------------------------------------------------------------------------ the query

    def query_vector(self, parts: Sequence[tuple[QueryPart, float]], target: str) -> np.ndarray:
        """The query's direction in ``target``'s space: its parts embedded and summed with their weights."""
        embedded = [(self._embed_part(part, target), weight) for part, weight in parts]
        return combine_query_parts(embedded).astype(np.float32)

    def _embed_part(self, part: QueryPart, target: str) -> np.ndarray:
        if isinstance(part, TextQuery):
            return self.models.encoder(target, text_only=True).encode_text([part.text])[0].numpy()
        if isinstance(part, FileQuery):
            path = Path(part.path).expanduser()
            if not path.is_file():
                raise MediaError(path, "no such file")
            modality = _file_modality(path, part)
            encoder = self.models.encoder(modality)
            tensor = encoder.preprocess(path, start=part.start, end=part.end)
            return encoder.encode(tensor[None])[0].numpy()
        return self._stored_vector(part)

    def _stored_vector(self, part: StoredQuery) -> np.ndarray:
        record = (
            self.db.file(part.file)
            if isinstance(part.file, int)
            else self.db.file_by_path(str(Path(part.file).expanduser().resolve()))
        )
        if record is None:
            raise QueryError(f"{part.file}: not in this library")
        modality = part.modality or record.modality
        check_range(record.path, modality, part.start, part.end)
        found = self.db.file_vectors(record.id, self.models.model_id(modality), modality)
        if not found:
            raise QueryError(f"{record.path}: has no {modality} vector in this library")
        if part.start is None and part.end is None:
            whole = [v for v in found if v.start is None]
            return (whole or found)[0].embedding
        start = part.start or 0.0
        end = part.end if part.end is not None else math.inf

        def overlap(v) -> float:
            v_start, v_end = (v.start or 0.0), (v.end if v.end is not None else math.inf)
            return min(end, v_end) - max(start, v_start) - (1e-9 if v.start is None else 0.0)

        return max(found, key=overlap).embedding

    # ------------------------------------------------------------------------------- the indexes

    def _require_indexed(self, targets: Sequence[str], indexed: set[tuple[int, str]]) -> dict[str, int]:
        """The model id of each target. Searching a modality with no vectors would only find nothing (and write an
        empty index file): say so instead."""
        model_ids = {modality: self.models.model_id(modality) for modality in targets}
        for modality, model_id in model_ids.items():
            if (model_id, modality) not in indexed:
                have = sorted({m for _, m in indexed})
                raise QueryError(
                    f"nothing is indexed as {modality} with this library's {modality} model "
                    f"(indexed: {', '.join(have)}); index some {modality} first with `lbsearch index PATH`"
                )
        return model_ids

    def _default_targets(self, indexed: set[tuple[int, str]]) -> list[str]:
        indexed_modalities = {modality for _, modality in indexed}
        sources = self.models.sources
        return [m for m in MODALITIES if m in sources and m in indexed_modalities] or list(sources)

    def _search_one(
        self, model_id: int, modality: str, query: np.ndarray, wanted: int, group: str, filters: Filters
    ) -> tuple[dict[Any, tuple[float, VectorInfo]], bool]:
        """Best cosine (and its vector) per group key, for at least ``wanted`` groups passing the filters, and
        whether the index searched exactly."""
        index = self.store.index(model_id, modality)
        if index.ntotal == 0:
            return {}, True
        fetch = min(index.ntotal, max(32, OVERFETCH * wanted))
        while True:
            scores, ids, exact = index.search_with_exactness(query[None], fetch)
            valid = ids[0] >= 0
            infos = self.db.describe_vectors(ids[0][valid].tolist())
            allowed = self._allowed_files({i.file_id for i in infos.values()}, filters)
            best: dict[Any, tuple[float, VectorInfo]] = {}
            for score, vector_id in zip(scores[0][valid], ids[0][valid], strict=True):
                info = infos.get(int(vector_id))
                if info is None or not _passes(info, allowed, filters):
                    continue
                key = _group_key(info, group)
                if key not in best:
                    best[key] = (float(score), info)
            if len(best) >= wanted or fetch >= index.ntotal:
                return best, bool(exact[0])
            fetch = min(index.ntotal, fetch * 4)

    def _fill_missing(
        self, model_ids: dict[str, int], found: dict[str, dict], queries: dict[str, np.ndarray], filters: Filters
    ) -> None:
        """Give every candidate its exact similarity in each searched modality where it has a vector (from a file
        that passes the filters, as a search hit must)."""
        keys = {key for per in found.values() for key in per}
        for modality, per in found.items():
            missing = [key for key in keys if key not in per]
            if not missing:
                continue
            vectors = self.db.group_vectors(missing, model_ids[modality], modality)
            allowed = self._allowed_files({info.file_id for c in vectors.values() for info, _ in c}, filters)
            for key, candidates in vectors.items():
                kept = [(info, embedding) for info, embedding in candidates if _passes(info, allowed, filters)]
                if kept:
                    info, embedding = max(kept, key=lambda c: float(c[1] @ queries[modality]))
                    per[key] = (float(embedding @ queries[modality]), info)

    def _allowed_files(self, file_ids: set[int], filters: Filters) -> set[int] | None:
        """The files that pass the filters' database conditions; None when there are none (every file passes)."""
        conditions = filters.to_db()
        return self.db.filter_files(file_ids, conditions) if conditions.clauses() else None

    def _calibrator(self, model_id: int, modality: str, query: np.ndarray, kind: str) -> Calibrator:
        background = self.store.background(model_id, modality, BACKGROUND_SAMPLE)
        try:
            return Calibrator.fit(background @ query, kind, modality)
        except CalibrationError:
            # Too few vectors for a spread: an index of one or two files. Report raw cosines as they are.
            return Calibrator(kind, modality, 0.0, 1.0, 2)


def _file_modality(path: Path, part: FileQuery) -> str:
    """The modality a query file is embedded as (checking its time range)."""
    modality = of_file(path)
    if modality is None:
        raise MediaError(path, "not a media file lbsearch can read (unknown extension)")
    if part.as_modality is not None:
        if modality != "image" or part.as_modality not in IMAGE_MODALITIES:
            raise QueryError(
                f"{path}: as_modality says what an image is ({', '.join(IMAGE_MODALITIES)}); "
                f"got {part.as_modality!r} for a {modality} file"
            )
        modality = part.as_modality
    check_range(path, modality, part.start, part.end)
    return modality


def _group_key(info: VectorInfo, group: str) -> Any:
    if group == "segment":
        return info.vector_id
    if group == "item" and info.item_id is not None:
        return ("item", info.item_id)
    return ("file", info.file_id)


def _passes(info: VectorInfo, allowed: set[int] | None, filters: Filters) -> bool:
    in_database = allowed is None or info.file_id in allowed
    return in_database and (not filters.path_glob or fnmatch.fnmatch(info.path, filters.path_glob))
