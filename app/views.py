"""The results grid: each hit with its media, where it matched, its score, the per-modality contributions and a
"more like this" button that opens the query-by-example page on that file and moment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import streamlit as st
from PIL import Image

from lbsearch import modalities
from lbsearch.app import previews, state
from lbsearch.errors import LbsearchError, MediaError
from lbsearch.paths import shown
from lbsearch.preprocess.probe import MediaInfo, probe
from lbsearch.search.results import Hit

GRID_COLUMNS = 4
INLINE_VIDEO_BYTES = 64 * 2**20
GONE = "is no longer there (moved or deleted since it was indexed)"
# The query-by-example page and the session-state keys of its widgets, which "more like this" fills in.
EXAMPLE_SOURCE = "example-source"
EXAMPLE_FILE = "example-file"
EXAMPLE_VECTOR = "example-vector"
EXAMPLE_RANGE = "example-range"
EXAMPLE_TARGETS = "example-modalities"
EXAMPLE_NAME_FILTER = "example-name-filter"
_PENDING_EXAMPLE = "pending-example"
FROM_LIBRARY = "An item in the library"


def clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def moment(start: float | None, end: float | None) -> str:
    """A segment as "0:03.0–0:05.0", or "whole file"."""
    if start is None and end is None:
        return "whole file"
    return f"{clock(start or 0.0)}–{clock(end) if end is not None else 'end'}"


def _mtime(path: str) -> int:
    return Path(path).stat().st_mtime_ns


@st.cache_data(show_spinner=False, max_entries=256)
def _waveform(path: str, mtime_ns: int, start: float | None, end: float | None) -> Image.Image:
    return previews.audio_waveform(path, start, end)


@st.cache_data(show_spinner=False, max_entries=256)
def _still(path: str, mtime_ns: int, modality: str) -> Image.Image:
    return previews.still_preview(path, modality)


@st.cache_data(show_spinner=False, max_entries=256)
def _frame(path: str, mtime_ns: int, seconds: float | None) -> Image.Image:
    return previews.video_frame(path, seconds)


@st.cache_data(show_spinner=False, max_entries=256)
def _probe(path: str, mtime_ns: int) -> MediaInfo:
    return probe(path)


def media_info(path: str | Path) -> MediaInfo:
    """Header facts (duration, sound track) of a file, remembered while it is unchanged."""
    if not Path(path).is_file():
        raise MediaError(path, GONE)
    return _probe(str(path), _mtime(str(path)))


def show_media(path: str, modality: str, start: float | None, end: float | None, key: str) -> None:
    """A file as what it is: videos play from ``start``, audio shows its waveform (the match shaded) and plays
    from ``start``, depth and thermal frames are false-coloured, photos are thumbnails.

    Streamlit sends a media file whole, through memory; a video larger than `INLINE_VIDEO_BYTES` shows the frame
    of the matched moment and plays only when asked (``key`` names that switch).
    """
    if not Path(path).is_file():
        st.warning(f"{shown(path)} {GONE}.")
        return
    kind = modalities.of_file(path)
    try:
        if kind == "video":
            size = Path(path).stat().st_size
            if size <= INLINE_VIDEO_BYTES or st.toggle(f"Play ({size / 2**20:,.0f} MB)", key=key):
                st.video(path, start_time=math.floor(start or 0.0))
            else:
                st.image(_frame(path, _mtime(path), start), width="stretch")
        elif kind == "audio":
            st.image(_waveform(path, _mtime(path), start, end), width="stretch")
            st.audio(path, start_time=math.floor(start or 0.0))
        else:
            st.image(_still(path, _mtime(path), modality), width="stretch")
    except LbsearchError as exc:
        st.warning(f"Cannot show {shown(Path(path).name)}: {shown(str(exc))}")


def contribution_bars(hit: Hit) -> None:
    """One bar per modality: its share of the score, with its cosine and calibrated score."""
    total = sum(abs(part) for part in hit.parts.values()) or 1.0
    for modality, part in sorted(hit.parts.items(), key=lambda item: -abs(item[1])):
        match = hit.matches.get(modality)
        detail = f" · cos {match.cosine:.3f} · z {match.calibrated:+.1f}" if match else " · no vector"
        st.progress(min(abs(part) / total, 1.0), text=f"{modality}: {part:+.3f}{detail}")


def _more_like_this(hit: Hit, targets: Sequence[str]) -> NoReturn:
    """Open the query-by-example page on this hit's file and moment."""
    st.session_state[_PENDING_EXAMPLE] = {
        EXAMPLE_SOURCE: FROM_LIBRARY,
        EXAMPLE_FILE: hit.file_id,
        EXAMPLE_VECTOR: hit.modality,
        EXAMPLE_RANGE: (hit.start, hit.end),
        EXAMPLE_TARGETS: list(targets),
        EXAMPLE_NAME_FILTER: "",
    }
    st.switch_page(state.EXAMPLE_PAGE)


def apply_pending_example() -> None:
    """Set the query-by-example widgets to what "more like this" asked for (before they are drawn)."""
    st.session_state.update(st.session_state.pop(_PENDING_EXAMPLE, {}))


def hit_card(hit: Hit, key: str, targets: Sequence[str]) -> None:
    with st.container(border=True):
        show_media(hit.path, hit.modality, hit.start, hit.end, f"{key}-play")
        st.markdown(f"**{hit.rank}. {shown(Path(hit.path).name)}**")
        st.caption(f"{shown(Path(hit.path).parent)} · {hit.modality} · {moment(hit.start, hit.end)}")
        st.caption(f"score {hit.score:.3f} · calibrated {hit.calibrated:+.2f} z")
        contribution_bars(hit)
        others = [m for m in hit.matches.values() if m.path != hit.path]
        for match in others:
            with st.expander(f"{match.modality}: {shown(Path(match.path).name)}"):
                show_media(match.path, match.modality, match.start, match.end, f"{key}-play-{match.modality}")
        if st.button("More like this", key=f"{key}-more"):
            _more_like_this(hit, targets)


def results(sections: Sequence[tuple[str, Sequence[Hit]]], prefix: str, targets: Sequence[str]) -> None:
    """Result sections (a title and its hits) as grids of cards."""
    for title, hits in sections:
        st.subheader(f"{title} ({len(hits)})")
        if not hits:
            st.info("No hits. Try other words, fewer filters or a lower score cut-off.")
            continue
        for row in range(0, len(hits), GRID_COLUMNS):
            for column, hit in zip(st.columns(GRID_COLUMNS), hits[row : row + GRID_COLUMNS], strict=False):
                with column:
                    hit_card(hit, f"{prefix}-{title}-{hit.rank}", targets)
