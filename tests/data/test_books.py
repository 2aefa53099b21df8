"""The public-domain corpus: file-format readers on files written here, the text cleaners, and the whole path from a
.deb to text documents (a package built with dpkg-deb, no download)."""

import gzip
import json
import shutil
import struct
import subprocess
import zlib

import pytest

from dla.data import books
from dla.data.formats import find_module, osis_to_text, read_dictd, read_entries, read_glosses, read_lazyload
from dla.data.formats.dictd import B64, decode_number
from dla.data.formats.rdata import unserialize
from dla.data.formats.wordnet import parse_data_line


# ---- writers of the formats --------------------------------------------------------------------------------------

def _b64(n: int) -> str:
    digits = ""
    while True:
        digits = B64[n % 64] + digits
        n //= 64
        if n == 0:
            return digits


def write_dictd(base, entries, compress=True):
    """``entries``: ``[(headword, text)]``; writes ``base.index`` and ``base.dict(.dz)``."""
    data, index = b"", []
    for headword, text in entries:
        raw = text.encode()
        index.append(f"{headword}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    base.parent.mkdir(parents=True, exist_ok=True)
    (base.parent / (base.name + ".index")).write_text("\n".join(sorted(index)) + "\n")
    if compress:
        (base.parent / (base.name + ".dict.dz")).write_bytes(gzip.compress(data))
    else:
        (base.parent / (base.name + ".dict")).write_bytes(data)


def write_sword(root, name, books_verses, *, driver="zText", conf_driver=None, kind="texts"):
    """A zText module: ``books_verses`` is one list of entry strings per book (one compressed block each), in
    versification order; entry 0 and 1 (module and testament headings) are prepended empty."""
    wide = driver.endswith("4")
    data_dir = root / "modules" / kind / "ztext" / name.lower()
    data_dir.mkdir(parents=True)
    (root / "mods.d").mkdir(exist_ok=True)
    (root / "mods.d" / f"{name.lower()}.conf").write_text(
        f"[{name}]\nDataPath=./modules/{kind}/ztext/{name.lower()}/\nModDrv={conf_driver or driver}\n"
        f"BlockType=BOOK\nCompressType=ZIP\nSourceType=OSIS\n")
    blocks, zdata, verses = b"", b"", [(0, 0, 0), (0, 0, 0)]
    for b, entries in enumerate(books_verses):
        raw = "".join(entries).encode()
        comp = zlib.compress(raw)
        blocks += struct.pack("<III", len(zdata), len(comp), len(raw))
        zdata += comp
        offset = 0
        for entry in entries:
            verses.append((b, offset, len(entry.encode())))
            offset += len(entry.encode())
    fmt = "<III" if wide else "<IIH"
    (data_dir / "ot.bzs").write_bytes(blocks)
    (data_dir / "ot.bzz").write_bytes(zdata)
    (data_dir / "ot.bzv").write_bytes(b"".join(struct.pack(fmt, *v) for v in verses))


def _xdr_item(value, names=None) -> bytes:
    """R XDR serialization of a str list (STRSXP), an int list (INTSXP) or a list of items (VECSXP)."""
    attr = 1 << 9 if names is not None else 0
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        body = struct.pack(">ii", 16 | attr, len(value))
        body += b"".join(struct.pack(">ii", 9, len(v.encode())) + v.encode()
                         for v in value)
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        body = struct.pack(">ii", 13 | attr, len(value)) + struct.pack(f">{len(value)}i", *value)
    else:
        body = struct.pack(">ii", 19 | attr, len(value)) + b"".join(value)
    if names is not None:  # pairlist (tag = symbol "names") holding the names vector, then NILVALUE
        body += struct.pack(">i", 2 | (1 << 10)) + struct.pack(">ii", 1, 9) + struct.pack(">i", 5) + b"names"
        body += _xdr_item(names) + struct.pack(">i", 254)
    return body


def _xdr(item: bytes) -> bytes:
    return b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8" + item


def write_lazyload(base, variables):
    """An R lazy-load database with ``{name: [str, ...]}`` (zlib blobs)."""
    rdb, spans = b"", {}
    for name, value in variables.items():
        payload = _xdr(_xdr_item(value))
        blob = struct.pack(">I", len(payload)) + zlib.compress(payload)
        spans[name] = [len(rdb), len(blob)]
        rdb += blob
    index = _xdr_item([_xdr_item([_xdr_item(v) for v in spans.values()], names=list(spans)),
                       struct.pack(">i", 254), _xdr_item([1])], names=["variables", "references", "compressed"])
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".rdb").write_bytes(rdb)
    base.with_suffix(".rdx").write_bytes(gzip.compress(_xdr(index)))


# ---- readers ---------------------------------------------------------------------------------------------------------

def test_dictd_numbers_and_entries(tmp_path):
    assert decode_number("Fz") == 5 * 64 + 51 and decode_number(_b64(123456)) == 123456
    with pytest.raises(ValueError, match="base64"):
        decode_number("F z")
    write_dictd(tmp_path / "d" / "x", [("00-database-info", "about x\n"), ("apple", "Apple, n. A fruit.\n"),
                                       ("banana", "Banana, n. Yellow.\n")])
    entries = read_dictd(tmp_path / "d" / "x")
    assert [e.headwords for e in entries] == [("apple",), ("banana",)]
    assert entries[1].text == "Banana, n. Yellow.\n"
    assert [e.headwords[0] for e in read_dictd(tmp_path / "d" / "x.index", metadata=True)][0] == "00-database-info"
    with pytest.raises(FileNotFoundError, match="no dictd database"):
        read_dictd(tmp_path / "d" / "missing")


def test_sword_reads_books_verses_and_either_index_width(tmp_path):
    gen = ['<div osisID="Gen" type="book"/><title type="main">The First Book</title>', '<chapter n="1"/>',
           'In the <w lemma="strong:H1">beginning</w>.<note>a footnote</note>', "And the earth.",
           '<chapter n="2"/>', "Thus the heavens."]
    exo = ['<title type="main">Exodus</title>', '<chapter n="1"/>', "Now these &amp; those."]
    for driver, conf_driver in (("zText", None), ("zText4", None), ("zText", "zText4")):
        root = tmp_path / f"{driver}-{conf_driver}"
        write_sword(root, "Test", [gen, exo], driver=driver, conf_driver=conf_driver)
        module = find_module(root, "test")
        entries = read_entries(module)
        assert [e.block for e in entries] == [0] * 6 + [1] * 3
        doc = books._bible_book([e for e in entries if e.block == 0])
        assert doc.title == "The First Book"
        assert doc.text.split("\n") == ["The First Book", "1:1 In the beginning.", "1:2 And the earth.",
                                        "2:1 Thus the heavens."]
        assert books._bible_book([e for e in entries if e.block == 1]).text.endswith("1:1 Now these & those.")
    with pytest.raises(FileNotFoundError, match="no SWORD module"):
        find_module(root, "other")


def test_osis_to_text():
    markup = ('<div type="x-p"/>A <hi type="italic">word</hi> , said<note n="a">no</note> he.<lb/>'
              '<title>Head</title>Next &lt;line&gt;')
    assert osis_to_text(markup) == "A word, said he.\n\nHead\nNext <line>"
    assert osis_to_text(markup, titles=False) == "A word, said he.\nNext <line>"


def test_r_lazyload_round_trip(tmp_path):
    write_lazyload(tmp_path / "data" / "Rdata", {"emma": ["EMMA", "", "By Jane Austen"], "other": ["x"]})
    data = read_lazyload(tmp_path / "data" / "Rdata.rdb")
    assert data == {"emma": ["EMMA", "", "By Jane Austen"], "other": ["x"]}
    with pytest.raises(ValueError, match="not R XDR"):
        unserialize(b"RDX2\n")


def test_wordnet_lines(tmp_path):
    line = ('00217014 04 n 02 destruction 0 devastation 0 001 @ 00209943 n 0000 | the termination of something; '
            '"the destruction of the city"  ')
    synset = parse_data_line(line)
    assert (synset.lexname, synset.words) == ("noun.act", ("destruction", "devastation"))
    assert synset.gloss == 'the termination of something; "the destruction of the city"'
    directory = tmp_path / "wn"
    directory.mkdir()
    for pos in ("noun", "verb", "adj", "adv"):
        (directory / f"data.{pos}").write_text("  1 licence header\n" + (line + "\n" if pos == "noun" else ""))
    assert [s.words for s in read_glosses(directory)] == [("destruction", "devastation")]
    with pytest.raises(ValueError, match="not a WordNet data line"):
        parse_data_line("00217014 04 n")


# ---- cleaners --------------------------------------------------------------------------------------------------------

def test_gutenberg_body_and_unwrap():
    text = ("Header\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\nProduced by someone\r\nand more\r\n\r\n"
            "CHAPTER 1\r\n\r\nIt was a _dark_ and\r\nstormy night.\r\n\r\n    A verse line\r\n    another\r\n\r\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicence")
    assert books.unwrap(books.gutenberg_body(text)) == \
        "CHAPTER 1\n\nIt was a dark and stormy night.\n\n    A verse line\n    another"


def test_clean_gcide():
    entry = ("Abaca \\Ab\"a*ca\\ ([a^]b\"[.a]*k[.a]), n. [The native name.]\n   The Manila-hemp plant ({Musa "
             "textilis}); AS. b[ae]c. [R.]\n   [1913 Webster +PJC]\n")
    assert books.clean_gcide(entry) == \
        "Abaca, n. [The native name.]\n   The Manila-hemp plant (Musa textilis); AS. bæc. [R.]"


# ---- from a .deb to text ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_fetch_and_build_from_a_local_deb(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: dict-devil\nVersion: 9.9-1\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: test\n")
    write_dictd(pkg / "usr" / "share" / "dictd" / "devil",
                [("00-database-info", "notice\n\n PREFACE\n\nThe preface.\n"),
                 ("ABASEMENT", "ABASEMENT, n.  A decent and customary\nmental attitude.\n"),
                 ("ZEUS", "ZEUS, n.  The chief of Grecian gods.\n")])
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(debs / "dict-devil_9.9-1_all.deb")],
                   check=True, capture_output=True)
    cache = tmp_path / "cache"
    found = books.fetch_books(cache, ["devil"], debs=debs)
    assert found["dict-devil"].name == "dict-devil_9.9-1_all.deb"
    manifest = books.build_books(cache, ["devil", "kjv"])
    assert manifest["missing"] == ["kjv"]
    (source,) = manifest["sources"]
    assert (source["name"], source["version"], source["domain"]) == ("devil", "9.9-1", "reference")
    (doc,) = source["documents"]
    text = (cache / "text" / doc["path"]).read_text()
    assert text == ("PREFACE\n\nThe preface.\n\nABASEMENT, n.  A decent and customary mental attitude.\n\n"
                    "ZEUS, n.  The chief of Grecian gods.\n")
    assert json.loads((cache / "text" / "manifest.json").read_text()) == manifest
    with pytest.raises(ValueError, match="unknown"):
        books.select_sources(["devil", "nope"])
