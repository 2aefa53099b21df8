"""File writers shared by the data tests."""

import json


def write_corpus(directory, documents):
    """Spread ``documents`` over a .txt file, a .jsonl file and a nested .parquet file, in sorted-path order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (directory / "b").mkdir(parents=True)
    third = len(documents) // 3
    (directory / "a.txt").write_text(documents[0])
    pq.write_table(pa.table({"text": documents[1:third]}), directory / "b" / "c.parquet")
    (directory / "b" / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[third:]))
    return directory
