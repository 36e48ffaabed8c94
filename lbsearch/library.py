"""`Library`: the one entry point of the Python API. An index folder (or database URL) plus a model set.

    lib = Library.open("indexes/")                      # or Library.open(db="postgresql://...")
    lib.use_models("demo")                              # or {"video": "LanguageBind/LanguageBind_Video_FT", ...}
    lib.add("~/Videos")                                 # scan, embed, index
    hits = lib.search("a dog barking at night", modalities=["video", "audio"], k=10)

Encoders are loaded lazily, once per process, and only the towers a call needs (text queries load only the
language tower).

A library whose folder cannot be written (a read-only mount, a shared NAS) opens read-only: search, status and
verify work; what writes (add, remove, reindex, repair, use_models) raises `ReadOnlyLibraryError` up front.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lbsearch.errors import ConfigError, ReadOnlyLibraryError, StorageError
from lbsearch.models import Encoder
from lbsearch.models import precision as precisions
from lbsearch.models.precision import AUTO
from lbsearch.modelset import ModelSet
from lbsearch.search.engine import SearchEngine
from lbsearch.search.request import SearchRequest
from lbsearch.search.results import Hit
from lbsearch.storage.database import SQLITE_FILE_NAME, Database
from lbsearch.storage.records import FileRecord
from lbsearch.storage.store import Disagreement, IndexStore

if TYPE_CHECKING:  # ingestion imports the media readers (seconds), which searching never needs
    from lbsearch.ingest.pipeline import IngestOptions, IngestProgress, IngestReport
    from lbsearch.ingest.scan import ScanRoot

DEFAULT_INDEX = "indexes"
# Approximate indexes are tuned on text prompts about these (comma-separated), in the first TUNING_TEMPLATES
# templates of the indexed modality: everyday subjects, places, sounds and weather, so that tuning spans more of
# the text region than the words of any one library.
TUNING_VOCABULARY = (
    "person, child, crowd, dog, cat, bird, horse, fish, car, bus, train, bicycle, airplane, boat, street, "
    "city at night, forest, beach, mountain, river, kitchen, office, classroom, stadium, concert, music, guitar, "
    "piano, drums, speech, laughter, applause, engine, siren, rain, thunder, wind, snow, fire, water, food, "
    "cooking, dancing, running, swimming, football, phone, computer, book, chair, door, window, tree, flower, "
    "sky, sunset, shadow, a hot object, a cold room, a close-up face"
)
TUNING_TEMPLATES = 4
# Stored vectors per other modality, and encoder probes per modality without vectors, to tune on.
TUNING_SAMPLE = 200
ENCODER_PROBES = 24


def default_index_folder() -> Path:
    return Path(os.environ.get("LBSEARCH_INDEX", DEFAULT_INDEX)).expanduser()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Library:
    def __init__(self, folder: Path, db: Database, device: str | None = None, precision: str = AUTO):
        self.folder = folder
        self.db = db
        self.device = device or default_device()
        self.precision = precisions.check(precision, self.device)
        self.model_set = ModelSet(db, self.device, self.precision)
        self.store = IndexStore(db, folder, recall_queries=self._recall_queries)
        self.engine = SearchEngine(db, self.store, self.model_set)

    @classmethod
    def open(
        cls,
        location: str | os.PathLike | None = None,
        *,
        db: str | None = None,
        device: str | None = None,
        precision: str = AUTO,
        create: bool = True,
    ) -> Library:
        """Open a library, creating it if needed (``create=False``: a folder without its database is an error).

        ``location`` is the index folder (default ``$LBSEARCH_INDEX`` or ``./indexes``) or a database URL;
        ``db`` points the metadata at another database (e.g. PostgreSQL) while FAISS files stay in the folder.
        ``precision`` is what the encoders run at (`lbsearch.models.precision`): ``auto`` (the fastest that
        agrees with fp32 on this machine, measured once), ``fp32``, ``bf16``, ``int8`` (CPU) or ``fp16`` (CUDA).
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
        return cls(folder, Database.open(db or folder), device=device, precision=precision)

    def close(self) -> None:
        self.db.close()

    @property
    def read_only(self) -> bool:
        """Whether the database or the folder of the FAISS files cannot be written."""
        return self.db.read_only or not os.access(self.folder, os.W_OK)

    def _require_writable(self, doing: str) -> None:
        if self.read_only:
            raise ReadOnlyLibraryError(
                f"{self.folder}: the library is read-only (its folder cannot be written), so it cannot {doing}; "
                "search, status and verify work"
            )

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- models

    @property
    def models(self) -> dict[str, str]:
        """The model set recorded with this library: ``{modality: hub id or folder}``."""
        return self.model_set.sources

    def use_models(self, models: str | Mapping[str, str]) -> dict[str, str]:
        """Record the model set (a named set such as "demo" or "languagebind", or ``{modality: checkpoint}``).

        Named modalities replace those of the current set; others stay. Later runs and searches use it.
        """
        self._require_writable("record a model set")
        return self.model_set.use(models)

    def encoder(self, modality: str, *, text_only: bool = False) -> Encoder:
        """The loaded encoder of ``modality`` (loading it on first use)."""
        return self.model_set.encoder(modality, text_only=text_only)

    def model_id(self, modality: str) -> int:
        """The database id of the set's model for ``modality`` (registered when it first indexed something)."""
        return self.model_set.model_id(modality)

    def _recall_queries(self, model_id: int, modality: str) -> dict[str, np.ndarray] | None:
        """Queries to tune approximate indexes on, by kind: text prompts over a broad vocabulary, and for every
        other modality of the model set its stored vectors or, where it has none yet, probes its encoder makes
        of toy-world scenes (emergent X->Y queries land in their own regions of the space, away from both text
        and the index, and a modality indexed later must not find an index that never saw its queries)."""
        from lbsearch.search.templates import prompts_for, templates_for

        record = self.db.model(model_id)
        if self.models.get(modality) != record.name:
            return None
        templates = templates_for(modality)[:TUNING_TEMPLATES]
        prompts = [prompt for name in TUNING_VOCABULARY.split(", ") for prompt in prompts_for(name, templates)]
        queries = {"text": self.encoder(modality, text_only=True).encode_text(prompts).numpy()}
        stored = {
            other: other_id
            for other_id, other in self.db.vector_groups()
            if other != modality and self.db.model(other_id).dim == record.dim
        }
        for other in self.models:
            if other in stored:
                queries[other] = self.db.sample_vectors(stored[other], other, TUNING_SAMPLE)
            elif other != modality and (encoder := self.encoder(other)).dim == record.dim:
                queries[f"{other} probes"] = _encoder_probes(encoder)
        return queries

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
        from lbsearch.ingest.pipeline import IngestOptions, Ingestor
        from lbsearch.ingest.scan import ScanRoot

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self._require_writable("index files")
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
            # The library's precision holds on the cluster too (``auto``: each actor measures its own device).
            ingestor = cluster.RayIngestor(self.db, encoders, model_ids, options, progress, precision=self.precision)
            return ingestor.run(roots)
        finally:
            if connected:
                cluster.disconnect()

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Forget files (or every file under folders); returns how many. Files on disk are not touched."""
        self._require_writable("remove files")
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
        self._require_writable("rebuild its indexes")
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
        """What is wrong: the database's own integrity (SQLite's check), then every way the FAISS files and the
        database disagree."""
        return self._database_damage() or self.store.verify()

    def repair(self) -> list[Disagreement]:
        """Rebuild what `verify` finds wrong with the FAISS files (a damaged database cannot be repaired here)."""
        self._require_writable("repair its indexes")
        return self._database_damage() or self.store.repair()

    def _database_damage(self) -> list[Disagreement]:
        try:
            damage = self.db.integrity_problems()
        except StorageError as exc:
            return [Disagreement(-1, "", str(exc))]
        if not damage:
            return []
        shown = "; ".join(damage[:3]) + (f"; and {len(damage) - 3} more" if len(damage) > 3 else "")
        advice = "restore it from a backup, or start a new library"
        return [Disagreement(-1, "", f"{self.db.name} is damaged ({shown}): {advice}")]

    def search(self, text: str | None = None, *, request: SearchRequest | None = None, **options: Any) -> list[Hit]:
        """Search the library with a sentence (``text``: text->X) and ``options``, or with a whole ``request``.

        ``options`` are those of `SearchRequest.of`: ``like`` (a file on disk or a `StoredQuery`: X->Y), ``parts``
        (weighted query parts, negative weights allowed), ``modalities`` (several: joint retrieval, fused with
        ``fuse`` and ``weights``), ``k``, ``offset``, ``group``, ``filters`` and ``min_score``.
        """
        if request is None:
            request = SearchRequest.of(text, **options)
        elif text is not None or options:
            raise ConfigError("give a SearchRequest, or a text and options, not both")
        return self.engine.search(request)

    def classify(
        self, class_names: Sequence[str], modality: str, file_ids: Sequence[int] | None = None, k: int = 1
    ) -> dict[int, list[tuple[str, float]]]:
        """Zero-shot labels for indexed files of ``modality`` (official prompt templates): ``{file_id: [(label,
        probability), ...]}``."""
        return self.engine.classify(class_names, modality, file_ids, k)


def _encoder_probes(encoder: Encoder) -> np.ndarray:
    """Embeddings of ENCODER_PROBES toy-world scenes written as files of the encoder's modality: what it makes
    of real inputs of its kind, for a modality with no vectors in the library."""
    from lbsearch.toyworld.render import LibraryLayout, write_scene
    from lbsearch.toyworld.world import World

    layout = LibraryLayout(modalities=(encoder.modality,), mux_audio=False)
    with tempfile.TemporaryDirectory() as folder:
        scenes = World().scenes("train", ENCODER_PROBES)
        paths = [write_scene(scene, folder, layout=layout)[encoder.modality] for scene in scenes]
        batch = torch.stack([encoder.preprocess(path) for path in paths])
        return encoder.encode(batch, batch_size=8).numpy()
