"""The search settings both search pages share: target modalities, k, joint fusion and filters.

Each page gives its own key prefix, so the two pages keep separate settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import streamlit as st

from lbsearch.app import state
from lbsearch.search.fusion import FUSION_MODES
from lbsearch.search.request import Filters, SearchRequest
from lbsearch.search.results import Hit

FUSION_LABELS = {
    "sum": "weighted sum of cosines",
    "temperature": "temperature-weighted (official)",
    "rrf": "reciprocal-rank fusion",
}
DEFAULT_K = 12
EARLIEST = date(1970, 1, 1)  # date_input's own default lower bound is only ten years back


@dataclass(frozen=True)
class SearchOptions:
    """What a page's settings say: the modalities, whether they are ranked jointly, and the `SearchRequest`
    options (k, fusion, weights, filters, score cut-off) every search of the page uses."""

    modalities: tuple[str, ...]
    joint: bool
    request: dict[str, Any] = field(default_factory=dict)


def _day_start(day: date | None) -> datetime | None:
    return datetime.combine(day, time.min) if day else None


def _day_end(day: date | None) -> datetime | None:
    return datetime.combine(day, time.max) if day else None


def search_options(prefix: str, available: Sequence[str], default: Sequence[str]) -> SearchOptions:
    """Render the settings (keys ``{prefix}-...``) and return what they say."""
    left, right = st.columns([3, 1])
    chosen = left.pills(
        "Search in", list(available), selection_mode="multi", default=list(default), key=f"{prefix}-modalities"
    )
    k = right.number_input("Results", min_value=1, max_value=200, value=DEFAULT_K, key=f"{prefix}-k")
    modalities = tuple(m for m in available if m in chosen)
    joint = st.toggle(
        "Joint: one ranking, each item scored across the chosen modalities",
        key=f"{prefix}-joint",
        disabled=len(modalities) < 2,
        help="Off: one result list per modality. On: a clip's picture and sound (or a scene's photo, depth and "
        "thermal frames) are fused into one score per item.",
    )
    joint = joint and len(modalities) >= 2
    fuse, weights = "sum", {}
    if joint:
        fuse = (
            st.segmented_control(
                "Fusion", FUSION_MODES, default="sum", format_func=FUSION_LABELS.get, key=f"{prefix}-fuse"
            )
            or "sum"
        )
        columns = st.columns(len(modalities))
        weights = {
            m: column.slider(f"{m} weight", -1.0, 3.0, 1.0, 0.1, key=f"{prefix}-weight-{m}")
            for m, column in zip(modalities, columns, strict=True)
        }
    with st.expander("Filters"):
        glob = st.text_input("Folder or path pattern", placeholder="*/holidays/*", key=f"{prefix}-glob")
        after_col, before_col = st.columns(2)
        after = after_col.date_input("Modified on or after", value=None, min_value=EARLIEST, key=f"{prefix}-after")
        before = before_col.date_input("Modified on or before", value=None, min_value=EARLIEST, key=f"{prefix}-before")
        shortest_col, longest_col = st.columns(2)
        shortest = shortest_col.number_input(
            "Shortest (seconds)", min_value=0.0, value=None, key=f"{prefix}-min-duration"
        )
        longest = longest_col.number_input("Longest (seconds)", min_value=0.0, value=None, key=f"{prefix}-max-duration")
        min_score = st.number_input(
            "Calibrated score cut-off (z)",
            value=None,
            step=0.5,
            key=f"{prefix}-min-score",
            help="How far above this query's typical similarity a hit must be, in standard deviations; "
            "the same scale for every modality.",
        )
    filters = Filters(
        path_glob=glob.strip() or None,
        min_duration=shortest,
        max_duration=longest,
        modified_after=_day_start(after),
        modified_before=_day_end(before),
    )
    request = {"k": int(k), "fuse": fuse, "weights": weights or None, "filters": filters, "min_score": min_score}
    return SearchOptions(modalities, joint, request)


def run_searches(
    handle: state.LibraryHandle, slot: str, options: SearchOptions, **query: Any
) -> list[tuple[str, list[Hit]]]:
    """The result sections for a query: one fused ranking when joint, else one ranking per modality.

    ``query`` holds ``text``/``like``; a section whose search failed (its error shown) is left out.
    """
    if options.joint:
        sections = [(" + ".join(options.modalities), slot, options.modalities)]
    else:
        sections = [(modality, f"{slot}-{modality}", (modality,)) for modality in options.modalities]
    found = []
    for title, section_slot, modalities in sections:
        request = state.attempt(
            lambda m=modalities: SearchRequest.of(modalities=m, **query, **options.request), "Search"
        )
        hits = None if request is None else state.search(handle, section_slot, request)
        if hits is not None:
            found.append((title, hits))
    return found
