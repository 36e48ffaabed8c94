"""Every error lbsearch raises on purpose. Each names what it is about (a file, a checkpoint, a query) and why.

Errors about one file (`PathError` and its kinds) carry the path and the reason apart, and pickle as such, so
one raised in a worker process (a decode worker, a DataLoader worker, a Ray task) comes back as itself.
"""

from __future__ import annotations

from pathlib import Path


class LbsearchError(Exception):
    """Base class of every error lbsearch raises on purpose."""


class PathError(LbsearchError):
    """Something wrong with one file or folder: ``path`` and ``reason`` are kept apart."""

    def __init__(self, path: str | Path | bytes, reason: str):
        self.path = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.reason)


class MediaError(PathError):
    """A media file that cannot be decoded or preprocessed."""


class IndexFileError(PathError):
    """An index file that cannot be written or read back (missing, truncated, corrupt): rebuild it."""


class StorageError(LbsearchError):
    """The library's own storage failed (its database or disk: a corrupt file, a full disk, an I/O error); a run
    stops, and what it committed stays."""


class CheckpointError(LbsearchError):
    """A checkpoint that cannot be found, read or matched to its architecture."""


class ConfigError(LbsearchError):
    """A config.json (or a user option) that does not describe a usable model, library or run."""


class QueryError(LbsearchError):
    """A query that cannot be answered as asked (empty, unknown fusion mode, nothing indexed, ...)."""


class VectorIndexError(LbsearchError):
    """Vectors, ids, queries or a factory string the index cannot use."""


class CalibrationError(LbsearchError):
    """A background sample or a stored calibration that cannot calibrate scores."""


class MetricsError(LbsearchError):
    """Inputs to a metric that do not describe an evaluation (wrong shapes, NaN scores, no ground truth)."""


class DatasetError(LbsearchError):
    """A benchmark folder that does not hold the layout its adapter reads."""


class ReadOnlyLibraryError(LbsearchError):
    """A command that writes (index, remove, reindex, verify --repair) on a library that cannot be written."""


class ClusterError(LbsearchError):
    """A Ray cluster that cannot run an ingest: Ray not installed, an address it cannot join, a node that cannot
    see a root."""


