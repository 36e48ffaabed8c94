"""What a search asks for: the query (weighted parts) and how to answer it (where, how many, fused and filtered how).

`SearchRequest` is the one description of a search that the Python API, the CLI and the UI all build, so every
option is parsed and checked once, here, before any model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lbsearch.errors import QueryError
from lbsearch.modalities import check_all, lookup, of_file
from lbsearch.search.fusion import FUSION_MODES
from lbsearch.storage.records import FileFilter

GROUPINGS = ("file", "item", "segment")
# Ids are SQL integers: anything larger names no file (and would overflow the database driver).
_LARGEST_ID = 2**63 - 1


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


def parse_part(value: str | Path | QueryPart) -> QueryPart:
    """A plain string is a file when it ends in a media extension ("rain.wav"), else text.

    A missing file is then reported as missing, rather than searched for as the words "rain.wav"."""
    if isinstance(value, (TextQuery, FileQuery, StoredQuery)):
        return value
    if isinstance(value, Path) or of_file(value):
        return FileQuery(str(Path(value).expanduser()))
    return TextQuery(str(value))


def parse_like(
    value: str | Path | QueryPart,
    *,
    as_modality: str | None = None,
    start: float | None = None,
    end: float | None = None,
) -> QueryPart:
    """An example to search like: a file on disk, or an indexed file's id ("123", when no file has that name).

    ``as_modality`` says what an image file is, or which vectors of an indexed file to use (a video's audio)."""
    if isinstance(value, (TextQuery, FileQuery, StoredQuery)):
        return value
    text = str(value)
    if text.isdigit() and not Path(text).exists():
        return StoredQuery(int(text), start, end, modality=as_modality)
    return FileQuery(str(Path(text).expanduser()), as_modality=as_modality, start=start, end=end)


def describe(part: QueryPart) -> str:
    if isinstance(part, TextQuery):
        return repr(part.text)
    return str(part.path if isinstance(part, FileQuery) else part.file)


def check_range(what: object, modality: str, start: float | None, end: float | None) -> None:
    """A query's time range must be a real span of something that has a time axis."""
    if start is None and end is None:
        return
    if not lookup(modality).timed:
        raise QueryError(f"{what}: a time range applies to video and audio only, not to a {modality} file")
    if (start is not None and start < 0) or (start is not None and end is not None and end <= start):
        raise QueryError(f"{what}: the time range must have 0 <= start < end, got start={start}, end={end}")


@dataclass(frozen=True)
class SearchRequest:
    """One search: weighted query ``parts`` and how to answer them. Checked when made.

    - ``modalities``: which indexes to search (None: every indexed modality). Several at once give joint
      retrieval: each item is scored across them with ``fuse`` ("sum", "temperature" or "rrf") and ``weights``.
    - ``group``: "file" (best moment per file; the default for one modality), "item" (the default for several)
      or "segment" (every matching window). ``k`` hits from ``offset``.
    - ``filters`` on file metadata; ``min_score``: a cut-off on the calibrated (z-)score.
    """

    parts: tuple[tuple[QueryPart, float], ...]
    modalities: tuple[str, ...] | None = None
    k: int = 10
    offset: int = 0
    fuse: str = "sum"
    weights: Mapping[str, float] | None = None
    group: str | None = None
    filters: Filters = field(default_factory=Filters)
    min_score: float | None = None

    @classmethod
    def of(
        cls,
        text: str | None = None,
        *,
        like: str | Path | QueryPart | None = None,
        parts: Sequence[tuple[str | Path | QueryPart, float]] | None = None,
        modalities: Sequence[str] | None = None,
        **options: Any,
    ) -> SearchRequest:
        """A request from a sentence (text->X), an example to search ``like`` (a file or a `StoredQuery`; X->Y)
        and weighted ``parts`` (negative weights allowed), all summed into one query."""
        collected: list[tuple[QueryPart, float]] = []
        if text:
            collected.append((TextQuery(text), 1.0))
        if like is not None:
            # ``like`` names an example, so a plain string is always a file (a non-media one is reported as such).
            is_part = isinstance(like, (TextQuery, FileQuery, StoredQuery))
            collected.append((like if is_part else FileQuery(str(Path(like).expanduser())), 1.0))
        collected.extend((parse_part(value), weight) for value, weight in parts or ())
        targets = tuple(dict.fromkeys(modalities)) if modalities else None
        return cls(tuple(collected), targets, **options)

    def __post_init__(self) -> None:
        if not self.parts:
            raise QueryError("empty query: give a text, a file to search like, or weighted parts")
        for part, weight in self.parts:
            if not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise QueryError(f"the weight of query part {describe(part)} must be a finite number, got {weight}")
            if isinstance(part, TextQuery) and not part.text.strip():
                raise QueryError("a text query part is empty")
            if isinstance(part, StoredQuery) and isinstance(part.file, int) and not 0 < part.file <= _LARGEST_ID:
                raise QueryError(f"no file with id {part.file} in this library")
            if isinstance(part, StoredQuery) and part.modality is not None:
                lookup(part.modality)
        if self.modalities is not None:
            check_all(self.modalities)
        if self.fuse not in FUSION_MODES:
            raise QueryError(f"unknown fusion mode {self.fuse!r}; expected one of {', '.join(FUSION_MODES)}")
        if self.group is not None and self.group not in GROUPINGS:
            raise QueryError(f"unknown grouping {self.group!r}; expected one of {', '.join(GROUPINGS)}")
        if self.k < 1 or self.offset < 0:
            raise QueryError(f"k must be >= 1 and offset >= 0, got k={self.k}, offset={self.offset}")
        for modality, weight in (self.weights or {}).items():
            lookup(modality)
            if not math.isfinite(weight):
                raise QueryError(f"the weight of {modality} must be a finite number, got {weight}")

    @property
    def kind(self) -> str:
        """"text", "media" or "mixed": what the query is made of (calibration keeps them apart)."""
        kinds = {"text" if isinstance(p, TextQuery) else "media" for p, _ in self.parts}
        return kinds.pop() if len(kinds) == 1 else "mixed"
