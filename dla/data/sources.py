"""Corpus sources: iterate documents (``str``) from Hugging Face datasets, local files, or the Python stdlib.

Every source yields documents in a deterministic order and skips empty documents. Three kinds:

- ``"hf"``: ``datasets.load_dataset(path, name, split=..., streaming=...)``; ``path`` is a hub name, or a builder
  such as ``"json"`` / ``"parquet"`` with ``data_files``.
- ``"files"``: ``.txt`` (one file = one document), ``.jsonl`` (one JSON object per line, ``text_field`` holds the
  document) and ``.parquet`` (``text_field`` is the column). ``path`` is a file, a directory (searched recursively,
  files with other suffixes ignored) or a glob pattern (``**`` allowed); files are visited in sorted path order.
- ``"stdlib"``: the ``.py`` files of the running Python's standard library, one document per file: the embedded
  default corpus that exists on every machine.

Text files are decoded as UTF-8 with undecodable bytes replaced by U+FFFD.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union


SOURCE_KINDS = ("hf", "files", "stdlib")
FILE_FORMATS = (".txt", ".jsonl", ".parquet")
STDLIB_SKIP_DIRS = ("site-packages", "dist-packages", "__pycache__")
STDLIB_TEST_DIRS = ("test", "tests", "idle_test")


@dataclass(frozen=True)
class SourceConfig:
    """One corpus source; ``iter_documents(config)`` reads it.

    Example: ``SourceConfig("files", path="data/**/*.jsonl", text_field="content")``.
    """

    kind: str = "stdlib"  # one of SOURCE_KINDS
    path: str = ""  # hf: dataset name or builder ("json", "parquet"); files: file, directory or glob
    name: Optional[str] = None  # hf only: dataset configuration name
    split: str = "train"  # hf only: split to read
    data_files: tuple[str, ...] = ()  # hf only: local/remote files for a builder such as "json"
    revision: Optional[str] = None  # hf only: dataset revision, part of the cache key
    streaming: bool = True  # hf only: stream instead of downloading the whole split
    text_field: str = "text"  # hf/jsonl: key of the document; parquet: column name
    max_documents: Optional[int] = None  # stop after this many (non-empty) documents; None = all
    include_tests: bool = False  # stdlib only: also read test/, tests/ and idle_test/ packages

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind: expected one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind in ("hf", "files") and not self.path:
            raise ValueError(f"path: required for kind={self.kind!r}, got {self.path!r}")
        if self.kind == "stdlib" and self.path:
            raise ValueError(f"path: must be empty for kind='stdlib', got {self.path!r}")
        if isinstance(self.data_files, str):
            object.__setattr__(self, "data_files", (self.data_files,))
        elif not isinstance(self.data_files, tuple):
            object.__setattr__(self, "data_files", tuple(self.data_files))
        if self.data_files and self.kind != "hf":
            raise ValueError(f"data_files: only for kind='hf', got {self.data_files!r} with kind={self.kind!r}")
        if not self.text_field:
            raise ValueError(f"text_field: expected a non-empty name, got {self.text_field!r}")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"max_documents: expected None or >= 1, got {self.max_documents}")


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def list_files(path: Union[str, os.PathLike]) -> list[Path]:
    """The files a ``"files"`` source reads, in sorted order.

    Args:
        path: a file with a suffix in ``FILE_FORMATS``, a directory (searched recursively; other suffixes are
            skipped) or a glob pattern (``**`` matches nested directories; matched files need a supported suffix).

    Returns:
        ``list[Path]``, sorted by path, no duplicates.

    Raises:
        FileNotFoundError: ``path`` does not exist or the glob matches nothing.
        ValueError: a named file has an unknown format, or a directory holds no supported file.
    """
    text = os.fspath(path)
    if _is_glob(text):
        matches = sorted({Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()})
        if not matches:
            raise FileNotFoundError(f"path: glob {text!r} matches no file")
        unknown = [str(p) for p in matches if p.suffix not in FILE_FORMATS]
        if unknown:
            raise ValueError(f"path: glob {text!r} matches files of unknown format {unknown[:3]}; "
                             f"supported suffixes are {FILE_FORMATS}")
        return matches
    root = Path(text)
    if not root.exists():
        raise FileNotFoundError(f"path: {text!r} does not exist")
    if root.is_file():
        if root.suffix not in FILE_FORMATS:
            raise ValueError(f"path: {text!r} has unknown format {root.suffix!r}; supported: {FILE_FORMATS}")
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in FILE_FORMATS)
    if not files:
        raise ValueError(f"path: directory {text!r} holds no file with a suffix in {FILE_FORMATS}")
    return files


def _text(value, field: str, where: str):
    """A document's text: ``None`` (skipped) or a ``str``; anything else is a ``ValueError`` naming ``text_field``."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"text_field: {field} in {where} holds {type(value).__name__}, expected str")
    return value


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"path: {str(path)!r} line {line_no} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"text_field: {text_field!r} not found in {str(path)!r} line {line_no}; "
                                 f"available: {keys}")
            value = _text(record[text_field], f"{text_field!r}", f"{str(path)!r} line {line_no}")
            if value is not None:
                yield value


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise ValueError(f"text_field: column {text_field!r} not found in {str(path)!r}; available: {columns}")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            value = _text(value, f"column {text_field!r}", f"{str(path)!r}")
            if value is not None:
                yield value


def iter_file_documents(path: Union[str, os.PathLike], text_field: str = "text") -> Iterator[str]:
    """Documents of the files under ``path`` (see ``list_files``), file by file in sorted order.

    Args:
        path: file, directory or glob pattern.
        text_field: JSON key (``.jsonl``) or column (``.parquet``) holding the text; unused for ``.txt``.

    Yields:
        ``str`` documents: a whole ``.txt`` file, one ``.jsonl`` record or one ``.parquet`` row; ``None``
        values are skipped.
    """
    for file in list_files(path):
        if file.suffix == ".txt":
            yield _read_text(file)
        elif file.suffix == ".jsonl":
            yield from _iter_jsonl(file, text_field)
        else:
            yield from _iter_parquet(file, text_field)


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(include_tests: bool = False) -> list[Path]:
    """The ``.py`` files of the standard library, sorted by their path relative to ``stdlib_root()``.

    ``site-packages`` / ``dist-packages`` are always excluded; ``test``, ``tests`` and ``idle_test`` directories
    unless ``include_tests``.
    """
    root = stdlib_root()
    skip = STDLIB_SKIP_DIRS + (() if include_tests else STDLIB_TEST_DIRS)
    files = [p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def iter_stdlib_documents(include_tests: bool = False) -> Iterator[str]:
    """One document per standard-library ``.py`` file, in ``stdlib_files`` order."""
    for file in stdlib_files(include_tests):
        yield _read_text(file)


def iter_hf_documents(path: str, name: Optional[str] = None, *, split: str = "train", text_field: str = "text",
                      data_files: Sequence[str] = (), revision: Optional[str] = None,
                      streaming: bool = True) -> Iterator[str]:
    """Documents of a ``datasets`` split, read with ``load_dataset(path, name, split=split, streaming=streaming)``.

    Args:
        path: hub dataset name (``"HuggingFaceFW/fineweb-edu"``) or builder (``"json"``, ``"parquet"``, ``"text"``).
        name: dataset configuration (``"sample-10BT"``), or None.
        split: split name, default ``"train"``.
        text_field: the example key holding the document.
        data_files: files for a builder; empty = let ``datasets`` resolve them.
        revision: dataset revision (branch, tag or commit), or None.
        streaming: stream examples instead of downloading and preparing the split first.

    Yields:
        ``str`` documents in dataset order; ``None`` values are skipped.
    """
    try:
        import datasets
    except ImportError as e:
        raise ImportError("kind='hf' sources need the `datasets` package: pip install datasets") from e
    kwargs = {"split": split, "streaming": streaming}
    if data_files:
        kwargs["data_files"] = list(data_files)
    if revision is not None:
        kwargs["revision"] = revision
    dataset = datasets.load_dataset(path, name, **kwargs)
    for index, example in enumerate(dataset):
        if text_field not in example:
            raise ValueError(f"text_field: {text_field!r} not found in dataset {path!r} example {index}; "
                             f"available: {sorted(example)}")
        value = _text(example[text_field], f"{text_field!r}", f"dataset {path!r} example {index}")
        if value is not None:
            yield value


def iter_documents(config: SourceConfig) -> Iterator[str]:
    """Non-empty documents of one source, at most ``config.max_documents``.

    Raises:
        ValueError: the source yields no non-empty document (an empty corpus).
    """
    if config.kind == "hf":
        documents = iter_hf_documents(config.path, config.name, split=config.split, text_field=config.text_field,
                                      data_files=config.data_files, revision=config.revision,
                                      streaming=config.streaming)
    elif config.kind == "files":
        documents = iter_file_documents(config.path, config.text_field)
    else:
        documents = iter_stdlib_documents(config.include_tests)
    count = 0
    for document in documents:
        if not document:
            continue
        yield document
        count += 1
        if config.max_documents is not None and count >= config.max_documents:
            return
    if count == 0:
        raise ValueError(f"path: source kind={config.kind!r} path={config.path!r} yielded no non-empty document")


def iter_named_documents(config: SourceConfig) -> Iterator[tuple[str, str]]:
    """``(name, document)`` for each document ``iter_documents(config)`` yields, in the same order.

    Names: a ``files`` document is its file's path relative to ``config.path`` (a directory; for a file or a glob,
    relative to the files' common directory), plus ``:N`` for the N-th text (1-based; null values skipped) of a
    ``.jsonl`` / ``.parquet`` file; a ``stdlib`` document is its path under ``stdlib_root()``; a ``hf`` document
    is ``path[index]`` (``name/path[index]`` with a configuration name).
    """
    if config.kind == "files":
        files = list_files(config.path)
        root = Path(config.path) if Path(config.path).is_dir() else Path(os.path.commonpath([f.parent for f in files]))

        def named() -> Iterator[tuple[str, str]]:
            for file in files:
                name = file.relative_to(root).as_posix()
                if file.suffix == ".txt":
                    yield name, _read_text(file)
                else:
                    for i, doc in enumerate(iter_file_documents(file, config.text_field), start=1):
                        yield f"{name}:{i}", doc
        pairs = named()
    elif config.kind == "stdlib":
        root = stdlib_root()
        files = stdlib_files(config.include_tests)
        pairs = ((f.relative_to(root).as_posix(), doc) for f, doc in zip(files, iter_stdlib_documents(
            config.include_tests)))
    else:
        label = f"{config.name}/{config.path}" if config.name else config.path
        pairs = ((f"{label}[{i}]", doc) for i, doc in enumerate(iter_documents(dataclasses.replace(
            config, max_documents=None))))
    count = 0
    for name, document in pairs:
        if not document:
            continue
        yield name, document
        count += 1
        if config.max_documents is not None and count >= config.max_documents:
            return
    if count == 0:
        raise ValueError(f"path: source kind={config.kind!r} path={config.path!r} yielded no non-empty document")


def iter_corpus(sources: Sequence[SourceConfig]) -> Iterator[str]:
    """Documents of every source in turn (``sources[0]`` first)."""
    if not sources:
        raise ValueError("sources: expected at least one SourceConfig, got none")
    for source in sources:
        yield from iter_documents(source)


def source_fingerprint(config: SourceConfig) -> str:
    """A hex digest that changes when the documents of ``config`` may change; used as a cache key.

    Files are identified by resolved path, size and modification time; the stdlib by the Python version and its
    file list with sizes; a ``datasets`` source by its arguments (pin ``revision`` for a hub dataset that moves).
    """
    entry: dict = {"config": {k: v for k, v in vars(config).items()}}
    if config.kind == "files":
        entry["files"] = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in list_files(config.path)]
    elif config.kind == "stdlib":
        root = stdlib_root()
        entry["python"] = sys.version
        files = stdlib_files(config.include_tests)
        entry["files"] = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in files]
    else:
        entry["data_files"] = [(str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns)
                               if Path(f).is_file() else f for f in config.data_files]
    return hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()
