"""Library discovery and planning: which media files exist, what they are, and what an ingest has to do.

Nothing here writes to the database. `scan` walks root folders; `plan` compares a scan with the database and
sorts every file into new, changed, unchanged, touched, moved or deleted, for the pipeline to carry out.

Content hash: blake2b (160 bits) of the file size and its first, middle and last MiB (the whole file when it
is at most 3 MiB). Reading 3 MiB keeps hashing a large video cheap while any re-encode, trim or edit that
changes the size or one of those regions changes the hash; the price is that an edit of the same size that
spares all three regions counts as a touch (stat updated, not re-embedded). It is computed only for files
that are new or whose size or mtime changed, so a second scan of an unchanged library only calls stat().
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lbsearch import modalities
from lbsearch.errors import ConfigError, MediaError
from lbsearch.modalities import IMAGE_MODALITIES
from lbsearch.storage.database import Database
from lbsearch.storage.records import FileRecord

log = logging.getLogger(__name__)

# Folders that say what kind of frame they hold. A frame in one of them shares its item with the frames of the
# same name in sibling folders (scene/rgb/0001.jpg, scene/depth/0001.png: NYU-D; visible/, infrared/: LLVIP).
FRAME_FOLDERS = {
    "depth": "depth",
    "thermal": "thermal",
    "infrared": "thermal",
    "ir": "thermal",
    "rgb": "image",
    "image": "image",
    "images": "image",
    "visible": "image",
    "color": "image",
    "colour": "image",
}
HASH_SAMPLE_BYTES = 1 << 20
HASH_THREADS = 4


@dataclass(frozen=True)
class ScanRoot:
    """A folder to index; `as_modality` makes every image in it a depth map, a thermal frame or a photo."""

    path: Path
    as_modality: str | None = None


@dataclass(frozen=True)
class ScannedFile:
    """A media file found on disk. `path` and `root` are absolute and symlink-free."""

    path: str
    root: str
    size: int
    mtime_ns: int
    modality: str
    item_key: str


@dataclass(frozen=True)
class FileTask:
    """A file to embed; `file_id` is its database row when it has one (changed, or left unfinished)."""

    file: ScannedFile
    content_hash: str | None
    file_id: int | None = None


@dataclass(frozen=True)
class Relocation:
    """A file whose content is already embedded but whose path or stat changed: update the row, keep vectors."""

    file_id: int
    old_path: str
    file: ScannedFile


@dataclass
class Plan:
    """What an ingest run has to do to bring the database in line with the folders scanned."""

    new: list[FileTask] = field(default_factory=list)
    changed: list[FileTask] = field(default_factory=list)
    # Same content as recorded, but never finished (a run was interrupted) or failed and asked to be retried.
    retry: list[FileTask] = field(default_factory=list)
    touched: list[Relocation] = field(default_factory=list)
    moved: list[Relocation] = field(default_factory=list)
    deleted: list[FileRecord] = field(default_factory=list)
    unchanged: list[FileRecord] = field(default_factory=list)

    @property
    def to_embed(self) -> list[FileTask]:
        return [*self.new, *self.changed, *self.retry]

    def summary(self) -> dict[str, int]:
        return {
            name: len(getattr(self, name))
            for name in ("new", "changed", "retry", "touched", "moved", "deleted", "unchanged")
        }


def content_hash(path: str | Path) -> str:
    """The content hash of a file (see the module docstring for what it reads)."""
    digest = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            digest.update(size.to_bytes(8, "little"))
            if size <= 3 * HASH_SAMPLE_BYTES:
                digest.update(stream.read())
            else:
                for offset in (0, (size - HASH_SAMPLE_BYTES) // 2, size - HASH_SAMPLE_BYTES):
                    stream.seek(offset)
                    digest.update(stream.read(HASH_SAMPLE_BYTES))
    except OSError as error:
        raise MediaError(path, f"cannot be read: {error.strerror or error}") from error
    return digest.hexdigest()




def scan(roots: Iterable[str | Path | ScanRoot], *, include_hidden: bool = False) -> list[ScannedFile]:
    """Every media file under the roots, sorted by path.

    Symlinks are followed only where they lead to a place inside their root, and every file is reported once,
    under its real path. Names starting with a dot are skipped unless `include_hidden`. When roots overlap,
    a file belongs to the innermost one (so its `as_modality` applies).
    """
    found: dict[str, ScannedFile] = {}
    for root in sorted(_checked_roots(roots), key=lambda root: root.path.parts, reverse=True):
        for path, stat, modality in _walk(root.path, include_hidden):
            if path not in found:
                found[path] = _describe(path, stat, modality, root)
    return sorted(found.values(), key=lambda scanned: scanned.path)


def plan(
    db: Database,
    roots: Iterable[str | Path | ScanRoot],
    *,
    include_hidden: bool = False,
    retry_failed: bool = False,
) -> Plan:
    """Compare the files under the roots with what the database holds, hashing only new or restated files.

    A file absent from its recorded path whose content reappears at a new path (in these roots, or anywhere
    when the old path is outside them and gone) is a move: its vectors are kept.
    """
    checked = _checked_roots(roots)
    scanned = scan(checked, include_hidden=include_hidden)
    root_paths = [str(root.path) for root in checked]
    known = {record.path: record for record in db.files_under(root_paths)}
    result = Plan()
    arrivals: list[ScannedFile] = []
    restated: list[tuple[ScannedFile, FileRecord]] = []
    for file in scanned:
        record = known.pop(file.path, None)
        if record is None:
            arrivals.append(file)
        elif (file.size, file.mtime_ns) == (record.size, record.mtime_ns):
            _sort_known(result, file, record, record.content_hash, retry_failed)
        else:
            restated.append((file, record))
    digests = _hashes([file.path for file, _ in restated] + [file.path for file in arrivals])
    for file, record in restated:
        _sort_known(result, file, record, digests[file.path], retry_failed)

    # What is left in `known` is no longer on disk: moved away, or deleted. Outside the roots, a file with the
    # content of an arrival may have moved too, when its recorded path is gone.
    vanished: dict[str | None, list[FileRecord]] = defaultdict(list)
    for record in known.values():
        vanished[record.content_hash].append(record)
    elsewhere = db.files_with_hashes({digest for file in arrivals if (digest := digests[file.path]) is not None})
    for digest, records in elsewhere.items():
        vanished[digest] += [record for record in records if not _is_under(record.path, root_paths)]
    moved_ids: set[int] = set()
    for file in arrivals:
        origin = _origin(file, digests[file.path], vanished, moved_ids)
        if origin is None:
            result.new.append(FileTask(file, digests[file.path]))
        else:
            moved_ids.add(origin.id)
            result.moved.append(Relocation(origin.id, origin.path, file))
    result.deleted = [record for record in known.values() if record.id not in moved_ids]
    return result


# ------------------------------------------------------------------------------------------ helpers


def _checked_roots(roots: Iterable[str | Path | ScanRoot]) -> list[ScanRoot]:
    """Roots as absolute real folders, each checked; a folder given twice must not disagree with itself."""
    checked: dict[Path, ScanRoot] = {}
    for given in roots:
        root = given if isinstance(given, ScanRoot) else ScanRoot(Path(given))
        path = Path(root.path)
        if root.as_modality is not None and root.as_modality not in IMAGE_MODALITIES:
            raise ConfigError(
                f"{path}: cannot index as {root.as_modality!r}; the choices are {', '.join(IMAGE_MODALITIES)}"
            )
        if not path.is_dir():
            reason = "is not a folder" if path.exists() else "does not exist"
            raise ConfigError(f"library root {path} {reason}")
        real = Path(os.path.realpath(path))
        previous = checked.setdefault(real, ScanRoot(real, root.as_modality))
        if previous.as_modality != root.as_modality:
            raise ConfigError(
                f"library root {real} is given twice, as {previous.as_modality!r} and as {root.as_modality!r}"
            )
    return list(checked.values())


def _walk(root: Path, include_hidden: bool) -> Iterator[tuple[str, os.stat_result, str]]:
    """(real path, stat, modality by extension) of each media file under a real root, which it never leaves."""
    root_prefix = str(root).rstrip("/") + "/"
    seen_folders = {str(root)}
    seen_files: set[str] = set()
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            log.warning("skipping folder %s: %s", folder, error.strerror or error)
            continue
        for entry in entries:
            if entry.name.startswith(".") and not include_hidden:
                continue
            real = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
            if not real.startswith(root_prefix):
                continue
            try:
                if entry.is_dir():
                    if real not in seen_folders:
                        seen_folders.add(real)
                        pending.append(real)
                elif entry.is_file() and real not in seen_files:
                    modality = modalities.of_file(real)
                    if modality is not None:
                        seen_files.add(real)
                        yield real, os.stat(real), modality
            except OSError as error:  # gone since it was listed, or unreadable: not part of the library now
                log.warning("skipping %s: %s", entry.path, error.strerror or error)


def _describe(path: str, stat: os.stat_result, modality: str, root: ScanRoot) -> ScannedFile:
    # The root's own name counts as a folder on the path: pointing at .../depth means depth maps.
    folders = (root.path.name, *Path(path).relative_to(root.path).parts[:-1])
    frame_level = next(
        (level for level in range(len(folders) - 1, -1, -1) if folders[level].lower() in FRAME_FOLDERS), None
    )
    if modality == "image":
        if root.as_modality is not None:
            modality = root.as_modality
        elif frame_level is not None:
            modality = FRAME_FOLDERS[folders[frame_level].lower()]
    if modality in IMAGE_MODALITIES and frame_level is not None:
        # scene/depth/0001.png and scene/rgb/0001.jpg -> scene/0001 (whatever lies between is kept).
        scene = root.path.parent.joinpath(*folders[:frame_level])
        below = Path(*folders[frame_level + 1 :], Path(path).stem)
        item_key = f"scene:{scene / below}"
    else:
        item_key = f"file:{path}"
    return ScannedFile(path, str(root.path), stat.st_size, stat.st_mtime_ns, modality, item_key)


def _sort_known(result: Plan, file: ScannedFile, record: FileRecord, digest: str | None, retry_failed: bool) -> None:
    """Put a file that is on disk at its recorded path into the right list of the plan."""
    same_stat = (file.size, file.mtime_ns) == (record.size, record.mtime_ns)
    same_content = same_stat or (digest is not None and digest == record.content_hash)
    unfinished = record.status == "pending" or (record.status == "error" and retry_failed)
    if not same_content or not _same_kind(file, record):  # e.g. a root now indexed `as_modality="depth"`
        result.changed.append(FileTask(file, digest, record.id))
    elif unfinished:
        result.retry.append(FileTask(file, digest, record.id))
    elif same_stat and (file.root, file.item_key) == (record.root, record.item_key):
        result.unchanged.append(record)
    else:
        result.touched.append(Relocation(record.id, record.path, file))


def _same_kind(file: ScannedFile, record: FileRecord) -> bool:
    """Whether a file on disk is what its record was embedded as: its own modality, or (found on decoding) its
    companion track's alone (a video container holding only sound was embedded as audio)."""
    return record.modality in modalities.embedded_as(file.modality)


def _hashes(paths: Sequence[str]) -> dict[str, str | None]:
    """The content hash of each file, None for a file that cannot be read (the pipeline then records why).

    Threads overlap the reads (hashlib lets go of the GIL on large buffers).
    """

    def hash_or_none(path: str) -> str | None:
        try:
            return content_hash(path)
        except MediaError as error:
            log.warning("%s", error)
            return None

    if len(paths) < 2:
        return {path: hash_or_none(path) for path in paths}
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        return dict(zip(paths, pool.map(hash_or_none, paths), strict=True))


def _is_under(path: str, folders: Sequence[str]) -> bool:
    return any(path.startswith(folder.rstrip("/") + "/") for folder in folders)


def _origin(
    file: ScannedFile, digest: str | None, vanished: dict[str | None, list[FileRecord]], moved_ids: set[int]
) -> FileRecord | None:
    """The embedded file that a newly found file was moved from, if there is one (each is used once)."""
    if digest is None:
        return None
    for record in vanished.get(digest, ()):
        # Same content at a new path, embedded as the same modality (not moved from rgb/ to depth/, say).
        usable = record.status == "ok" and _same_kind(file, record) and record.id not in moved_ids
        if usable and not os.path.lexists(record.path):
            return record
    return None
