"""Read dictd databases (``NAME.index`` + ``NAME.dict`` or ``NAME.dict.dz``), the format of Debian's ``dict-*``
packages.

``NAME.index`` has one line per headword: ``headword<TAB>offset<TAB>length``, the numbers in dictd's base64
(``A-Z a-z 0-9 + /``, most significant digit first); they address bytes of the uncompressed ``.dict`` file
(``.dict.dz`` is dictzip, a gzip file readable as one stream). Headwords starting ``00-`` (``00-database-info``,
GCIDE's ``00-gcide-url``) or ``00database`` are the database's own metadata (name, URL, notes), not entries.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DIGIT = {c: i for i, c in enumerate(B64)}
META_PREFIXES = ("00-", "00database")


@dataclass(frozen=True)
class DictEntry:
    """One definition text and the headwords that point at it (in index order)."""

    headwords: tuple[str, ...]
    offset: int  # byte offset in the uncompressed .dict file
    text: str


def decode_number(text: str) -> int:
    """A dictd base64 number (``"Fz"`` -> 371)."""
    value = 0
    for char in text:
        if char not in _DIGIT:
            raise ValueError(f"text: {text!r} is not a dictd base64 number")
        value = value * 64 + _DIGIT[char]
    return value


def read_dictd(path: Union[str, os.PathLike], *, metadata: bool = False) -> list[DictEntry]:
    """The entries of a dictd database, sorted by their position in the ``.dict`` file.

    Args:
        path: the database without suffix (``.../gcide``), or its ``.index``, ``.dict`` or ``.dict.dz`` file.
        metadata: also return the metadata entries (``00-database-info``, ...).

    Returns:
        one ``DictEntry`` per distinct text span; several headwords that share a span are listed together.

    Raises:
        FileNotFoundError: no ``.index`` or no ``.dict`` / ``.dict.dz`` next to it.
        ValueError: a malformed index line or a span outside the data.
    """
    base = str(path)
    for suffix in (".dict.dz", ".dict", ".index"):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    index = Path(base + ".index")
    data_file = next((Path(base + s) for s in (".dict.dz", ".dict") if Path(base + s).is_file()), None)
    if not index.is_file() or data_file is None:
        raise FileNotFoundError(f"path: no dictd database at {base!r} (need .index and .dict or .dict.dz)")
    raw = data_file.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    spans: dict[tuple[int, int], list[str]] = {}
    for line_no, line in enumerate(index.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"path: {str(index)!r} line {line_no} is not 'headword<TAB>offset<TAB>length'")
        headword = parts[0]
        if not metadata and headword.startswith(META_PREFIXES):
            continue
        offset, length = decode_number(parts[1]), decode_number(parts[2])
        if offset + length > len(data):
            raise ValueError(f"path: {str(index)!r} line {line_no} points past the end of {str(data_file)!r}")
        spans.setdefault((offset, length), []).append(headword)
    return [DictEntry(tuple(words), offset, data[offset:offset + length].decode("utf-8", errors="replace"))
            for (offset, length), words in sorted(spans.items())]


__all__ = ["DictEntry", "decode_number", "read_dictd"]
