"""The modality table: the one place that says what each of LanguageBind's modalities is.

Every other module asks this table (which modalities exist, which extensions are read as what, which ones
have a time axis, which ones are images) instead of spelling the answer out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lbsearch.errors import ConfigError

_VIDEO_FILES = frozenset({"mp4", "mov", "mkv", "webm", "avi", "m4v"})
_AUDIO_FILES = frozenset({"wav", "flac", "mp3", "ogg", "opus", "m4a", "aac"})
_IMAGE_FILES = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"})


@dataclass(frozen=True)
class Modality:
    """What lbsearch knows about one modality."""

    name: str
    # Extensions of the files it is read from. Depth maps and thermal frames are image files: what an image is
    # comes from its folder or the root's option, so they share the image extensions.
    extensions: frozenset[str]
    # Has a time axis: indexed in windows, and a query may name a start and an end.
    timed: bool
    # A track of the same file that is embedded as another modality too (a video's sound is audio).
    companion: str | None
    # Stored as an image file (a photo, a depth map, a thermal frame).
    image_like: bool


TABLE: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("video", _VIDEO_FILES, timed=True, companion="audio", image_like=False),
        Modality("audio", _AUDIO_FILES, timed=True, companion=None, image_like=False),
        Modality("depth", _IMAGE_FILES, timed=False, companion=None, image_like=True),
        Modality("thermal", _IMAGE_FILES, timed=False, companion=None, image_like=True),
        Modality("image", _IMAGE_FILES, timed=False, companion=None, image_like=True),
    )
}
MODALITIES: tuple[str, ...] = tuple(TABLE)
# A photo first: what an image file is unless its folder or the root's option says otherwise.
IMAGE_MODALITIES: tuple[str, ...] = tuple(sorted((m for m in MODALITIES if TABLE[m].image_like), key="image".__ne__))
TIMED_MODALITIES: tuple[str, ...] = tuple(m for m in MODALITIES if TABLE[m].timed)
# Every extension lbsearch reads, and the modality a file of it is before any folder or option says otherwise.
FILE_MODALITY: dict[str, str] = {
    extension: name for name in ("video", "audio", "image") for extension in sorted(TABLE[name].extensions)
}
MEDIA_EXTENSIONS: tuple[str, ...] = tuple(sorted(FILE_MODALITY))


def lookup(name: str, where: str | None = None) -> Modality:
    """The table's entry for ``name``; an unknown name is a `ConfigError` listing the known ones (prefixed
    with ``where`` it was found, when given)."""
    try:
        return TABLE[name]
    except (KeyError, TypeError):
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown modality {name!r}; expected one of {', '.join(MODALITIES)}") from None


def check_all(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """``names`` (one or several), each checked against the table."""
    return [lookup(n).name for n in ([names] if isinstance(names, str) else names)]


def of_file(path: str | Path) -> str | None:
    """video, audio or image from a file's extension; None for anything else."""
    return FILE_MODALITY.get(Path(path).suffix.lower().lstrip("."))


def embedded_as(file_modality: str) -> tuple[str, ...]:
    """The modalities a file of ``file_modality`` is embedded as: its own, then its companion track's."""
    entry = lookup(file_modality)
    return (entry.name, entry.companion) if entry.companion else (entry.name,)
