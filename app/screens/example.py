"""Query by example: a file (uploaded, or already in the library, and a moment of it) finds matching media of
any other modality: the emergent X->Y search of LanguageBind made visible."""

import math

import streamlit as st

from lbsearch import modalities
from lbsearch.app import controls, state, views
from lbsearch.app.uploads import upload_limit_mb
from lbsearch.modalities import IMAGE_MODALITIES, MEDIA_EXTENSIONS
from lbsearch.preprocess.probe import MediaInfo
from lbsearch.search.request import FileQuery, StoredQuery

UPLOAD = "A file from this computer"
RANGE_STEP = 0.5
IMAGE_KINDS = {"image": "a photo", "depth": "a depth map", "thermal": "a thermal frame"}
NAME_FILTER_LIMIT = 500


def time_range(duration: float | None, key: str) -> tuple[float | None, float | None]:
    """A slider over a clip's length; the whole length means the whole file (None, None)."""
    if not duration:
        return None, None
    top = math.ceil(duration / RANGE_STEP) * RANGE_STEP
    wanted = st.session_state.get(key)
    if wanted is not None:  # e.g. set by "more like this": fit it to this clip's slider
        low = min(max(wanted[0] if wanted[0] is not None else 0.0, 0.0), top)
        high = min(max(wanted[1] if wanted[1] is not None else top, low), top)
        st.session_state[key] = (low, high)
    low, high = st.slider("Moment (seconds)", 0.0, top, (0.0, top), RANGE_STEP, key=key)
    return (None, None) if (low, high) == (0.0, top) else (low, high)


def choose(label: str, options: dict[str, str], key: str) -> str:
    """A horizontal radio of ``options`` (value -> label); a remembered value that is not offered is dropped."""
    if st.session_state.get(key) not in options:
        st.session_state.pop(key, None)
    return st.radio(label, list(options), format_func=options.get, horizontal=True, key=key)


def choose_track(info: MediaInfo, key: str) -> str:
    """Search with a video's picture or its sound track (asked only when it has both)."""
    tracks = {}
    if info.has_video:
        tracks["video"] = "its picture"
    if info.has_audio:
        tracks["audio"] = "its sound"
    if len(tracks) == 1:
        return next(iter(tracks))
    return choose("Search with", tracks, key)


def upload_query(handle: state.LibraryHandle) -> FileQuery | None:
    limit = state.attempt(upload_limit_mb, "Reading the upload limit")
    uploaded = st.file_uploader(
        "A video, a sound, a photo, a depth map or a thermal frame",
        help=f"Any of {', '.join(MEDIA_EXTENSIONS)}; at most {limit} MB.",
        max_upload_size=limit,
        key="example-upload",
    )
    if uploaded is None or limit is None:
        return None
    path = state.attempt(
        lambda: handle.uploads.save(uploaded.name, uploaded.getvalue(), limit), f"Reading {uploaded.name}"
    )
    if path is None:
        return None
    if modalities.of_file(path) == "image":
        kind = choose("The image is", IMAGE_KINDS, "example-upload-kind")
        views.show_media(str(path), kind, None, None, "example-upload-play")
        return FileQuery(str(path), as_modality=kind)
    info = views.media_info(path)
    track = choose_track(info, "example-upload-track")
    start, end = time_range(info.duration, "example-upload-range")
    views.show_media(str(path), track, start, end, "example-upload-play")
    as_modality = None if track == modalities.of_file(path) else track
    return FileQuery(str(path), as_modality=as_modality, start=start, end=end)


def library_query(handle: state.LibraryHandle) -> StoredQuery | None:
    files = state.library_files(handle)
    wanted = st.session_state.get(views.EXAMPLE_FILE)
    name_filter = st.text_input("Filter by name", key=views.EXAMPLE_NAME_FILTER).strip().lower()
    shown = {r.id: r for r in files if name_filter in r.path.lower()}
    if not shown:
        st.info("No indexed file matches that name.")
        return None
    ids = list(shown)[:NAME_FILTER_LIMIT]
    if wanted in shown and wanted not in ids:
        ids.append(wanted)
    elif wanted not in shown:
        st.session_state.pop(views.EXAMPLE_FILE, None)
    file_id = st.selectbox(
        "Item", ids, format_func=lambda i: f"{shown[i].modality} · {shown[i].path}", key=views.EXAMPLE_FILE
    )
    record = shown[file_id]
    if record.modality in IMAGE_MODALITIES:
        views.show_media(record.path, record.modality, None, None, "example-file-play")
        return StoredQuery(file_id, modality=record.modality)
    info = state.attempt(lambda: views.media_info(record.path), f"Reading {record.path}")
    if info is None:
        return None
    track = choose_track(info, views.EXAMPLE_VECTOR)
    start, end = time_range(info.duration, views.EXAMPLE_RANGE)
    views.show_media(record.path, track, start, end, "example-file-play")
    return StoredQuery(file_id, start=start, end=end, modality=track)


views.apply_pending_example()
st.title("Query by example")
handle = state.current()
available = state.require_searchable(handle)
source = st.radio("Search like", [UPLOAD, views.FROM_LIBRARY], horizontal=True, key=views.EXAMPLE_SOURCE)
like = upload_query(handle) if source == UPLOAD else library_query(handle)
st.divider()
options = controls.search_options("example", available, default=available)
if not options.modalities:
    st.info("Choose at least one modality to search in.")
elif like is not None:
    views.results(controls.run_searches(handle, "example", options, like=like), "example", options.modalities)
