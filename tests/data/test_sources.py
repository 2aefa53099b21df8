import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dla.data.sources import (SourceConfig, iter_corpus, iter_documents, iter_file_documents, iter_hf_documents,
                              iter_stdlib_documents, list_files, source_fingerprint, stdlib_files, stdlib_root)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_parquet(path, column, values):
    pq.write_table(pa.table({column: values, "id": list(range(len(values)))}), path)


def test_txt_file_is_one_document(tmp_path):
    text = "line one\nline two ünï\n"
    (tmp_path / "a.txt").write_text(text)
    assert list(iter_file_documents(tmp_path / "a.txt")) == [text]


def test_jsonl_text_field_and_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second", "x": 1}) + "\n"
                    + json.dumps({"body": None}) + "\n")
    assert list(iter_file_documents(path, text_field="body")) == ["first", "second"]


def test_parquet_column(tmp_path):
    write_parquet(tmp_path / "a.parquet", "content", ["p0", "p1", None, "p3"])
    assert list(iter_file_documents(tmp_path / "a.parquet", text_field="content")) == ["p0", "p1", "p3"]


def test_directory_recursive_sorted_mixed_formats(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c").mkdir()
    (tmp_path / "z.txt").write_text("z")
    (tmp_path / "a.txt").write_text("a")
    write_jsonl(tmp_path / "b" / "m.jsonl", [{"text": "m0"}, {"text": "m1"}])
    write_parquet(tmp_path / "b" / "c" / "p.parquet", "text", ["p0"])
    (tmp_path / "b" / "notes.csv").write_text("ignored,1\n")
    files = list_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.txt", "b/c/p.parquet", "b/m.jsonl", "z.txt"]
    assert list(iter_file_documents(tmp_path)) == ["a", "p0", "m0", "m1", "z"]


def test_glob_pattern(tmp_path):
    (tmp_path / "x" / "y").mkdir(parents=True)
    write_jsonl(tmp_path / "x" / "y" / "2.jsonl", [{"text": "two"}])
    write_jsonl(tmp_path / "x" / "1.jsonl", [{"text": "one"}])
    (tmp_path / "x" / "skip.txt").write_text("skip")
    docs = list(iter_documents(SourceConfig("files", path=str(tmp_path / "x" / "**" / "*.jsonl"))))
    assert docs == ["one", "two"]


def test_hf_datasets_local_json_and_parquet(tmp_path):
    pytest.importorskip("datasets")
    write_jsonl(tmp_path / "d.jsonl", [{"body": f"hf doc {i}"} for i in range(5)])
    write_parquet(tmp_path / "d.parquet", "body", [f"pq doc {i}" for i in range(3)])
    docs = list(iter_hf_documents("json", data_files=[str(tmp_path / "d.jsonl")], text_field="body"))
    assert docs == [f"hf doc {i}" for i in range(5)]
    config = SourceConfig("hf", path="parquet", data_files=str(tmp_path / "d.parquet"), text_field="body")
    assert config.data_files == (str(tmp_path / "d.parquet"),)
    assert list(iter_documents(config)) == [f"pq doc {i}" for i in range(3)]


def test_hf_unknown_field_names_it(tmp_path):
    pytest.importorskip("datasets")
    write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    with pytest.raises(ValueError, match="text_field.*'text'.*available.*body"):
        list(iter_hf_documents("json", data_files=[str(tmp_path / "d.jsonl")]))


def test_stdlib_corpus_nonempty_deterministic_and_filtered():
    files = stdlib_files()
    assert len(files) > 100
    assert files == stdlib_files()
    root = stdlib_root()
    relative = [f.relative_to(root).as_posix() for f in files]
    assert relative == sorted(relative) and len(set(relative)) == len(relative)
    parts = {p for f in files for p in f.relative_to(root).parts[:-1]}
    assert not parts & {"site-packages", "test", "tests", "idle_test"}
    assert len(stdlib_files(include_tests=True)) > len(files)
    docs = list(iter_documents(SourceConfig("stdlib", max_documents=20)))
    assert len(docs) == 20 and all(docs)
    assert docs == [d for d, _ in zip((d for d in iter_stdlib_documents() if d), range(20))]
    expected = [t for t in (f.read_text(encoding="utf-8") for f in files[:200]) if t][:20]
    assert docs == expected


def test_max_documents_and_corpus_order(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    sources = [SourceConfig("files", path=str(tmp_path / "b.txt")),
               SourceConfig("files", path=str(tmp_path), max_documents=1)]
    assert list(iter_corpus(sources)) == ["b", "a"]


def test_fingerprint_tracks_file_changes(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    config = SourceConfig("files", path=str(tmp_path))
    before = source_fingerprint(config)
    assert source_fingerprint(config) == before
    (tmp_path / "a.txt").write_text("one plus more")
    assert source_fingerprint(config) != before
    assert source_fingerprint(SourceConfig("stdlib")) != source_fingerprint(SourceConfig("stdlib", include_tests=True))


def test_missing_path_names_argument(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"path: .*nope\.txt"):
        list(iter_documents(SourceConfig("files", path=missing)))
    with pytest.raises(FileNotFoundError, match=r"path: glob .*\*\.jsonl"):
        list_files(str(tmp_path / "*.jsonl"))


def test_unknown_format_names_suffix(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match=r"path: .*a\.csv.*'\.csv'"):
        list_files(tmp_path / "a.csv")
    with pytest.raises(ValueError, match=r"path: directory .*holds no file"):
        list_files(tmp_path)


def test_unknown_field_and_column_name_it(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"body": "x"}])
    with pytest.raises(ValueError, match=r"text_field: 'text' not found .*a\.jsonl.* line 1.*body"):
        list(iter_file_documents(tmp_path / "a.jsonl"))
    write_parquet(tmp_path / "a.parquet", "body", ["x"])
    with pytest.raises(ValueError, match=r"text_field: column 'content' not found .*a\.parquet"):
        list(iter_file_documents(tmp_path / "a.parquet", text_field="content"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl.* line 1 is not valid JSON"):
        list(iter_file_documents(tmp_path / "bad.jsonl"))


def test_empty_corpus_raises(tmp_path):
    (tmp_path / "a.txt").write_text("")
    write_jsonl(tmp_path / "b.jsonl", [{"text": ""}])
    with pytest.raises(ValueError, match="yielded no non-empty document"):
        list(iter_documents(SourceConfig("files", path=str(tmp_path))))
    with pytest.raises(ValueError, match="sources"):
        list(iter_corpus([]))


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "web"}, "kind: expected one of"),
    ({"kind": "files"}, "path: required"),
    ({"kind": "stdlib", "path": "x"}, "path: must be empty"),
    ({"kind": "files", "path": "x", "data_files": ("a",)}, "data_files"),
    ({"kind": "stdlib", "max_documents": 0}, "max_documents"),
    ({"kind": "stdlib", "text_field": ""}, "text_field"),
])
def test_source_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SourceConfig(**kwargs)
