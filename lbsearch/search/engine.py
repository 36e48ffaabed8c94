"""The query engine: text->X, emergent X->Y and joint retrieval over a `Library`.

A query is one or more weighted parts (text, a media file on disk, or something already in the library). Each
part is embedded into the shared space, the parts are summed (`fusion.combine_query_parts`) and every target
modality's index is searched. Hits are grouped (per file by default, per item when several modalities are
searched jointly, or not at all), filtered on file metadata, scored, and calibrated: each hit's cosine becomes a
z-score against the query's own background (its cosines with a random sample of the target index), which means
the same thing for every modality pair, so ``min_score`` is one cut-off for all.

Joint retrieval fuses the per-modality similarities of each item (`fusion.fuse`: weighted sum, temperature-
weighted sum as the official code does, or reciprocal-rank fusion); an item found through one modality gets its
exact similarity for the others from its stored vectors, never a silent zero.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lbsearch.errors import CalibrationError, ConfigError, MediaError, QueryError
from lbsearch.modalities import IMAGE_MODALITIES, MODALITIES, check_all, lookup, of_file
from lbsearch.search.calibration import Calibrator
from lbsearch.search.fusion import FUSION_MODES, combine_query_parts, fuse
from lbsearch.storage.records import FileFilter, VectorInfo

if TYPE_CHECKING:
    from lbsearch.library import Library

GROUPINGS = ("file", "item", "segment")
BACKGROUND_SAMPLE = 2048
# A search fetches this many candidates per wanted hit, and more while filters leave too few.
OVERFETCH = 4


@dataclass(frozen=True)
class TextQuery:
    text: str


@dataclass(frozen=True)
class FileQuery:
    """A media file on disk. ``as_modality`` says what an image is (depth, thermal or image; default image)."""

    path: str
    as_modality: str | None = None
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class StoredQuery:
    """Something already in the library: a file (by id or path), optionally one time range of it."""

    file: int | str
    start: float | None = None
    end: float | None = None
    modality: str | None = None  # which of its vectors (default: the file's own modality)


QueryPart = TextQuery | FileQuery | StoredQuery


@dataclass(frozen=True)
class Filters:
    """Conditions on the files hits come from. ``where`` compares other file columns for equality."""

    path_glob: str | None = None
    file_modalities: tuple[str, ...] | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    where: dict[str, Any] = field(default_factory=dict)

    def to_db(self) -> FileFilter:
        return FileFilter(
            file_modalities=self.file_modalities,
            min_duration=self.min_duration,
            max_duration=self.max_duration,
            modified_after=self.modified_after,
            modified_before=self.modified_before,
            where=self.where,
        )


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_part(value: str | Path | QueryPart) -> QueryPart:
    """A plain string is a file when it ends in a media extension ("rain.wav"), else text.

    A missing file is then reported as missing, rather than searched for as the words "rain.wav"."""
    if isinstance(value, (TextQuery, FileQuery, StoredQuery)):
        return value
    if isinstance(value, Path) or of_file(value):
        return FileQuery(str(Path(value).expanduser()))
    return TextQuery(str(value))


def search(
    lib: Library,
    text: str | None = None,
    *,
    like: str | Path | QueryPart | None = None,
    parts: Sequence[tuple[str | Path | QueryPart, float]] | None = None,
    modalities: Sequence[str] | None = None,
    k: int = 10,
    offset: int = 0,
    fuse_mode: str = "sum",
    weights: dict[str, float] | None = None,
    group: str | None = None,
    filters: Filters | None = None,
    min_score: float | None = None,
) -> list[Hit]:
    query_parts = _collect_parts(text, like, parts)
    if not lib.models:
        raise ConfigError("this library has no model set: index something first (`lbsearch index PATH --models NAME`)")
    indexed = set(lib.db.vector_groups())
    if not indexed:
        raise QueryError(f"the library at {lib.folder} is empty: index some media first with `lbsearch index PATH`")
    targets = list(dict.fromkeys(modalities or _default_targets(lib, indexed)))
    check_all(targets)
    model_ids = _require_indexed(lib, targets, indexed)
    if fuse_mode not in FUSION_MODES:
        raise QueryError(f"unknown fusion mode {fuse_mode!r}; expected one of {', '.join(FUSION_MODES)}")
    group = group or ("item" if len(targets) > 1 else "file")
    if group not in GROUPINGS:
        raise QueryError(f"unknown grouping {group!r}; expected one of {', '.join(GROUPINGS)}")
    if k < 1 or offset < 0:
        raise QueryError(f"k must be >= 1 and offset >= 0, got k={k}, offset={offset}")
    filters = filters or Filters()

    wanted = k + offset
    per_modality: dict[str, dict[Any, tuple[float, VectorInfo]]] = {}
    calibrators: dict[str, Calibrator] = {}
    queries: dict[str, np.ndarray] = {}
    for modality in targets:
        query = _query_vector(lib, query_parts, modality)
        queries[modality] = query
        per_modality[modality] = _search_one(lib, model_ids[modality], modality, query, wanted, group, filters)
        calibrators[modality] = _calibrator(lib, model_ids[modality], modality, query, _query_kind(query_parts))
    if len(targets) > 1 and group != "segment":
        _fill_missing(lib, model_ids, per_modality, queries, filters)

    scores = {m: {key: cosine for key, (cosine, _) in found.items()} for m, found in per_modality.items()}
    if not any(scores.values()):
        return []
    logit_scales = (
        {m: lib.encoder(m, text_only=True).logit_scale for m in targets} if fuse_mode == "temperature" else None
    )
    fused = fuse(scores, fuse_mode, weights, logit_scales)
    total_weight = sum(abs((weights or {}).get(m, 1.0)) for m in targets) or 1.0
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
        calibrated = sum((weights or {}).get(m, 1.0) * match.calibrated for m, match in matches.items())
        calibrated /= total_weight
        if min_score is not None and calibrated < min_score:
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
            )
        )
    return hits[offset:wanted]


def _collect_parts(text, like, parts) -> list[tuple[QueryPart, float]]:
    collected: list[tuple[QueryPart, float]] = []
    if text:
        collected.append((TextQuery(text), 1.0))
    if like is not None:
        # ``like`` names an example, so a plain string is always a file (a non-media one is reported as such).
        is_part = isinstance(like, (TextQuery, FileQuery, StoredQuery))
        collected.append((like if is_part else FileQuery(str(Path(like).expanduser())), 1.0))
    for value, weight in parts or ():
        part = parse_part(value)
        if not math.isfinite(weight):
            raise QueryError(f"the weight of query part {_describe(part)} must be a finite number, got {weight}")
        collected.append((part, float(weight)))
    if not collected:
        raise QueryError("empty query: give a text, a file to search like, or weighted parts")
    return collected


def _describe(part: QueryPart) -> str:
    if isinstance(part, TextQuery):
        return repr(part.text)
    return str(part.path if isinstance(part, FileQuery) else part.file)


def _require_indexed(lib: Library, targets: Sequence[str], indexed: set[tuple[int, str]]) -> dict[str, int]:
    """The model id of each target. Searching a modality with no vectors would only find nothing (and write an
    empty index file): say so instead."""
    model_ids = {modality: lib.model_id(modality) for modality in targets}
    for modality, model_id in model_ids.items():
        if (model_id, modality) not in indexed:
            have = sorted({m for _, m in indexed})
            raise QueryError(
                f"nothing is indexed as {modality} with this library's {modality} model "
                f"(indexed: {', '.join(have)}); index some {modality} first with `lbsearch index PATH`"
            )
    return model_ids


def _default_targets(lib: Library, indexed: set[tuple[int, str]]) -> list[str]:
    indexed_modalities = {modality for _, modality in indexed}
    return [m for m in MODALITIES if m in lib.models and m in indexed_modalities] or list(lib.models)


def _query_kind(parts: list[tuple[QueryPart, float]]) -> str:
    kinds = {"text" if isinstance(p, TextQuery) else "media" for p, _ in parts}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _query_vector(lib: Library, parts: list[tuple[QueryPart, float]], target: str) -> np.ndarray:
    embedded = [(_embed_part(lib, part, target), weight) for part, weight in parts]
    return combine_query_parts(embedded).astype(np.float32)


def _embed_part(lib: Library, part: QueryPart, target: str) -> np.ndarray:
    if isinstance(part, TextQuery):
        if not part.text.strip():
            raise QueryError("a text query part is empty")
        return lib.encoder(target, text_only=True).encode_text([part.text])[0].numpy()
    if isinstance(part, FileQuery):
        path = Path(part.path).expanduser()
        if not path.is_file():
            raise MediaError(path, "no such file")
        modality = _file_modality(path, part)
        encoder = lib.encoder(modality)
        tensor = encoder.preprocess(path, start=part.start, end=part.end)
        return encoder.encode(tensor[None])[0].numpy()
    return _stored_vector(lib, part)


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
    _check_range(path, modality, part.start, part.end)
    return modality


def _check_range(what: object, modality: str, start: float | None, end: float | None) -> None:
    """A query's time range must be a real span of something that has a time axis."""
    if start is None and end is None:
        return
    if not lookup(modality).timed:
        raise QueryError(f"{what}: a time range applies to video and audio only, not to a {modality} file")
    if (start is not None and start < 0) or (start is not None and end is not None and end <= start):
        raise QueryError(f"{what}: the time range must have 0 <= start < end, got start={start}, end={end}")


def _stored_vector(lib: Library, part: StoredQuery) -> np.ndarray:
    record = (
        lib.db.file(part.file)
        if isinstance(part.file, int)
        else lib.db.file_by_path(str(Path(part.file).expanduser().resolve()))
    )
    if record is None:
        raise QueryError(f"{part.file}: not in this library")
    modality = part.modality or record.modality
    _check_range(record.path, modality, part.start, part.end)
    found = lib.db.file_vectors(record.id, lib.model_id(modality), modality)
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


def _group_key(info: VectorInfo, group: str) -> Any:
    if group == "segment":
        return info.vector_id
    if group == "item" and info.item_id is not None:
        return ("item", info.item_id)
    return ("file", info.file_id)


def _search_one(
    lib: Library, model_id: int, modality: str, query: np.ndarray, wanted: int, group: str, filters: Filters
) -> dict[Any, tuple[float, VectorInfo]]:
    """Best cosine (and its vector) per group key, for at least ``wanted`` groups passing the filters."""
    index = lib.store.index(model_id, modality)
    if index.ntotal == 0:
        return {}
    fetch = min(index.ntotal, max(32, OVERFETCH * wanted))
    while True:
        scores, ids = index.search(query[None], fetch)
        valid = ids[0] >= 0
        infos = lib.db.describe_vectors(ids[0][valid].tolist())
        allowed = _allowed_files(lib, {i.file_id for i in infos.values()}, filters)
        best: dict[Any, tuple[float, VectorInfo]] = {}
        for score, vector_id in zip(scores[0][valid], ids[0][valid], strict=True):
            info = infos.get(int(vector_id))
            if info is None or not _passes(info, allowed, filters):
                continue
            key = _group_key(info, group)
            if key not in best:
                best[key] = (float(score), info)
        if len(best) >= wanted or fetch >= index.ntotal:
            return best
        fetch = min(index.ntotal, fetch * 4)


def _fill_missing(
    lib: Library, model_ids: dict[str, int], found: dict[str, dict], queries: dict[str, np.ndarray], filters: Filters
) -> None:
    """Give every candidate its exact similarity in each searched modality where it has a vector (from a file
    that passes the filters, as a search hit must)."""
    keys = {key for per in found.values() for key in per}
    for modality, per in found.items():
        missing = [key for key in keys if key not in per]
        if not missing:
            continue
        vectors = lib.db.group_vectors(missing, model_ids[modality], modality)
        allowed = _allowed_files(lib, {info.file_id for c in vectors.values() for info, _ in c}, filters)
        for key, candidates in vectors.items():
            kept = [(info, embedding) for info, embedding in candidates if _passes(info, allowed, filters)]
            if kept:
                info, embedding = max(kept, key=lambda c: float(c[1] @ queries[modality]))
                per[key] = (float(embedding @ queries[modality]), info)


def _allowed_files(lib: Library, file_ids: set[int], filters: Filters) -> set[int] | None:
    """The files that pass the filters' database conditions; None when there are none (every file passes)."""
    conditions = filters.to_db()
    return lib.db.filter_files(file_ids, conditions) if conditions.clauses() else None


def _passes(info: VectorInfo, allowed: set[int] | None, filters: Filters) -> bool:
    in_database = allowed is None or info.file_id in allowed
    return in_database and (not filters.path_glob or fnmatch.fnmatch(info.path, filters.path_glob))


def _calibrator(lib: Library, model_id: int, modality: str, query: np.ndarray, kind: str) -> Calibrator:
    background = lib.store.background(model_id, modality, BACKGROUND_SAMPLE)
    try:
        return Calibrator.fit(background @ query, kind, modality)
    except CalibrationError:
        # Too few vectors for a spread: an index of one or two files. Report raw cosines as they are.
        return Calibrator(kind, modality, 0.0, 1.0, 2, (-1.0, 1.0))


def classify(
    lib: Library, class_names: Sequence[str], modality: str, file_ids: Sequence[int] | None = None, k: int = 1
) -> dict[int, list[tuple[str, float]]]:
    """Zero-shot labels of indexed files with the official prompt templates of ``modality``."""
    from lbsearch.search.zeroshot import build_classifier, top_k_labels
    from lbsearch.search.zeroshot import classify as zs_classify

    (model_id,) = _require_indexed(lib, [modality], set(lib.db.vector_groups())).values()
    encoder = lib.encoder(modality, text_only=True)
    classifier = build_classifier(list(class_names), modality, lambda texts: encoder.encode_text(texts))
    vectors = lib.db.whole_file_vectors(model_id, modality, file_ids)
    if not vectors:
        return {}
    ids = list(vectors)
    logits = zs_classify(torch.from_numpy(np.stack([vectors[i] for i in ids])), classifier)
    labels = top_k_labels(logits, list(class_names), k=min(k, len(class_names)))
    return {
        file_id: [(label.name, label.probability) for label in row] for file_id, row in zip(ids, labels, strict=True)
    }
