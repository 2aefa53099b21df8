"""``dla data``: build the public-domain English corpus, tokenize any corpus into a token directory, describe one.

    dla data books [--cache runs/books]                        apt-get download + unpack + plain text
    dla data tokenize OUT --books runs/books/text --source code:stdlib=stdlib
    dla data tokenize OUT --source notes=my_texts/ --source code=src/**/*.jsonl --tokenizer my_tokenizer/
    dla data info OUT                                          the table of documents and tokens
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _heldout(args: argparse.Namespace):
    if not args.heldout_domain:
        return args.heldout
    fractions = {"*": args.heldout}
    for item in args.heldout_domain:
        domain, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--heldout-domain: expected DOMAIN=FRACTION, got {item!r}")
        fractions[domain] = float(value)
    return fractions


def _books(args: argparse.Namespace) -> int:
    from dla.data.books import build_books, fetch_books

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = fetch_books(args.cache, args.sources, update=not args.no_update, debs=args.debs)
    missing = [p for p, deb in found.items() if deb is None]
    manifest = build_books(args.cache, args.sources)
    print("| source | package | version | domain | documents | characters |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for s in manifest["sources"]:
        chars = sum(d["chars"] for d in s["documents"])
        print(f"| {s['name']} | {s['package']} | {s['version']} | {s['domain']} | {len(s['documents'])} | {chars:,} |")
    if missing:
        print(f"not fetched (left out): {', '.join(missing)}")
    print(f"text: {Path(args.cache) / 'text'}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from dla.data.corpus import book_sources, corpus_table, parse_source, write_corpus
    from dla.data.tokenizer import TokenizerConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sources = book_sources(args.books) if args.books else []
    sources += [parse_source(spec) for spec in args.source]
    if not sources:
        raise ValueError("--source / --books: give at least one source")
    config = TokenizerConfig(path=args.tokenizer, vocab_size=args.vocab_size, train_chars=args.train_chars)
    meta = write_corpus(sources, args.out, tokenizer=config, heldout=_heldout(args), seed=args.seed,
                        progress=True)
    print(corpus_table(meta))
    _size(args.out)
    return 0


def _size(path) -> None:
    total = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    print(f"{path}: {total / 2**20:.1f} MiB")


def _info(args: argparse.Namespace) -> int:
    from dla.data.corpus import TokenCorpus, corpus_table

    corpus = TokenCorpus(args.out)
    print(corpus_table(corpus.meta))
    long_docs = [r for r in corpus.select("val") if r["tokens"] >= args.min_tokens]
    print(f"held-out documents with >= {args.min_tokens} tokens: {len(long_docs)}")
    for r in long_docs:
        print(f"  {r['domain']:<11} {r['source']:<9} {r['name']:<40} {r['tokens']:>9,}")
    _size(args.out)
    return 0


def add_data_parser(sub) -> None:
    """Register ``dla data`` (books, tokenize, info) on the ``dla`` command's subparsers."""
    data = sub.add_parser("data", help="corpora: the public-domain English books, tokenizing into a token corpus"
                          ).add_subparsers(dest="data", metavar="DATA", required=True)
    p = data.add_parser("books", help="fetch Debian's public-domain books and reference texts (apt-get download, "
                        "nothing installed) and write them as plain-text documents")
    p.add_argument("--cache", default="runs/books", help="debs/, root/ (unpacked) and text/ go here")
    p.add_argument("--sources", nargs="+", default=None, metavar="NAME",
                   help="catalogue names (default: all; see dla.data.books.CATALOGUE)")
    p.add_argument("--debs", default=None, help="use the .deb files in this directory instead of apt-get download")
    p.add_argument("--no-update", action="store_true", help="skip apt-get update")
    p.set_defaults(fn=_books)
    p = data.add_parser("tokenize", help="tokenize named sources into a token corpus (train.bin, val.bin, "
                        "documents.json, tokenizer) that `data.tokens` in a recipe reads")
    p.add_argument("out", help="the corpus directory (replaced if it exists)")
    p.add_argument("--source", action="append", default=[], metavar="DOMAIN[:NAME]=PATH",
                   help="a source: PATH is a .txt/.jsonl/.parquet file, a directory or a glob, or 'stdlib' "
                        "(repeatable)")
    p.add_argument("--books", default=None, metavar="TEXT_DIR",
                   help="every source of a `dla data books` text directory (its manifest.json)")
    p.add_argument("--tokenizer", default=None, help="load this tokenizer (directory or tokenizer.json) instead "
                   "of training one")
    p.add_argument("--vocab-size", type=int, default=16384, help="size of the trained BPE (default 16384)")
    p.add_argument("--train-chars", type=int, default=20_000_000,
                   help="characters the BPE is trained on, drawn equally from each domain (default 20M)")
    p.add_argument("--heldout", type=float, default=0.05,
                   help="fraction of each domain's characters held out as whole documents (default 0.05)")
    p.add_argument("--heldout-domain", action="append", default=[], metavar="DOMAIN=FRACTION",
                   help="another fraction for one domain (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out choice")
    p.set_defaults(fn=_tokenize)
    p = data.add_parser("info", help="documents and tokens of a token corpus, and its long held-out documents")
    p.add_argument("out", help="the corpus directory")
    p.add_argument("--min-tokens", type=int, default=8192, help="list held-out documents at least this long")
    p.set_defaults(fn=_info)


__all__ = ["add_data_parser"]
