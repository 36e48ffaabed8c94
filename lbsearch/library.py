"""`Library`: the one entry point of the Python API. An index folder (or database URL) plus a model set.

    lib = Library.open("indexes/")                      # or Library.open(db="postgresql://...")
    lib.use_models("demo")                              # or {"video": "LanguageBind/LanguageBind_Video_FT", ...}
    lib.add("~/Videos")                                 # scan, embed, index
    hits = lib.search("a dog barking at night", modalities=["video", "audio"], k=10)

Encoders are loaded lazily, once per process, and only the towers a call needs (text queries load only the
language tower).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbsearch.errors import ConfigError
from lbsearch.ingest.pipeline import IngestOptions, Ingestor, IngestProgress, IngestReport
from lbsearch.ingest.scan import ScanRoot
from lbsearch.modalities import check_all, lookup
from lbsearch.models import Encoder, default_dtype, load_checkpoint
from lbsearch.models.registry import MODEL_SETS, model_set
from lbsearch.search import engine
from lbsearch.search.engine import Filters, Hit, QueryPart
from lbsearch.storage.database import SQLITE_FILE_NAME, Database, FileRecord
from lbsearch.storage.store import Disagreement, IndexStore

DEFAULT_INDEX = "indexes"
MODEL_SET_SETTING = "model_set"
MODEL_IDS_SETTING = "model_ids"


def default_index_folder() -> Path:
    return Path(os.environ.get("LBSEARCH_INDEX", DEFAULT_INDEX)).expanduser()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Library:
    def __init__(self, folder: Path, db: Database, device: str | None = None, dtype: torch.dtype | None = None):
        self.folder = folder
        self.db = db
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.store = IndexStore(db, folder, recall_queries=self._recall_queries)
        self._encoders: dict[tuple[str, bool], Encoder] = {}

    @classmethod
    def open(
        cls,
        location: str | os.PathLike | None = None,
        *,
        db: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        create: bool = True,
    ) -> Library:
        """Open a library, creating it if needed (``create=False``: a folder without its database is an error).

        ``location`` is the index folder (default ``$LBSEARCH_INDEX`` or ``./indexes``) or a database URL;
        ``db`` points the metadata at another database (e.g. PostgreSQL) while FAISS files stay in the folder.
        """
        if location is not None and "://" in str(location):
            db, location = str(location), None
        folder = Path(location).expanduser() if location is not None else default_index_folder()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder}: the index location is a file, not a folder")
        if not create and db is None and not (folder / SQLITE_FILE_NAME).is_file():
            # A read-only command with a mistyped --index must not leave an empty library behind.
            raise ConfigError(f"no library at {folder}: `lbsearch index PATH --index {folder}` creates one")
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, Database.open(db or folder), device=device, dtype=dtype)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- models

    @property
    def models(self) -> dict[str, str]:
        """The model set recorded with this library: ``{modality: hub id or folder}``."""
        return dict(self.db.get_setting(MODEL_SET_SETTING) or {})

    def use_models(self, models: str | Mapping[str, str]) -> dict[str, str]:
        """Record the model set (a named set such as "demo" or "languagebind", or ``{modality: checkpoint}``).

        Named modalities replace those of the current set; others stay. Later runs and searches use it.
        """
        chosen = model_set(models) if isinstance(models, str) else dict(models)
        check_all(list(chosen))
        merged = {**self.models, **chosen}
        self.db.set_setting(MODEL_SET_SETTING, merged)
        self._encoders = {key: enc for key, enc in self._encoders.items() if merged.get(key[0]) == enc.source}
        return merged

    def encoder(self, modality: str, *, text_only: bool = False) -> Encoder:
        """The loaded encoder of ``modality`` (loading it on first use)."""
        lookup(modality)
        for key in ((modality, False), (modality, True)) if text_only else ((modality, False),):
            if key in self._encoders:
                return self._encoders[key]
        source = self.models.get(modality)
        if source is None:
            raise ConfigError(
                f"no {modality} model in this library's model set; choose one with "
                f"`lbsearch index --model {modality}=HUB_ID_OR_FOLDER` or `--models NAME` "
                f"({', '.join(MODEL_SETS)})"
            )
        shared = next((e for e in self._encoders.values() if e.text is not None), None)
        encoder = load_checkpoint(
            source, self.device, self.dtype, text_tower=shared, towers=("text",) if text_only else ("vision", "text")
        )
        if encoder.modality != modality:
            raise ConfigError(f"{source} is a {encoder.modality} checkpoint, but is set for {modality}")
        self._encoders[(modality, text_only)] = encoder
        return encoder

    def model_id(self, modality: str) -> int:
        """The database id of the set's model for ``modality`` (registered when it first indexed something)."""
        ids = self.db.get_setting(MODEL_IDS_SETTING) or {}
        source = self.models.get(modality)
        entry = ids.get(modality)
        if entry is None or entry["source"] != source:
            encoder = self.encoder(modality, text_only=True)
            model_id = self.db.register_model(source, modality, encoder.weights_hash, encoder.dim)
            self.db.set_setting(MODEL_IDS_SETTING, {**ids, modality: {"source": source, "id": model_id}})
            return model_id
        return int(entry["id"])

    def _recall_queries(self, model_id: int, modality: str) -> np.ndarray | None:
        """Queries to tune approximate indexes on: text prompts, and stored vectors of the other modalities
        (emergent X->Y queries land in their own regions of the space, away from both text and the index)."""
        from lbsearch.search.templates import prompts_for, templates_for

        record = self.db.model(model_id)
        if self.models.get(modality) != record.name:
            return None
        names = ["person", "dog", "car", "music", "rain", "city street", "beach", "kitchen", "night", "crowd"]
        prompts = [p for name in names for p in prompts_for(name, templates_for(modality)[:10])]
        queries = [self.encoder(modality, text_only=True).encode_text(prompts).numpy()]
        for other_id, other in self.db.vector_groups():
            if other != modality and self.db.model(other_id).dim == record.dim:
                queries.append(self.db.sample_vectors(other_id, other, 100))
        return np.concatenate(queries)

    # ---------------------------------------------------------------------------------------- ingestion

    def add(
        self,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        *,
        as_modality: str | None = None,
        options: IngestOptions | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
        ray: str | None = None,
    ) -> IngestReport:
        """Index folders (recursively): new and changed files are embedded, moved ones recognised, deleted ones
        dropped. ``as_modality`` ("depth", "thermal", "image") says what the images under these folders are.

        ``ray`` decodes and encodes on a Ray cluster instead of this machine's processes: "local" (start Ray
        here), "auto" (the cluster this machine is part of) or "ray://HOST:PORT". Planning and commits stay here.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        roots = [ScanRoot(Path(p).expanduser(), as_modality) for p in paths]
        if not self.models:
            raise ConfigError("no model set chosen: pass --models NAME or --model MODALITY=CHECKPOINT")
        if ray is None:
            encoders = {m: self.encoder(m) for m in self.models}
            model_ids = {m: self.model_id(m) for m in self.models}
            report = Ingestor(self.db, encoders, model_ids, options or IngestOptions(), progress).run(roots)
        else:
            report = self._add_over_ray(roots, ray, options, progress)
        self.store.sync_all()
        return report

    def _add_over_ray(
        self,
        roots: list[ScanRoot],
        address: str,
        options: IngestOptions | None,
        progress: Callable[[IngestProgress], None] | None,
    ) -> IngestReport:
        # Imported here: without --ray, Ray is never imported.
        from lbsearch.ingest import cluster

        connected = cluster.connect(address)
        try:
            # The driver plans and commits only: the actors load the modality towers.
            encoders = {m: self.encoder(m, text_only=True) for m in self.models}
            model_ids = {m: self.model_id(m) for m in self.models}
            # A precision chosen for this library holds on the cluster too; else each actor takes its device's.
            dtype = None if self.dtype == default_dtype(self.device) else self.dtype
            ingestor = cluster.RayIngestor(self.db, encoders, model_ids, options, progress, dtype=dtype)
            return ingestor.run(roots)
        finally:
            if connected:
                cluster.disconnect()

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Forget files (or every file under folders); returns how many. Files on disk are not touched."""
        targets = [str(Path(p).expanduser().resolve()) for p in paths]
        ids = {r.id for r in self.db.files_under(targets)}
        ids |= {r.id for t in targets if (r := self.db.file_by_path(t)) is not None}
        self.db.delete_files(sorted(ids))
        self.store.sync_all()
        return len(ids)

    def reindex(self, factory: str | None = None) -> list[dict[str, Any]]:
        """Rebuild every FAISS index from the stored vectors (nothing is re-embedded).

        ``factory`` forces a FAISS factory string from now on ("" returns to the automatic choice).
        """
        if factory is not None:
            self.db.set_setting("index_factory", factory or None)
        return [
            {"model_id": m, "modality": mod, **self.store.rebuild(m, mod).info} for m, mod in self.db.vector_groups()
        ]

    # ------------------------------------------------------------------------------------------- health

    def status(self) -> dict[str, Any]:
        """Counts per modality and model, index health, and the files that failed with their reasons."""
        counts = self.db.counts()
        indexes = []
        for model_id, modality in self.db.vector_groups():
            path = self.store.path(model_id, modality)
            info = self.store.index(model_id, modality).info if path.exists() else {}
            indexes.append({"model_id": model_id, "modality": modality, "file": str(path), **info})
        return {
            "folder": str(self.folder),
            "database": self.db.url.render_as_string(hide_password=True),
            "models": self.models,
            **counts,
            "indexes": indexes,
            "failed": [{"path": f.path, "error": f.error} for f in self.db.failed_files()],
        }

    def files(self, status: str | None = "ok") -> list[FileRecord]:
        """The library's files (default: those embedded), by path."""
        return self.db.files(status)

    def verify(self) -> list[Disagreement]:
        return self.store.verify()

    def repair(self) -> list[Disagreement]:
        return self.store.repair()

    def search(
        self,
        text: str | None = None,
        *,
        like: str | os.PathLike | QueryPart | None = None,
        parts: Sequence[tuple[str | os.PathLike | QueryPart, float]] | None = None,
        modalities: Sequence[str] | None = None,
        k: int = 10,
        offset: int = 0,
        fuse: str = "sum",
        weights: Mapping[str, float] | None = None,
        group: str | None = None,
        filters: Filters | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """Search the library.

        - ``text``: a sentence (text->X); ``like``: a file on disk, a `FileQuery`/`StoredQuery` (X->Y);
          ``parts``: weighted query parts combined into one query, negative weights allowed.
        - ``modalities``: which indexes to search (default: every indexed modality). Several at once give
          joint retrieval: each item is scored across them with ``fuse`` ("sum", "temperature" or "rrf") and
          ``weights`` per modality.
        - ``group``: "file" (best moment per file; the default for one modality), "item" (the default for
          several) or "segment" (every matching window). ``k`` hits from ``offset``.
        - ``filters`` on file metadata; ``min_score``: a cut-off on the calibrated (z-)score.
        """
        return engine.search(
            self,
            text,
            like=like,
            parts=parts,
            modalities=modalities,
            k=k,
            offset=offset,
            fuse_mode=fuse,
            weights=dict(weights) if weights else None,
            group=group,
            filters=filters,
            min_score=min_score,
        )

    def classify(
        self, class_names: Sequence[str], modality: str, file_ids: Sequence[int] | None = None, k: int = 1
    ) -> dict[int, list[tuple[str, float]]]:
        """Zero-shot labels for indexed files of ``modality`` (official prompt templates): ``{file_id: [(label,
        probability), ...]}``."""
        return engine.classify(self, class_names, modality, file_ids, k)
