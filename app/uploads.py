"""Uploaded query files: kept in a private temporary folder, under a name that cannot leave it.

The browser sends any name it likes ("../../x.wav", "/etc/passwd", "C:\\evil.mp4"); only the last component,
reduced to a few safe characters, is used, prefixed with the content's digest (so the same upload, seen again on
every Streamlit rerun, is written once). Files larger than the limit, empty files and files that are not media
lbsearch can read are refused with a `MediaError` naming the upload and the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from lbsearch import modalities
from lbsearch.errors import ConfigError, MediaError
from lbsearch.modalities import MEDIA_EXTENSIONS
from lbsearch.preprocess.probe import probe

UPLOAD_LIMIT_ENV = "LBSEARCH_UPLOAD_MB"
DEFAULT_LIMIT_MB = 200
MAX_NAME_LENGTH = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MEGABYTE = 1 << 20


def upload_limit_mb() -> int:
    """The upload size limit in MB: ``$LBSEARCH_UPLOAD_MB`` or 200."""
    value = os.environ.get(UPLOAD_LIMIT_ENV, str(DEFAULT_LIMIT_MB))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{UPLOAD_LIMIT_ENV}={value!r}: expected a whole number of megabytes >= 1")
    return int(value)


def safe_name(name: str) -> str:
    """The last path component of ``name`` in letters, digits, ".", "_" and "-", without leading dots.

    MediaError when nothing usable is left or the extension is not one of a media file.
    """
    last = re.split(r"[\\/]", unicodedata.normalize("NFKC", name))[-1]
    cleaned = _UNSAFE.sub("_", last).lstrip("._-")
    stem, dot, extension = cleaned.rpartition(".")
    if not dot or not stem or modalities.of_file(cleaned) is None:
        raise MediaError(
            name, f"not a media file lbsearch can read; expected one of the extensions {', '.join(MEDIA_EXTENSIONS)}"
        )
    return f"{stem[: MAX_NAME_LENGTH - len(extension) - 1]}.{extension.lower()}"


class UploadFolder:
    """A private (mode 0700) temporary folder for query uploads, removed by `cleanup`."""

    def __init__(self, avoid: Iterable[str | os.PathLike] = ()):
        """``avoid``: folders uploads must never land in (the library's index and media folders)."""
        self.path = Path(tempfile.mkdtemp(prefix="lbsearch-uploads-")).resolve()
        for folder in avoid:
            if self.path.is_relative_to(Path(folder).expanduser().resolve()):
                shutil.rmtree(self.path)
                raise ConfigError(
                    f"the temporary folder {self.path} lies inside the library folder {folder}; "
                    "point TMPDIR somewhere else so uploads stay out of the library"
                )

    def save(self, name: str, data: bytes, limit_mb: int) -> Path:
        """Write an upload (once per content) and check that it is media lbsearch can read; its path."""
        if len(data) > limit_mb * _MEGABYTE:
            raise MediaError(name, f"file too large: {len(data) / _MEGABYTE:.1f} MB, the limit is {limit_mb} MB")
        if not data:
            raise MediaError(name, "file is empty")
        digest = hashlib.sha256(data).hexdigest()[:16]
        target = self.path / f"{digest}-{safe_name(name)}"
        # safe_name leaves no separator, so this cannot fail; it guards the promise if that ever changes.
        if target.resolve().parent != self.path:
            raise MediaError(name, "the file name leaves the upload folder")
        if not target.exists():
            partial = target.with_name(target.name + ".part")
            partial.write_bytes(data)
            partial.replace(target)
        try:
            probe(target)
        except MediaError as exc:
            target.unlink(missing_ok=True)
            raise MediaError(name, exc.reason) from exc
        return target

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
