"""Read the glosses of WordNet 3.0 (``data.noun``, ``data.verb``, ``data.adj``, ``data.adv`` of ``wordnet-base``).

A data line is ``offset lex_filenum ss_type w_cnt word lex_id ... p_cnt pointers... [frames] | gloss`` (the
counts: ``w_cnt`` hexadecimal, ``p_cnt`` decimal); lines starting with two spaces are the licence header. Words
use ``_`` for spaces and may carry an adjective marker such as ``(a)``. Each synset also has a lexicographer file
(``noun.animal``, ``verb.motion``, ...; WordNet's ``lexnames`` list) that groups it by topic.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

POS_FILES = ("noun", "verb", "adj", "adv")
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl")
_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Synset:
    """One synset: its words (spaces restored), lexicographer file and gloss (definition and examples)."""

    offset: int
    lexname: str
    words: tuple[str, ...]
    gloss: str


def parse_data_line(line: str) -> Synset:
    """The synset of one ``data.*`` line (see the module docstring)."""
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if not sep or len(fields) < 6:
        raise ValueError(f"line: not a WordNet data line: {line[:80]!r}")
    offset, lexfile, count = int(fields[0]), int(fields[1]), int(fields[3], 16)
    words = tuple(_MARKER.sub("", w).replace("_", " ") for w in fields[4:4 + 2 * count:2])
    lexname = LEXNAMES[lexfile] if lexfile < len(LEXNAMES) else f"lexfile.{lexfile}"
    return Synset(offset, lexname, words, gloss.strip())


def read_glosses(directory: Union[str, os.PathLike]) -> list[Synset]:
    """Every synset of the four ``data.*`` files under ``directory``, file by file in ``POS_FILES`` order.

    Raises:
        FileNotFoundError: a ``data.*`` file is missing.
    """
    out = []
    for pos in POS_FILES:
        file = Path(directory) / f"data.{pos}"
        if not file.is_file():
            raise FileNotFoundError(f"directory: {str(file)!r} does not exist (not a WordNet dict directory)")
        with file.open(encoding="utf-8", errors="replace") as f:
            out.extend(parse_data_line(line.rstrip("\n")) for line in f if line[:1].isdigit())
    return out


__all__ = ["Synset", "POS_FILES", "LEXNAMES", "parse_data_line", "read_glosses"]
