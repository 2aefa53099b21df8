"""A public-domain English corpus from Debian's packages: novels, Bibles, commentaries and reference works.

Every machine with apt can build it without a model hub: ``fetch_books`` runs ``apt-get download`` for the
packages in ``CATALOGUE`` (nothing is installed), unpacks them with ``dpkg-deb -x`` under a cache directory, and
``build_books`` turns each work into clean plain-text documents, written as ``text/<domain>/<source>/<NNN>-<title>.txt``
with a ``manifest.json``. Books stay whole (one document per novel, per Bible book, per commentary volume on a
Bible book, per Psalm of the Treasury of David); a dictionary is one document per initial letter and WordNet one
per lexicographer file (``noun.animal``, ...). The text directory is an ordinary ``files`` source, so the
tokenizing step (``dla.data.corpus``) and the trainer read it like any user corpus.

Domains: ``books`` (Austen's six novels, Melville's Moby-Dick, Newton's Opticks), ``bible`` (King James
Version, World English Bible with the Deuterocanon), ``commentary`` (Matthew Henry's Concise Commentary,
Scofield's 1917 notes, Spurgeon's Treasury of David) and ``reference`` (GCIDE, the 1913 Webster with additions;
WordNet 3.0 glosses; the Jargon File; Bierce's Devil's Dictionary). docs/data.md lists sizes and licences.

Example:
    >>> debs = fetch_books("runs/books")             # apt-get update + download + unpack
    >>> manifest = build_books("runs/books")          # runs/books/text/<domain>/<source>/*.txt
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import re
import shutil
import unicodedata
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from dla.data import debian
from dla.data.formats import find_module, osis_to_text, read_dictd, read_entries, read_glosses, read_lazyload
from dla.data.formats.dictd import META_PREFIXES
from dla.data.formats.sword import chapter_number, main_title

logger = logging.getLogger(__name__)

DOMAINS = ("books", "bible", "commentary", "reference")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Document:
    """One plain-text document of a source."""

    title: str
    text: str


@dataclass(frozen=True)
class BookSource:
    """One work (or set of works) of the catalogue and how to read it from the unpacked packages."""

    name: str  # short id, the directory name under text/<domain>/
    package: str  # the Debian package that ships it
    domain: str  # one of DOMAINS
    title: str  # what it is
    licence: str  # as the package's copyright file states it
    read: Callable[[Path], list[Document]]  # unpacked root -> documents
    members: tuple[str, ...] = ()  # tar patterns to unpack (empty: the whole package)


# ---- plain-text cleaning -------------------------------------------------------------------------------------------

_ITALIC = re.compile(r"(?<![\w_])_([^_\n]+?)_(?![\w_])")


def normalize(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no leading or trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def gutenberg_body(text: str) -> str:
    """The work inside a Project Gutenberg file: the text between the ``*** START OF`` and ``*** END OF`` lines
    (or before ``End of (the) Project Gutenberg``), the whole text when it has no such markers."""
    start = re.search(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if start:
        text = text[start.end():]
    text = re.sub(r"\A\s*Produced by .*?\n\s*\n", "", text, flags=re.S)
    end = re.search(r"^(?:\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg)",
                    text, re.M | re.I)
    return text[:end.start()] if end else text


def unwrap(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph (paragraphs are separated by blank lines); a line that
    starts with a space (verse, a table, a quotation set off) keeps its line break. ``_italics_`` markers go."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", normalize(text)):
        out: list[str] = []
        for line in block.split("\n"):
            if out and not line.startswith((" ", "\t")) and not out[-1].startswith((" ", "\t")):
                out[-1] = f"{out[-1]} {line.strip()}"
            else:
                out.append(line.rstrip())
        paragraphs.append("\n".join(out))
    return _ITALIC.sub(r"\1", "\n\n".join(p for p in paragraphs if p.strip()))


# ---- readers, one per source format --------------------------------------------------------------------------------

AUSTEN = (("sensesensibility", "Sense and Sensibility"), ("prideprejudice", "Pride and Prejudice"),
          ("mansfieldpark", "Mansfield Park"), ("emma", "Emma"), ("northangerabbey", "Northanger Abbey"),
          ("persuasion", "Persuasion"))


def _r_data(root: Path, package: str) -> dict:
    return read_lazyload(root / "usr/lib/R/site-library" / package / "data/Rdata")


def read_austen(root: Path) -> list[Document]:
    """Jane Austen's six novels (R package ``janeaustenr``: one character vector of lines per novel)."""
    data = _r_data(root, "janeaustenr")
    return [Document(title, unwrap("\n".join(line or "" for line in data[key]))) for key, title in AUSTEN]


def read_moby_dick(root: Path) -> list[Document]:
    """Herman Melville's Moby-Dick (R package ``tokenizers``: the Project Gutenberg file as one string)."""
    text = "".join(s or "" for s in _r_data(root, "tokenizers")["mobydick"])
    return [Document("Moby-Dick; or, The Whale", unwrap(gutenberg_body(text)))]


def read_opticks(root: Path) -> list[Document]:
    """Isaac Newton's Opticks (4th edition, 1730), a Project Gutenberg file in Go's test data."""
    files = sorted(root.glob("usr/share/go-*/src/testdata/Isaac.Newton-Opticks.txt"))
    if not files:
        raise FileNotFoundError(f"root: no usr/share/go-*/src/testdata/Isaac.Newton-Opticks.txt under {root}")
    return [Document("Opticks", unwrap(gutenberg_body(files[-1].read_text(encoding="utf-8", errors="replace"))))]


def _blocks(module_name: str, root: Path) -> list[list]:
    """The entries of a SWORD module grouped by compressed block (one Bible book for BlockType=BOOK)."""
    module = find_module(root / "usr/share/sword", module_name)
    entries = read_entries(module)
    return [list(group) for _, group in groupby(entries, key=lambda e: (e.testament, e.block))]


def _bible_book(entries: list) -> Document:
    """One Bible book: its title, then one ``chapter:verse text`` line per verse (Project Gutenberg's layout)."""
    lines, title, heading, chapter = [], None, 0, None
    for entry in entries:
        number = chapter_number(entry.text)
        if number is not None:
            chapter, heading = number, entry.index
            body = " ".join(osis_to_text(entry.text, titles=True).split())
            if body:
                lines.append(body)
            continue
        if chapter is None:
            title = main_title(entry.text) or title
            lines.append(osis_to_text(entry.text))
            continue
        body = " ".join(osis_to_text(entry.text).split())
        if body:
            lines.append(f"{chapter}:{entry.index - heading} {body}")
    text = normalize("\n".join(lines))
    return Document(title or text.split("\n", 1)[0][:80], text)


def read_kjv(root: Path) -> list[Document]:
    """The King James Version (SWORD module engKJV2006eb): one document per book."""
    return [_bible_book(block) for block in _blocks("engKJV2006eb", root)]


def read_web(root: Path) -> list[Document]:
    """The World English Bible with the Deuterocanon (SWORD module engWEB2015eb): one document per book, the
    preface and glossary included."""
    return [_bible_book(block) for block in _blocks("engWEB2015eb", root)]


_BOOK_ID = re.compile(r"<div\b[^>]*\bosisID=\"([^\"]+)\"[^>]*\btype=\"book\"|"
                      r"<div\b[^>]*\btype=\"book\"[^>]*\bosisID=\"([^\"]+)\"")


def _commentary(module_name: str, work: str, root: Path, per_chapter: bool = False) -> list[Document]:
    """A commentary as one document per block, its notes in verse order separated by blank lines."""
    docs = []
    for block in _blocks(module_name, root):
        ids = [m.group(1) or m.group(2) for e in block for m in _BOOK_ID.finditer(e.text)]
        chapters = [c for c in (chapter_number(e.text) for e in block) if c is not None]
        if per_chapter:
            label = f"Psalm {chapters[0]}" if chapters else "Preface"
        else:
            label = ids[0] if ids else f"block {block[0].block}"
        text = normalize("\n\n".join(osis_to_text(e.text) for e in block))
        if text:
            docs.append(Document(f"{work}: {label}", text))
    return docs


def read_mhcc(root: Path) -> list[Document]:
    """Matthew Henry's Concise Commentary on the Whole Bible: one document per Bible book."""
    return _commentary("MHCC", "Matthew Henry's Concise Commentary", root)


def read_scofield(root: Path) -> list[Document]:
    """The Scofield Reference Notes (1917): one document per Bible book."""
    return _commentary("Scofield", "Scofield Reference Notes", root)


def read_treasury(root: Path) -> list[Document]:
    """C. H. Spurgeon's Treasury of David: the preface and one document per Psalm."""
    return _commentary("TDavid", "The Treasury of David", root, per_chapter=True)


# GCIDE: source tags, headword accents, pronunciations, cross-reference braces and ASCII diacritic codes
_GCIDE_SOURCE = re.compile(r"[ \t]*\[[^\[\]\n]*(?:Webster|WordNet|PJC|Century Dict)[^\[\]\n]*\]")
_GCIDE_HEAD = re.compile(r"^(\S[^\\\n]*?) \\[^\\\n]+\\(?: \([^)\n]*\))?", re.M)
_GCIDE_CODE = re.compile(r"\[(?:([`'\"=~^.,*-])([A-Za-z]{1,2})|([A-Za-z]{1,2})\^)\]")
_GCIDE_WORDS = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "imac": "ī", "aum": "ä",
                "deg": "°", "sect": "§", "root": "√", "yogh": "ȝ", "ng": "ŋ"}
# a mark before the letter: acute, grave, macron, diaeresis, tilde, circumflex, dot, cedilla; a caret after it: breve
_MARKS = {"'": "\u0301", "`": "\u0300", "=": "\u0304", "-": "\u0304", '"': "\u0308", "~": "\u0303", "^": "\u0302",
          ".": "\u0307", ",": "\u0327", "*": ""}


def _diacritic(match: re.Match) -> str:
    mark, letters, breve = match.groups()
    if breve is not None:
        return unicodedata.normalize("NFC", breve + "\u0306")
    return unicodedata.normalize("NFC", letters + _MARKS[mark])


def clean_gcide(text: str) -> str:
    """One GCIDE entry as plain text: source tags (``[1913 Webster]``, ``[PJC]``, ...), the accented headword and
    its pronunciation removed, ``{cross references}`` unbraced, diacritic codes (``[=a]``, ``[ae]``) decoded."""
    text = _GCIDE_SOURCE.sub("", text)
    text = _GCIDE_HEAD.sub(r"\1", text)
    for word, char in _GCIDE_WORDS.items():
        text = text.replace(f"[{word}]", char)
    text = _GCIDE_CODE.sub(_diacritic, text)
    return normalize(text.replace("{", "").replace("}", ""))


def _by_letter(work: str, entries: list[tuple[str, str]]) -> list[Document]:
    """Entries ``(headword, text)`` grouped into one document per initial letter (anything else: ``0-9``)."""
    groups: dict[str, list[str]] = {}
    for headword, text in entries:
        first = unicodedata.normalize("NFKD", headword.strip()[:1]).upper()[:1]
        key = first if "A" <= first <= "Z" else "0-9"
        groups.setdefault(key, []).append(text)
    return [Document(f"{work}: {key}", "\n\n".join(texts)) for key, texts in sorted(groups.items()) if texts]


def read_gcide(root: Path) -> list[Document]:
    """GCIDE, the 1913 Webster with later additions (dictd): one document per initial letter."""
    entries = read_dictd(root / "usr/share/dictd/gcide")
    cleaned = [(e.headwords[0], clean_gcide(e.text)) for e in entries]
    return _by_letter("GCIDE", [(h, t) for h, t in cleaned if t])


def read_wordnet(root: Path) -> list[Document]:
    """WordNet 3.0's glosses, one document per lexicographer file, one ``word, word: gloss`` line per synset."""
    synsets = read_glosses(root / "usr/share/wordnet")
    docs = []
    for lexname in sorted({s.lexname for s in synsets}):
        lines = [f"{', '.join(s.words)}: {s.gloss}" for s in synsets if s.lexname == lexname]
        docs.append(Document(f"WordNet: {lexname}", "\n".join(lines)))
    return docs


def read_devil(root: Path) -> list[Document]:
    """Ambrose Bierce's The Devil's Dictionary (dictd): one document, the preface and every entry in order."""
    entries = read_dictd(root / "usr/share/dictd/devil", metadata=True)
    metadata = [e for e in entries if e.headwords[0].startswith(META_PREFIXES)]
    info = next((e.text for e in metadata if e.headwords[0].replace("-", "") == "00databaseinfo"), "")
    preface = info[info.find("PREFACE"):] if "PREFACE" in info else ""
    body = [e.text for e in entries if e not in metadata]
    return [Document("The Devil's Dictionary", unwrap("\n\n".join([preface, *body])))]


_BOX_LINE = re.compile(r"^[\s\u2500-\u257f]*$")


def read_jargon(root: Path) -> list[Document]:
    """The Jargon File 4.4.7 (rendered text): one document; table borders dropped, the common indent removed."""
    file = root / "usr/share/doc/jargon-text/jargon.txt.gz"
    lines = gzip.decompress(file.read_bytes()).decode("utf-8", errors="replace").split("\n")
    lines = ["" if _BOX_LINE.match(line) else (line[3:] if line.startswith("   ") else line) for line in lines]
    return [Document("The Jargon File", unwrap(html.unescape("\n".join(lines))))]


CATALOGUE: tuple[BookSource, ...] = (
    BookSource("austen", "r-cran-janeaustenr", "books", "Jane Austen's six novels", "public domain", read_austen),
    BookSource("melville", "r-cran-tokenizers", "books", "Herman Melville, Moby-Dick", "public domain",
               read_moby_dick),
    BookSource("newton", "golang-1.19-src", "books", "Isaac Newton, Opticks", "public domain", read_opticks,
               members=("./usr/share/go-*/src/testdata/Isaac.Newton-Opticks.txt",)),
    BookSource("kjv", "sword-text-kjv", "bible", "King James Version", "public domain", read_kjv),
    BookSource("web", "sword-text-web", "bible", "World English Bible with Deuterocanon", "public domain",
               read_web),
    BookSource("mhcc", "sword-comm-mhcc", "commentary", "Matthew Henry's Concise Commentary", "public domain",
               read_mhcc),
    BookSource("scofield", "sword-comm-scofield", "commentary", "Scofield Reference Notes (1917)",
               "public domain", read_scofield),
    BookSource("tdavid", "sword-comm-tdavid", "commentary", "C. H. Spurgeon, The Treasury of David",
               "public domain", read_treasury),
    BookSource("gcide", "dict-gcide", "reference", "GCIDE: Webster's 1913 with additions", "GPL-3+ (Webster "
               "1913: public domain)", read_gcide),
    BookSource("wordnet", "wordnet-base", "reference", "WordNet 3.0 glosses", "WordNet licence (BSD-like)",
               read_wordnet),
    BookSource("jargon", "jargon-text", "reference", "The Jargon File 4.4.7", "public domain", read_jargon),
    BookSource("devil", "dict-devil", "reference", "Ambrose Bierce, The Devil's Dictionary", "public domain",
               read_devil),
)


def select_sources(names: Optional[Sequence[str]] = None) -> list[BookSource]:
    """The catalogue entries named ``names`` (all when None), in catalogue order.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if names is None:
        return list(CATALOGUE)
    known = {s.name for s in CATALOGUE}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"sources: unknown {unknown}; known: {', '.join(s.name for s in CATALOGUE)}")
    return [s for s in CATALOGUE if s.name in set(names)]


def fetch_books(cache_dir: Union[str, Path], sources: Optional[Sequence[str]] = None, *, update: bool = True,
                debs: Optional[Union[str, Path]] = None) -> dict[str, Optional[Path]]:
    """Download (unless already there) and unpack the packages of ``sources`` under ``cache_dir``.

    Args:
        cache_dir: ``debs/`` (the ``.deb`` files) and ``root/`` (their unpacked files) are made here.
        sources: catalogue names; None = all.
        update: run ``apt-get update`` first (skipped when every ``.deb`` is already present).
        debs: a directory of ``.deb`` files obtained elsewhere, used instead of ``apt-get download``.

    Returns:
        ``{package: .deb path, or None when it could not be fetched}``; a missing package is logged and its source
        left out of ``build_books``.
    """
    cache = Path(cache_dir)
    deb_dir = Path(debs) if debs is not None else cache / "debs"
    chosen = select_sources(sources)
    packages = [s.package for s in chosen]
    if debs is None:
        if update and any(debian.find_deb(deb_dir, p) is None for p in packages):
            debian.apt_update()
        found = debian.download(packages, deb_dir)
    else:
        found = {p: debian.find_deb(deb_dir, p) for p in packages}
    root = cache / "root"
    for source in chosen:
        deb = found[source.package]
        stamp = root / ".unpacked" / (deb.name if deb is not None else "")
        if deb is None or stamp.is_file():
            continue
        debian.extract(deb, root, source.members)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(debian.deb_field(deb, "Version") + "\n")
    return found


def build_books(cache_dir: Union[str, Path], sources: Optional[Sequence[str]] = None,
                out_dir: Optional[Union[str, Path]] = None) -> dict:
    """Read every fetched source and write its documents as text files plus ``manifest.json``.

    Args:
        cache_dir: where ``fetch_books`` unpacked the packages (``root/``).
        sources: catalogue names; None = all that were fetched.
        out_dir: the text directory; default ``cache_dir/text`` (rewritten whole).

    Returns:
        the manifest: ``{"sources": [{name, package, version, domain, title, licence, documents: [{title, path,
        chars}]}], "missing": [names not fetched]}``.

    Raises:
        ValueError: no source was fetched.
    """
    cache = Path(cache_dir)
    root = cache / "root"
    out = Path(out_dir) if out_dir is not None else cache / "text"
    if out.exists():
        shutil.rmtree(out)
    manifest: dict = {"sources": [], "missing": []}
    for source in select_sources(sources):
        stamps = sorted((root / ".unpacked").glob(f"{source.package}_*.deb"))
        if not stamps:
            manifest["missing"].append(source.name)
            continue
        docs = [d for d in source.read(root) if d.text.strip()]
        directory = out / source.domain / source.name
        directory.mkdir(parents=True, exist_ok=True)
        listed = []
        for i, doc in enumerate(docs):
            slug = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", doc.title).lower()).strip("-")[:60]
            path = directory / f"{i:03d}-{slug}.txt"
            path.write_text(doc.text + "\n", encoding="utf-8")
            listed.append({"title": doc.title, "path": path.relative_to(out).as_posix(), "chars": len(doc.text)})
        manifest["sources"].append({"name": source.name, "package": source.package,
                                    "version": stamps[-1].read_text().strip(), "domain": source.domain,
                                    "title": source.title, "licence": source.licence, "documents": listed})
        logger.info("%s: %d documents, %d chars", source.name, len(listed), sum(d["chars"] for d in listed))
    if not manifest["sources"]:
        raise ValueError(f"cache_dir: no source fetched under {str(root)!r}; run fetch_books first")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


__all__ = ["Document", "BookSource", "CATALOGUE", "DOMAINS", "select_sources", "fetch_books", "build_books",
           "normalize", "gutenberg_body", "unwrap", "clean_gcide"]
