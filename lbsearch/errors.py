"""Typed errors. Every error names what it is about (a file, a checkpoint, a query) and why."""

from __future__ import annotations

from pathlib import Path


class LbsearchError(Exception):
    """Base class of every error lbsearch raises on purpose."""


class MediaError(LbsearchError):
    """A media file that cannot be decoded or preprocessed."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(LbsearchError):
    """A checkpoint that cannot be found, read or matched to its architecture."""


class ConfigError(LbsearchError):
    """A config.json (or a user option) that does not describe a usable model."""
