"""What the pages share: the cached library, its lock, the upload folder, remembered searches, error messages.

One `Library` per index location is opened per server process (`st.cache_resource`), so encoders load once and
a second query is fast. Encoders are not safe to load or run from two sessions at once; a lock serialises the
calls into the library.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import streamlit as st

from lbsearch.app.uploads import UploadFolder
from lbsearch.errors import CheckpointError, ConfigError, LbsearchError
from lbsearch.library import Library, default_index_folder
from lbsearch.modalities import MODALITIES
from lbsearch.search.request import SearchRequest
from lbsearch.search.results import Hit
from lbsearch.storage.records import FileRecord

T = TypeVar("T")

MODELS_HELP = (
    "Choose a model set on the **Library** page, or from a terminal: `lbsearch index --models demo FOLDER` "
    "(the small demo models) or `lbsearch models download ...` for the released LanguageBind checkpoints."
)
# The pages, relative to streamlit_app.py (not in "pages/": Streamlit would also serve that folder on its own).
SEARCH_PAGE = "screens/search.py"
EXAMPLE_PAGE = "screens/example.py"
LIBRARY_PAGE = "screens/library.py"
EMPTY_HELP = "Nothing is indexed yet: add a folder on the **Library** page, or run `lbsearch index FOLDER`."
_SEARCH_MEMO = "search_memo"


@dataclass
class LibraryHandle:
    """A library shared by every session of this server, with what guards and tracks it."""

    location: str
    library: Library
    lock: threading.RLock = field(default_factory=threading.RLock)
    generation: int = 0  # bumped whenever the library changes, so remembered searches go stale
    _uploads: UploadFolder | None = None

    def changed(self) -> None:
        self.generation += 1

    @property
    def uploads(self) -> UploadFolder:
        with self.lock:
            if self._uploads is None:
                self._uploads = UploadFolder(avoid=[self.library.folder])
                atexit.register(self._uploads.cleanup)
            return self._uploads


def index_location(argv: Sequence[str] | None = None) -> str:
    """The index folder or database URL: ``-- --index DIR`` after the script name, else ``$LBSEARCH_INDEX``,
    else ``./indexes``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--index")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.index or str(default_index_folder())


@st.cache_resource(show_spinner="Opening the library…")
def _open(location: str) -> LibraryHandle:
    return LibraryHandle(location, Library.open(location))


def current() -> LibraryHandle:
    """The library this app serves, or an error message and a stopped page when it cannot be opened."""
    location = index_location()
    try:
        return _open(location)
    except LbsearchError as exc:
        st.error(f"Cannot open the library at `{location}`: {exc}")
        st.stop()


def show_error(exc: LbsearchError, doing: str) -> None:
    """An error as a message in the page, with how to get a model when one is missing."""
    st.error(f"{doing} failed: {exc}")
    if isinstance(exc, (ConfigError, CheckpointError)):
        st.info(MODELS_HELP)


def attempt(action: Callable[[], T], doing: str) -> T | None:
    """``action()``, or None after showing its lbsearch error in the page."""
    try:
        return action()
    except LbsearchError as exc:
        show_error(exc, doing)
        return None


def status(handle: LibraryHandle) -> dict[str, Any]:
    with handle.lock:
        return handle.library.status()


def indexed_modalities(library_status: dict[str, Any]) -> list[str]:
    indexed = {group["modality"] for group in library_status["vectors"]}
    return [m for m in MODALITIES if m in indexed]


def require_searchable(handle: LibraryHandle) -> list[str]:
    """The indexed modalities; stops the page with a message when there is no model set or nothing indexed."""
    library_status = status(handle)
    if not library_status["models"]:
        st.warning("This library has no model set.")
        st.info(MODELS_HELP)
        st.stop()
    modalities = indexed_modalities(library_status)
    if not modalities:
        st.info(EMPTY_HELP)
        st.stop()
    return modalities


def library_files(handle: LibraryHandle) -> list[FileRecord]:
    """Every indexed (status ok) file, by path."""
    with handle.lock:
        return handle.library.files("ok")


def search(handle: LibraryHandle, slot: str, request: SearchRequest) -> list[Hit] | None:
    """``Library.search(request)``, remembered per page slot until the request or the library changes (Streamlit
    reruns the page on every click; the hits of an unchanged query are not recomputed). None after an error."""
    memo: dict[str, tuple[str, list[Hit]]] = st.session_state.setdefault(_SEARCH_MEMO, {})
    key = repr((handle.location, handle.generation, request))
    if slot in memo and memo[slot][0] == key:
        return memo[slot][1]

    def run() -> list[Hit]:
        with handle.lock, st.spinner("Searching…"):
            return handle.library.search(request=request)

    hits = attempt(run, "Search")
    if hits is not None:
        memo[slot] = (key, hits)
    return hits
