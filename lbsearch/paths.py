"""File names that are not valid UTF-8: how they are stored, and how they are shown.

Python hands out such a name (bytes ``b"caf\\xe9.jpg"`` from an old disk or an archive) as a str in which each
undecodable byte is a lone surrogate U+DC80..U+DCFF (``os.fsdecode``). The str opens the file, but no database
takes it: SQLite and PostgreSQL store valid Unicode only. The stored form is the str with a backslash escape,
one code per character, so that it reads back exactly:

    ``\\`` -> ``\\\\``;   a surrogate U+DCxx (the byte 0xxx) -> ``\\xXX``;   any other surrogate -> ``\\uXXXX``;
    every other character stands for itself.

A valid name without a backslash is stored as it is. The escape works character by character and no code is
the start of another, so ``stored(a + b) == stored(a) + stored(b)``: a folder's stored form is a prefix of the
stored form of every file inside it, and prefix queries run on the stored column unchanged.
"""

from __future__ import annotations

import os
import re

_ESCAPED = re.compile(r"\\(?:\\|x([0-9a-f]{2})|u([0-9a-f]{4}))")
_NEEDS_ESCAPE = re.compile(r"[\\\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _unescape(match: re.Match[str]) -> str:
    byte, other = match.groups()
    if byte is not None:
        return chr(0xDC00 + int(byte, 16))
    return chr(int(other, 16)) if other is not None else "\\"


def stored(path: str) -> str:
    """The database form of a path (or of any text holding one, such as an item key): valid Unicode."""
    return _NEEDS_ESCAPE.sub(_escape, path)


def from_stored(text: str) -> str:
    """The path ``stored`` made ``text`` from, exactly: surrogates again where the name had undecodable bytes."""
    return _ESCAPED.sub(_unescape, text) if "\\" in text else text


def shown(path: str | os.PathLike[str]) -> str:
    """A path for people: printable anywhere, undecodable bytes as ``\\xNN`` (``café`` stays ``café``)."""
    text = os.fspath(path)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to: built in Python, shown as its code
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
