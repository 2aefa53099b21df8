"""A tokenized corpus on disk: whole documents held out per domain, token streams to memory-map, a document index.

``write_corpus`` reads named sources (each a ``SourceConfig`` with a ``domain`` label such as ``books`` or
``code``), holds out whole documents, trains a byte-level BPE on the training documents (or loads a tokenizer)
and writes one directory:

- ``train.bin`` / ``val.bin``: ``EOS d1 EOS d2 ... EOS dn EOS`` as raw ``uint16`` (``uint32`` past 65,536 ids),
  the layout of ``dla.data.packing`` (``load_token_streams`` reads them; the trainer packs them into windows);
- ``documents.json``: one record per document: ``source``, ``domain``, ``name``, ``split``, ``offset`` (of its
  leading EOS in the split's stream), ``tokens`` (without the EOS), ``chars``;
- ``meta.json``: the streams' metadata plus per-source and per-domain counts and how the split was made;
- ``tokenizer.json`` (+ the ``transformers`` config files): the tokenizer the ids come from.

Held-out documents. Within each domain, documents are ordered by a seeded hash of their text (``document_score``)
and held out in that order until they hold ``heldout`` of the domain's characters (at least one document, never
all of them). Documents stay whole, so a long held-out book can be scored token by token far past the training
length (``dla.eval.position``); the split depends only on the texts, the fractions and the seed.

Example:
    >>> sources = [CorpusSource("books", "austen", SourceConfig("files", path="runs/books/text/books/austen")),
    ...            CorpusSource("code", "stdlib", SourceConfig("stdlib"))]
    >>> write_corpus(sources, "runs/books/tokens", heldout=0.05)            # doctest: +SKIP
    >>> corpus = TokenCorpus("runs/books/tokens")                           # doctest: +SKIP
    >>> splits = corpus.packed(seq_len=2048)                                # what the trainer reads
    >>> books = corpus.documents("val", domain="books", min_tokens=8192)    # whole held-out books
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from dla.data.cache import publish_dir, staging_dir
from dla.data.packing import CACHE_FORMAT, SPLITS, PackedSequences, PackedSplits, load_token_streams, token_dtype
from dla.data.sources import SourceConfig, iter_named_documents
from dla.data.tokenizer import TextTokenizer, TokenizerConfig, load_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

CORPUS_KIND = "dla-token-corpus"
DOCUMENTS_FILE = "documents.json"
_LABEL = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class CorpusSource:
    """One source of a corpus: its documents (``source``), the domain they count toward, and a name."""

    domain: str  # e.g. books, bible, code: held-out fractions and perplexities are per domain
    name: str  # unique within the corpus, e.g. austen, stdlib
    source: SourceConfig

    def __post_init__(self) -> None:
        for field_name in ("domain", "name"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not _LABEL.fullmatch(value):
                raise ValueError(f"{field_name}: expected letters, digits, '.', '_' or '-', got {value!r}")
        if not isinstance(self.source, SourceConfig):
            raise ValueError(f"source: expected a SourceConfig, got {type(self.source).__name__}")


def parse_source(spec: str) -> CorpusSource:
    """``DOMAIN[:NAME]=stdlib`` or ``DOMAIN[:NAME]=PATH`` (a ``.txt``/``.jsonl``/``.parquet`` file, a directory or
    a glob) as a ``CorpusSource``; ``NAME`` defaults to ``DOMAIN``.

    Raises:
        ValueError: no ``=``, or a bad domain or name.
    """
    label, sep, target = spec.partition("=")
    if not sep or not label or not target:
        raise ValueError(f"source: expected DOMAIN[:NAME]=PATH or DOMAIN[:NAME]=stdlib, got {spec!r}")
    domain, _, name = label.partition(":")
    config = SourceConfig("stdlib") if target == "stdlib" else SourceConfig("files", path=target)
    return CorpusSource(domain, name or domain, config)


def book_sources(text_dir: Union[str, os.PathLike]) -> list[CorpusSource]:
    """One ``CorpusSource`` per source of a ``dla.data.books`` text directory (read from its ``manifest.json``)."""
    root = Path(text_dir)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"text_dir: {str(root)!r} has no manifest.json (build it with `dla data books`)")
    sources = json.loads(manifest.read_text())["sources"]
    return [CorpusSource(s["domain"], s["name"], SourceConfig("files", path=str(root / s["domain"] / s["name"])))
            for s in sources]


def document_score(text: str, seed: int = 0) -> float:
    """A number in [0, 1) from ``blake2b(seed, text)``: the order in which documents are held out."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(text.encode("utf-8", errors="surrogatepass"))
    return int.from_bytes(digest.digest(), "little") / 2.0**64


def _iter_corpus(sources: Sequence[CorpusSource]) -> Iterator[tuple[CorpusSource, str, str]]:
    for source in sources:
        for name, text in iter_named_documents(source.source):
            yield source, name, text


def plan_heldout(records: Sequence[dict], heldout: Union[float, Mapping[str, float]]) -> list[bool]:
    """Which documents are held out (see the module docstring).

    Args:
        records: one dict per document with ``domain``, ``chars`` and ``score``.
        heldout: the fraction of each domain's characters to hold out, or ``{domain: fraction}`` (a domain not
            named holds out none; ``"*"`` sets the default).

    Returns:
        ``[bool]``, True for a held-out document, in ``records`` order.
    """
    fractions = dict(heldout) if isinstance(heldout, Mapping) else {"*": float(heldout)}
    for key, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"heldout: the fraction of {key!r} must be in [0, 1), got {value}")
    chosen = [False] * len(records)
    by_domain: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_domain.setdefault(record["domain"], []).append(i)
    for domain, members in by_domain.items():
        fraction = fractions.get(domain, fractions.get("*", 0.0))
        if fraction <= 0 or len(members) < 2:
            if fraction > 0:
                logger.warning("domain %s has one document: nothing held out", domain)
            continue
        budget = fraction * sum(records[i]["chars"] for i in members)
        taken = 0
        for i in sorted(members, key=lambda j: records[j]["score"])[:-1]:
            chosen[i] = True
            taken += records[i]["chars"]
            if taken >= budget:
                break
    return chosen


def _tokenizer_sample(sources: Sequence[CorpusSource], records: Sequence[dict], heldout: Sequence[bool],
                      train_chars: int) -> Iterator[str]:
    """Training documents for the tokenizer: each domain's in corpus order, up to an equal share of
    ``train_chars`` per domain (a long document is cut at its share)."""
    domains = sorted({r["domain"] for r in records})
    share = max(1, train_chars // len(domains))
    used = dict.fromkeys(domains, 0)
    for i, (source, _, text) in enumerate(_iter_corpus(sources)):
        if heldout[i] or used[source.domain] >= share:
            continue
        piece = text[:share - used[source.domain]]
        used[source.domain] += len(piece)
        yield piece


def write_corpus(sources: Sequence[CorpusSource], out_dir: Union[str, os.PathLike], *,
                 tokenizer: Union[TextTokenizer, TokenizerConfig, None] = None,
                 heldout: Union[float, Mapping[str, float]] = 0.05, seed: int = 0,
                 encode_batch_size: int = 64, progress: bool = False) -> dict:
    """Tokenize ``sources`` into ``out_dir`` (see the module docstring); an existing ``out_dir`` is replaced.

    Args:
        sources: the corpus; names must be unique.
        out_dir: the corpus directory.
        tokenizer: a ``TextTokenizer``, or a ``TokenizerConfig`` (load ``path``, or train a BPE of ``vocab_size``
            on ``train_chars`` characters drawn equally from every domain's training documents); None = train
            with ``TokenizerConfig(vocab_size=16384, train_chars=20_000_000)``.
        heldout: fraction of each domain's characters held out, or ``{domain: fraction, "*": default}``.
        seed: seed of the held-out order.
        encode_batch_size: documents per ``encode_batch`` call.
        progress: show tqdm bars on stderr.

    Returns:
        the ``meta.json`` contents.

    Raises:
        ValueError: no sources, duplicate names, an empty source.
    """
    if not sources:
        raise ValueError("sources: expected at least one CorpusSource, got none")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"sources: names must be unique, got {names}")
    from tqdm.auto import tqdm

    records = []
    for source, name, text in tqdm(_iter_corpus(sources), desc="read", unit=" docs", disable=not progress):
        records.append({"source": source.name, "domain": source.domain, "name": name, "chars": len(text),
                        "score": document_score(text, seed)})
    held = plan_heldout(records, heldout)
    if isinstance(tokenizer, TextTokenizer):
        tok = tokenizer
    else:
        config = tokenizer if tokenizer is not None else TokenizerConfig(vocab_size=16384, train_chars=20_000_000)
        if config.path is not None:
            tok = load_tokenizer(config.path, config.eos_token)
        else:
            logger.info("training a %d-token BPE on %d characters", config.vocab_size, config.train_chars)
            tok = train_tokenizer(_tokenizer_sample(sources, records, held, config.train_chars), config.vocab_size,
                                  eos_token=config.eos_token, min_frequency=config.min_frequency,
                                  train_chars=config.train_chars)
    out = Path(out_dir)
    tmp = staging_dir(out)
    try:
        meta = _write_streams(sources, records, held, tok, tmp, encode_batch_size, progress)
        meta.update(seed=seed, heldout=heldout if isinstance(heldout, float) else dict(heldout))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        tok.save(tmp)
        if out.exists():
            shutil.rmtree(out)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _write_streams(sources, records, held, tok: TextTokenizer, out: Path, batch_size: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    dtype = token_dtype(tok.vocab_size)
    eos = np.array([tok.eos_id], dtype=dtype)
    files = {split: open(out / f"{split}.bin", "wb") for split in SPLITS}
    offsets = dict.fromkeys(SPLITS, 0)
    documents: list[dict] = []
    bar = tqdm(total=sum(r["chars"] for r in records), desc="tokenize", unit="B", unit_scale=True,
               disable=not progress)

    def flush(batch: list[tuple[int, str]]) -> None:
        for (i, text), ids in zip(batch, tok.encode_batch([t for _, t in batch])):
            record, split = records[i], "val" if held[i] else "train"
            if len(text) != record["chars"]:
                raise ValueError(f"sources: {record['source']}/{record['name']} changed while being read")
            files[split].write(np.concatenate([eos, np.asarray(ids, dtype=dtype)]).tobytes())
            documents.append({"source": record["source"], "domain": record["domain"], "name": record["name"],
                              "split": split, "offset": offsets[split], "tokens": len(ids), "chars": len(text)})
            offsets[split] += len(ids) + 1
            bar.update(len(text))

    try:
        batch: list[tuple[int, str]] = []
        for i, (_, _, text) in enumerate(_iter_corpus(sources)):
            batch.append((i, text))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        if len(documents) != len(records):
            raise ValueError(f"sources: {len(records)} documents on the first read, {len(documents)} on the second")
        for split in SPLITS:
            if offsets[split]:
                files[split].write(eos.tobytes())
                offsets[split] += 1
    finally:
        bar.close()
        for f in files.values():
            f.close()
    (out / DOCUMENTS_FILE).write_text(json.dumps(documents) + "\n")
    splits = {split: {"num_tokens": offsets[split], "num_documents": sum(d["split"] == split for d in documents)}
              for split in SPLITS}
    return {"format": CACHE_FORMAT, "kind": CORPUS_KIND, "dtype": dtype.name, "eos_id": tok.eos_id,
            "vocab_size": tok.vocab_size, "splits": splits, "sources": summarize(documents, "source"),
            "domains": summarize(documents, "domain")}


def summarize(documents: Sequence[dict], key: str) -> dict:
    """``{value of key: {domain, train_documents, train_tokens, val_documents, val_tokens, chars}}`` in order of
    first appearance."""
    out: dict = {}
    for d in documents:
        row = out.setdefault(d[key], {"domain": d["domain"], "train_documents": 0, "train_tokens": 0,
                                      "val_documents": 0, "val_tokens": 0, "chars": 0})
        row[f"{d['split']}_documents"] += 1
        row[f"{d['split']}_tokens"] += d["tokens"]
        row["chars"] += d["chars"]
    return out


class TokenCorpus:
    """A corpus directory written by ``write_corpus``: streams as memory maps, the document index, the tokenizer.

    Args:
        path: the corpus directory.

    Raises:
        FileNotFoundError: no ``meta.json`` / ``documents.json`` at ``path``.
        ValueError: the directory is not a corpus of this format or its files disagree with ``meta.json``.
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = Path(path)
        for name in ("meta.json", DOCUMENTS_FILE):
            if not (self.path / name).is_file():
                raise FileNotFoundError(f"path: {str(self.path)!r} has no {name} (write one with `dla data "
                                        f"tokenize`)")
        self.meta = json.loads((self.path / "meta.json").read_text())
        if self.meta.get("kind") != CORPUS_KIND:
            raise ValueError(f"path: {str(self.path)!r} is not a token corpus (meta.json kind "
                             f"{self.meta.get('kind')!r}, expected {CORPUS_KIND!r})")
        for split in SPLITS:
            size = (self.path / f"{split}.bin").stat().st_size
            expected = self.meta["splits"][split]["num_tokens"] * np.dtype(self.meta["dtype"]).itemsize
            if size != expected:
                raise ValueError(f"path: {split}.bin in {str(self.path)!r} has {size} bytes, meta.json says "
                                 f"{expected} (an interrupted copy?)")
        self.streams, _ = load_token_streams(self.path)
        self.records: list[dict] = json.loads((self.path / DOCUMENTS_FILE).read_text())
        self._tokenizer: Optional[TextTokenizer] = None

    @property
    def tokenizer(self) -> TextTokenizer:
        """The corpus's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def domains(self) -> list[str]:
        """Domain names in corpus order."""
        return list(self.meta["domains"])

    def select(self, split: str = "val", *, domain: Optional[str] = None, source: Optional[str] = None,
               min_tokens: int = 0) -> list[dict]:
        """Document records of ``split`` (``train`` / ``val``), optionally of one domain or source and at least
        ``min_tokens`` long, in stream order."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        for arg, value, known in (("domain", domain, self.meta["domains"]), ("source", source, self.meta["sources"])):
            if value is not None and value not in known:
                raise ValueError(f"{arg}: {value!r} is not in this corpus; known: {', '.join(known)}")
        return [r for r in self.records if r["split"] == split and r["tokens"] >= min_tokens
                and (domain is None or r["domain"] == domain) and (source is None or r["source"] == source)]

    def tokens(self, record: Mapping) -> np.ndarray:
        """The token ids of one document (``int64 [tokens]``, without its leading EOS)."""
        start = int(record["offset"]) + 1
        return np.asarray(self.streams[record["split"]][start:start + int(record["tokens"])], dtype=np.int64)

    def documents(self, split: str = "val", **filters) -> list[tuple[dict, np.ndarray]]:
        """``(record, token ids)`` of the documents ``select(split, **filters)`` returns."""
        return [(r, self.tokens(r)) for r in self.select(split, **filters)]

    def packed(self, seq_len: int) -> PackedSplits:
        """The train and held-out streams cut into ``seq_len`` windows (``val`` None when nothing is held out)."""
        train = PackedSequences(self.streams["train"], seq_len, self.eos_id, "train")
        has_val = self.meta["splits"]["val"]["num_tokens"] > seq_len
        val = PackedSequences(self.streams["val"], seq_len, self.eos_id, "val") if has_val else None
        return PackedSplits(train, val, self.meta, self.path)


def corpus_table(meta: Mapping) -> str:
    """A markdown table of a corpus's sources and domains (documents and tokens, train and held out)."""
    rows = ["| source | domain | documents | tokens | held-out docs | held-out tokens |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]

    def line(label: str, domain: str, r: Mapping) -> str:
        docs, toks = r["train_documents"] + r["val_documents"], r["train_tokens"] + r["val_tokens"]
        return f"| {label} | {domain} | {docs:,} | {toks:,} | {r['val_documents']:,} | {r['val_tokens']:,} |"

    rows += [line(name, r["domain"], r) for name, r in meta["sources"].items()]
    rows += [line(f"**{name}**", "", r) for name, r in meta["domains"].items()]
    total = {k: sum(r[k] for r in meta["domains"].values())
             for k in ("train_documents", "train_tokens", "val_documents", "val_tokens")}
    rows.append(line("**all**", "", total))
    return "\n".join(rows)


__all__ = ["CorpusSource", "parse_source", "book_sources", "document_score", "plan_heldout", "write_corpus",
           "summarize", "TokenCorpus", "corpus_table", "CORPUS_KIND"]
