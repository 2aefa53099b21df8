"""Read R data: the lazy-load databases (``data/Rdata.rdb`` + ``Rdata.rdx``) of installed R packages, and ``.rds``.

R packages keep their datasets in a lazy-load database: ``Rdata.rdx`` is a gzip-compressed serialized list
``{variables: {name: [offset, length]}, references, compressed}`` and ``Rdata.rdb`` holds one compressed serialized
object per variable at those byte ranges (4-byte big-endian length, then zlib, or a type byte ``'2'`` bzip2,
``'Z'`` xz, ``'0'`` stored, ``'1'`` zlib). Both use R's XDR serialization format (versions 2 and 3).

This reader covers the types data sets are made of: ``NULL``, character, logical, integer, double and raw vectors,
lists, pairlists, symbols and references. Vectors come back as Python lists (``NA`` as ``None``); attributes are
dropped except ``names``, which turns a list into a ``dict``. Anything else (environments, closures, ALTREP
objects) raises ``ValueError``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Union

NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP, EXPRSXP, RAWSXP = \
    254, 1, 2, 9, 10, 13, 14, 16, 19, 20, 24
REFSXP, ATTRLISTSXP = 255, 239
NA_INTEGER = -2**31
_PAIRLISTS = (LISTSXP, 6, ATTRLISTSXP)  # pairlist, language object, attribute pairlist


class _Reader:
    """Unserialize one XDR stream (``X\\n`` header)."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where, self.refs = data, 0, where, []

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"path: {self.where} ends inside an R object (truncated or not R data)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.bytes(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:
            upper, lower = self.int(), self.int()
            n = (upper << 32) + lower
        return n

    def header(self) -> None:
        if self.bytes(2) != b"X\n":
            raise ValueError(f"path: {self.where} is not R XDR serialization (no 'X\\n' header)")
        version = self.int()
        self.int(), self.int()  # writer and minimal reader R versions
        if version == 3:
            self.bytes(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"path: {self.where} uses R serialization version {version}; supported: 2, 3")

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind in _PAIRLISTS:
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            head = self.item()
            tail = self.item()
            del attr
            return [(tag, head)] + (tail if isinstance(tail, list) else [])
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.bytes(n).decode("utf-8" if flags & (1 << 15) == 0 else "latin-1",
                                                             errors="replace")
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.bytes(4 * n))]
            value: Any = [None if v is None else bool(v) for v in values] if kind == LGLSXP else values
        elif kind == REALSXP:
            n = self.length()
            value = list(struct.unpack(f">{n}d", self.bytes(8 * n)))
        elif kind == STRSXP:
            value = [self.item() for _ in range(self.length())]
        elif kind in (VECSXP, EXPRSXP):
            value = [self.item() for _ in range(self.length())]
        elif kind == RAWSXP:
            value = self.bytes(self.length())
        else:
            raise ValueError(f"path: {self.where} holds an R object of type {kind}, which this reader does not "
                             f"support (only vectors, lists, pairlists and symbols)")
        if has_attr:
            attrs = dict(self.item() or [])
            names = attrs.get("names")
            if kind in (VECSXP, EXPRSXP) and isinstance(names, list) and len(names) == len(value):
                value = dict(zip(names, value))
        return value


def unserialize(data: bytes, where: str = "R data") -> Any:
    """The object of one uncompressed R serialization stream (see the module docstring for the types)."""
    reader = _Reader(data, where)
    reader.header()
    return reader.item()


def read_rds(path: Union[str, os.PathLike]) -> Any:
    """The object of an ``.rds`` file (gzip, bzip2, xz or uncompressed XDR)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    elif raw[:6] == b"\xfd7zXZ\x00":
        raw = lzma.decompress(raw)
    return unserialize(raw, repr(str(path)))


def _decompress(blob: bytes, where: str) -> bytes:
    """One lazy-load blob: 4-byte big-endian length, then an optional type byte and the compressed bytes."""
    if len(blob) < 5:
        raise ValueError(f"path: {where} holds a blob of {len(blob)} bytes, too short for a lazy-load entry")
    size, kind = struct.unpack(">I", blob[:4])[0], blob[4:5]
    if kind == b"Z":
        out = lzma.decompress(blob[5:])
    elif kind == b"2":
        out = bz2.decompress(blob[5:])
    elif kind == b"0":
        out = blob[5:]
    elif kind == b"1":
        out = zlib.decompress(blob[5:])
    else:
        out = zlib.decompress(blob[4:])
    if len(out) != size:
        raise ValueError(f"path: {where} blob decompresses to {len(out)} bytes, its header says {size}")
    return out


def read_lazyload(path: Union[str, os.PathLike]) -> dict:
    """Every variable of an R lazy-load database.

    Args:
        path: the database without suffix (``.../data/Rdata``), or its ``.rdb`` or ``.rdx`` file.

    Returns:
        ``{name: object}`` in the order of the index.

    Raises:
        FileNotFoundError: the ``.rdb`` or ``.rdx`` file is missing.
        ValueError: the files are not an R lazy-load database or hold unsupported types.
    """
    base = Path(path)
    if base.suffix in (".rdb", ".rdx"):
        base = base.with_suffix("")
    rdb, rdx = base.with_suffix(".rdb"), base.with_suffix(".rdx")
    for file in (rdb, rdx):
        if not file.is_file():
            raise FileNotFoundError(f"path: {str(file)!r} does not exist")
    index = read_rds(rdx)
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise ValueError(f"path: {str(rdx)!r} is not a lazy-load index (no 'variables' list)")
    data = rdb.read_bytes()
    out = {}
    for name, span in index["variables"].items():
        offset, length = int(span[0]), int(span[1])
        where = f"{str(rdb)!r} ({name})"
        out[name] = unserialize(_decompress(data[offset:offset + length], where), where)
    return out


__all__ = ["unserialize", "read_rds", "read_lazyload"]
