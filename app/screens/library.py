"""Library: the model set, adding folders with live progress, counts, failed files and index health."""

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import streamlit as st

from lbsearch.app import state
from lbsearch.ingest.pipeline import IngestOptions, IngestProgress, IngestReport
from lbsearch.modalities import IMAGE_MODALITIES
from lbsearch.models.registry import MODEL_SETS, parse_model_options
from lbsearch.storage.store import Disagreement

AUTO = "recognise from folder names"
KILOBYTE = 1024


def model_form(handle: state.LibraryHandle) -> None:
    with st.form("models-form"):
        named = st.selectbox("A named model set", ["", *MODEL_SETS], key="models-named")
        custom = st.text_area(
            "or one checkpoint per line", placeholder="video=LanguageBind/LanguageBind_Video_FT", key="models-custom"
        )
        if not st.form_submit_button("Use these models"):
            return

    def use() -> dict[str, str]:
        lines = [line.strip() for line in custom.splitlines() if line.strip()]
        chosen = parse_model_options(lines) if lines else named
        with handle.lock:
            return handle.library.use_models(chosen)

    if not named and not custom.strip():
        st.warning("Pick a named set or give at least one MODALITY=CHECKPOINT line.")
    elif state.attempt(use, "Choosing models") is not None:
        handle.changed()
        st.success("Model set saved; the next add also embeds the files already indexed for the new models.")


def add_form(handle: state.LibraryHandle) -> None:
    with st.form("add-form"):
        folder = st.text_input("Folder to add", placeholder="~/Videos", key="add-folder")
        left, middle, right = st.columns(3)
        kind = left.selectbox("Images in it are", [AUTO, *IMAGE_MODALITIES], key="add-kind")
        workers = middle.number_input("Decoding processes", 0, 32, IngestOptions().workers, key="add-workers")
        retry = right.checkbox("Retry files that failed before", key="add-retry")
        if not st.form_submit_button("Add to library"):
            return
    if not folder.strip():
        st.warning("Type the folder to add.")
        return
    path = Path(folder.strip()).expanduser()
    if not path.is_dir():
        st.error(f"{path} is not a folder.")
        return
    report = ingest(
        handle, path, None if kind == AUTO else kind, IngestOptions(workers=int(workers), retry_failed=retry)
    )
    if report is not None:
        show_report(report)


def ingest(handle: state.LibraryHandle, path: Path, kind: str | None, options: IngestOptions) -> IngestReport | None:
    """Run the ingest with a live progress bar (updated from the pipeline's progress callback)."""
    with st.status(f"Indexing {path}…", expanded=True) as panel:
        bar = st.progress(0.0, text="Scanning…")

        def progress(update: IngestProgress) -> None:
            share = update.files_done / update.files_total if update.files_total else 1.0
            bar.progress(
                min(share, 1.0),
                text=f"{update.files_done} of {update.files_total} files · {update.segments} segments · "
                f"{update.segments_per_second:.1f} segments/s · {update.errors} failed",
            )

        def run() -> IngestReport:
            with handle.lock:
                return handle.library.add(path, as_modality=kind, options=options, progress=progress)

        report = state.attempt(run, f"Adding {path}")
        handle.changed()
        panel.update(
            label=f"Indexed {path}" if report else f"Indexing {path} failed", state="complete" if report else "error"
        )
    return report


def show_report(report: IngestReport) -> None:
    st.success(
        f"{report.embedded} files embedded, {report.vectors} vectors, {report.failed} failed "
        f"in {report.seconds:.1f} s" + (" (interrupted)" if report.interrupted else "")
    )
    st.caption("Plan: " + ", ".join(f"{count} {what}" for what, count in report.plan.items()))
    if report.errors:
        st.dataframe([{"file": path, "why": reason} for path, reason in report.errors.items()], hide_index=True)
    if report.warnings:
        with st.expander(f"{len(report.warnings)} warnings"):
            st.dataframe([{"file": path, "warning": text} for path, text in report.warnings.items()], hide_index=True)


def file_size(path: str) -> str:
    file = Path(path)
    return f"{file.stat().st_size / KILOBYTE:,.0f} KiB" if file.is_file() else "missing"


def contents(library_status: dict[str, Any]) -> None:
    st.subheader("Contents")
    st.caption(f"Index folder `{library_status['folder']}` · database `{library_status['database']}`")
    counts = st.columns(3)
    files = library_status["files"]
    counts[0].metric("Files", sum(sum(per.values()) for per in files.values()))
    counts[1].metric("Items", library_status["items"])
    counts[2].metric("Segments", library_status["segments"])
    if not files:
        st.info("Nothing is indexed yet: add a folder above, or run `lbsearch index FOLDER`.")
        return
    per_modality, per_model = st.columns(2)
    per_modality.caption("Files per modality and state")
    per_modality.dataframe([{"modality": m, **per} for m, per in files.items()], hide_index=True)
    per_model.caption("Vectors per model and modality")
    per_model.dataframe(
        [{"model": g["model"], "modality": g["modality"], "vectors": g["vectors"]} for g in library_status["vectors"]],
        hide_index=True,
    )


def failures(library_status: dict[str, Any]) -> None:
    st.subheader("Failed files")
    if library_status["failed"]:
        st.dataframe(library_status["failed"], hide_index=True)
    else:
        st.caption("None.")


def health(handle: state.LibraryHandle, library_status: dict[str, Any]) -> None:
    st.subheader("Index health")
    if library_status["indexes"]:
        model_names = {group["model_id"]: group["model"] for group in library_status["vectors"]}
        st.dataframe(
            [
                {
                    "modality": index["modality"],
                    "model": model_names.get(index["model_id"], index["model_id"]),
                    "type": index.get("factory", "not built"),
                    "vectors": index.get("ntotal", 0),
                    "size": file_size(index["file"]),
                    "recall@10": index.get("recall_at_10"),
                    "built": index.get("built_at"),
                }
                for index in library_status["indexes"]
            ],
            hide_index=True,
        )
    else:
        st.caption("No index yet.")
    check, repair = st.columns(2)
    if check.button("Check the indexes against the database", key="verify"):
        index_check(handle, handle.library.verify, "Checking", "Every index agrees with the database.")
    if repair.button("Repair the indexes", key="repair"):
        index_check(handle, handle.library.repair, "Repairing", "Nothing needed repair.")


def models(handle: state.LibraryHandle, library_status: dict[str, Any]) -> None:
    st.subheader("Models")
    chosen = library_status["models"]
    if chosen:
        st.dataframe([{"modality": m, "checkpoint": source} for m, source in chosen.items()], hide_index=True)
    else:
        st.warning("This library has no model set.")
        st.info(state.MODELS_HELP)
    with st.expander("Change the models", expanded=not chosen):
        model_form(handle)


def index_check(
    handle: state.LibraryHandle, action: Callable[[], list[Disagreement]], doing: str, all_good: str
) -> None:
    with handle.lock, st.spinner(f"{doing}…"):
        disagreements = state.attempt(action, doing)
    handle.changed()
    if disagreements == []:
        st.success(all_good)
    elif disagreements:
        st.warning(f"{doing} found {len(disagreements)} disagreements between the indexes and the database:")
        st.dataframe([asdict(d) for d in disagreements], hide_index=True)


st.title("Library")
handle = state.current()
st.subheader("Add a folder")
add_form(handle)
library_status = state.status(handle)
contents(library_status)
failures(library_status)
health(handle, library_status)
models(handle, library_status)
