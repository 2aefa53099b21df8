"""Read SWORD Bible and commentary modules (``zText``, ``zCom`` and their ``4`` variants) and their OSIS markup.

A SWORD installation is a directory with ``mods.d/<module>.conf`` and ``modules/...``. A compressed verse-keyed
module stores, per testament (``ot``, ``nt``), three files whose suffix letter follows ``BlockType`` (``b`` book,
``c`` chapter, ``v`` verse):

- ``ot.bzs``: the blocks, 12 bytes each: offset and size in ``ot.bzz``, uncompressed size (``uint32`` LE);
- ``ot.bzz``: the blocks, each compressed on its own (``CompressType=ZIP``: zlib);
- ``ot.bzv``: one entry per verse slot of the versification: block number, offset in the uncompressed block
  (``uint32``) and size (``uint16``, or ``uint32`` in the ``4`` variants; some modules' ``.conf`` names the wrong
  one, so the width is the one whose entries all fit their blocks).

Entries come in versification order: testament heading, then for each book its heading, and for each chapter its
heading (the entry holding ``<chapter n="N">``) followed by one entry per verse. An empty entry has size 0; a
commentary note that spans several verses is one text that several entries point to.
"""

from __future__ import annotations

import html
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

DRIVERS = ("zText", "zText4", "zCom", "zCom4")
BLOCK_LETTERS = {"BOOK": "b", "CHAPTER": "c", "VERSE": "v"}
TESTAMENTS = ("ot", "nt")


@dataclass(frozen=True)
class SwordEntry:
    """One non-empty verse slot of a module."""

    testament: str  # "ot" or "nt"
    index: int  # position in the testament's verse index
    block: int  # the compressed block holding the text (a book when BlockType=BOOK)
    text: str  # the raw markup (OSIS for SourceType=OSIS)


@dataclass(frozen=True)
class SwordModule:
    """A module's configuration (``.conf`` keys; a repeated key keeps its first value) and its directory."""

    name: str
    conf: dict
    path: Path  # the module's data directory (DataPath)

    @property
    def driver(self) -> str:
        return self.conf.get("ModDrv", "")


def read_conf(path: Union[str, os.PathLike]) -> tuple[str, dict]:
    """``(module name, {key: value})`` of a SWORD ``.conf`` file (comments and continuation lines skipped)."""
    name, conf = None, {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]") and name is None:
            name = line[1:-1]
        elif "=" in line:
            key, _, value = line.partition("=")
            conf.setdefault(key.strip(), value.strip())
    if name is None:
        raise ValueError(f"path: {str(path)!r} is not a SWORD module .conf (no [Name] line)")
    return name, conf


def find_module(root: Union[str, os.PathLike], name: str) -> SwordModule:
    """The module ``name`` (case-insensitive) of a SWORD tree ``root`` (the directory holding ``mods.d``).

    Raises:
        FileNotFoundError: no ``mods.d`` under ``root`` or no module of that name.
    """
    mods = Path(root) / "mods.d"
    if not mods.is_dir():
        raise FileNotFoundError(f"root: {str(root)!r} has no mods.d directory (not a SWORD tree)")
    found = []
    for conf_file in sorted(mods.glob("*.conf")):
        module, conf = read_conf(conf_file)
        found.append(module)
        if module.lower() == name.lower():
            data = conf.get("DataPath", "")
            return SwordModule(module, conf, (Path(root) / data).resolve())
    raise FileNotFoundError(f"name: no SWORD module {name!r} in {str(mods)!r}; found {found}")


def _verse_entries(index: bytes, blocks: list, declared4: bool, where: str) -> list:
    """Decode a verse index with the entry width (10 or 12 bytes) whose entries all fit their blocks."""
    widths = (12, 10) if declared4 else (10, 12)
    for width in widths:
        if len(index) % width:
            continue
        fmt = "<III" if width == 12 else "<IIH"
        entries = [struct.unpack_from(fmt, index, i) for i in range(0, len(index), width)]
        if all(size == 0 or (block < len(blocks) and offset + size <= blocks[block][2])
               for block, offset, size in entries):
            return entries
    raise ValueError(f"path: {where} is not a SWORD verse index of 10- or 12-byte entries matching its blocks")


def read_entries(module: SwordModule) -> list[SwordEntry]:
    """The non-empty entries of both testaments, in versification order; an entry that repeats the previous
    linked one (same block, offset and size: one commentary note for several verses) is kept once.

    Raises:
        ValueError: an unsupported driver or compression, or files that do not decode.
    """
    if module.driver not in DRIVERS:
        raise ValueError(f"module: {module.name} uses ModDrv={module.driver!r}; supported: {', '.join(DRIVERS)}")
    compress = module.conf.get("CompressType", "ZIP").upper()
    if compress != "ZIP":
        raise ValueError(f"module: {module.name} uses CompressType={compress}; supported: ZIP")
    letter = BLOCK_LETTERS.get(module.conf.get("BlockType", "CHAPTER").upper())
    if letter is None:
        raise ValueError(f"module: {module.name} has BlockType={module.conf.get('BlockType')!r}; "
                         f"supported: {', '.join(BLOCK_LETTERS)}")
    out: list[SwordEntry] = []
    for testament in TESTAMENTS:
        files = [module.path / f"{testament}.{letter}z{kind}" for kind in "szv"]
        if not all(f.is_file() for f in files):
            continue
        raw_blocks, data, raw_index = (f.read_bytes() for f in files)
        blocks = [struct.unpack_from("<III", raw_blocks, i) for i in range(0, len(raw_blocks) - 11, 12)]
        entries = _verse_entries(raw_index, blocks, module.driver.endswith("4"), repr(str(files[2])))
        cache: dict[int, bytes] = {}
        seen = set()
        for i, (block, offset, size) in enumerate(entries):
            if size == 0 or (block, offset, size) in seen:
                continue
            seen.add((block, offset, size))
            if block not in cache:
                start, length, _ = blocks[block]
                try:
                    cache[block] = zlib.decompress(data[start:start + length])
                except zlib.error as e:
                    raise ValueError(f"path: block {block} of {str(files[1])!r} does not decompress ({e})") from e
            text = cache[block][offset:offset + size].decode("utf-8", errors="replace")
            if text.strip():
                out.append(SwordEntry(testament, i, block, text))
    if not out:
        raise ValueError(f"module: {module.name} has no text under {str(module.path)!r}")
    return out


# ---- OSIS markup -> plain text -------------------------------------------------------------------------------------

_NOTE = re.compile(r"<note\b[^>]*?(?:/>|>.*?</note>)", re.S)
_TITLE = re.compile(r"<title\b([^>]*)>(.*?)</title>", re.S)
_BREAK = re.compile(r"<(?:div|p|lg|l|lb|br)\b[^>]*/?>|</(?:div|p|lg|l)>", re.S)
_TAG = re.compile(r"<[^>]*>")
_CHAPTER = re.compile(r"<chapter\b[^>]*\bn=\"(\d+)\"")
_SPACES = re.compile(r"[ \t\u00a0]+")


def osis_to_text(markup: str, *, titles: bool = True) -> str:
    """Plain text of an OSIS fragment: notes dropped, paragraph, line-group and line elements as line breaks,
    titles on their own lines (or dropped, ``titles=False``), every other tag removed with its text kept,
    entities decoded, spaces collapsed (a space before punctuation removed)."""
    text = _NOTE.sub("", markup)
    text = _TITLE.sub((lambda m: f"\n{m.group(2)}\n") if titles else "", text)
    text = _BREAK.sub("\n", text)
    text = html.unescape(_TAG.sub("", text))
    text = _SPACES.sub(" ", text)
    text = re.sub(r" ([,.;:!?)])", r"\1", text)
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def chapter_number(markup: str) -> Optional[int]:
    """The ``n`` of the first ``<chapter n="N">`` milestone in ``markup``, or None."""
    match = _CHAPTER.search(markup)
    return int(match.group(1)) if match else None


def main_title(markup: str) -> Optional[str]:
    """The text of the first ``<title type="main">`` (or, failing that, first title) in ``markup``, or None."""
    titles = [(attrs, osis_to_text(body)) for attrs, body in _TITLE.findall(_NOTE.sub("", markup))]
    titles = [(attrs, body) for attrs, body in titles if body]
    for attrs, body in titles:
        if 'type="main"' in attrs:
            return body
    return titles[0][1] if titles else None


__all__ = ["SwordEntry", "SwordModule", "read_conf", "find_module", "read_entries", "osis_to_text",
           "chapter_number", "main_title"]
