import json

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest

from aecore import io
from aecore.errors import AepipeError
from aecore.schema import ingest, read_schema
from tests.conftest import data_config


def test_ingest_csv_adds_row_id_and_records_roles(tmp_path, frame):
    source = tmp_path / "t.csv"
    frame.drop(columns="id").to_csv(source, index=False)
    out = ingest(data_config(source, label_col="label"), tmp_path / "raw")
    table = pq.read_table(out)
    assert table.column("row_id").to_pylist() == list(range(200))
    assert table.column("name").to_pylist()[3] == "row 3"  # raw rows are kept whole
    schema = read_schema(out)
    assert schema["features"] == ["a", "b", "c", "d", "constant"]  # numeric, no label
    assert (schema["id_col"], schema["label_col"]) == ("row_id", "label")


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv.gz"])
def test_ingest_formats_and_id_column(tmp_path, frame, kind):
    source = tmp_path / f"t.{kind}"
    if kind == "parquet":
        frame.to_parquet(source)
    elif kind == "jsonl":
        frame.to_json(source, orient="records", lines=True)
    else:
        frame.to_csv(source, index=False, compression="gzip")
    out = ingest(data_config(source, id_col="id"), tmp_path / "raw")
    back = pd.read_parquet(out)
    assert "row_id" not in back.columns
    assert back["id"].tolist() == frame["id"].tolist()
    assert read_schema(out)["features"] == ["a", "b", "c", "d", "constant", "label"]


def test_ingest_folder_and_glob_in_file_order(tmp_path, frame):
    folder = tmp_path / "parts"
    folder.mkdir()
    frame.iloc[:120].to_csv(folder / "p1.csv", index=False)
    frame.iloc[120:].to_parquet(folder / "p2.parquet")
    (folder / "notes.txt").write_text("ignored")
    for source in (folder, f"{folder}/*.*"):
        back = pd.read_parquet(ingest(data_config(source, id_col="id"), tmp_path / "r"))
        assert back["id"].tolist() == frame["id"].tolist()


def test_ingest_fsspec_url(tmp_path, frame):
    with fsspec.open("memory://bucket/t.parquet", "wb") as handle:
        frame.to_parquet(handle)
    out = ingest(data_config("memory://bucket/t.parquet"), tmp_path / "r")
    assert pq.read_table(out).num_rows == 200


def test_demo_source_is_digits(tmp_path):
    out = ingest(data_config("sklearn:digits", label_col="target"), tmp_path / "r")
    assert pq.read_table(out).num_rows == 1797
    assert len(read_schema(out)["features"]) == 64


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"label_col": "y"}, r"t.csv: label column 'y' not found"),
        ({"id_col": "key"}, r"t.csv: id column 'key' not found"),
        ({"id_col": "a"}, r"t.csv: id column 'a' has duplicate values"),
    ],
)
def test_bad_columns_name_file_and_column(tmp_path, frame, changes, pattern):
    source = tmp_path / "t.csv"
    frame.assign(a=1.0).to_csv(source, index=False)
    with pytest.raises(AepipeError, match=pattern):
        ingest(data_config(source, **changes), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert list(tmp_path.glob(".raw*")) == []  # no leftovers


def test_no_usable_columns(tmp_path):
    source = tmp_path / "words.csv"
    source.write_text("w,v\nx,y\nz,q\n")  # keys: a different string in every row
    with pytest.raises(
        AepipeError, match=r"words.csv: no usable feature columns \(columns: w, v\)"
    ):
        ingest(data_config(source), tmp_path / "raw")


def test_nested_column_is_refused_by_name(tmp_path):
    source = tmp_path / "nested.jsonl"
    source.write_text('{"a": 1.0, "tags": [1, 2]}\n{"a": 2.0, "tags": [3]}\n')
    with pytest.raises(AepipeError, match=r"nested.jsonl: feature column 'tags' is list<"):
        ingest(data_config(source, features=("a", "tags")), tmp_path / "raw")
    schema = read_schema(ingest(data_config(source), tmp_path / "raw"))
    assert schema["features"] == ["a"]  # by default, unusable columns are left out


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(AepipeError, match=r"nope.csv: no such file or directory"):
        ingest(data_config(tmp_path / "nope.csv"), tmp_path / "raw")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(AepipeError, match=r"broken.parquet: cannot read as PARQUET") as error:
        ingest(data_config(broken), tmp_path / "raw")
    assert "\n" not in str(error.value)


def test_redact_url_hides_secrets():
    assert io.redact_url("s3://key:secret@bucket/x.csv?token=abc") == "s3://***@bucket/x.csv?***"
    assert io.redact_url("data/x.csv") == "data/x.csv"
    assert "pw" not in io.redact_url("postgresql://user:pw@db:5432/mlflow")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    io.write_json({"v": 1}, target)
    with pytest.raises(RuntimeError), io.atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_errors_never_show_url_secrets(tmp_path):
    with pytest.raises(AepipeError) as error:
        ingest(data_config("memory://key:secret@bucket/none.csv?token=abc"), tmp_path / "r")
    assert "secret" not in str(error.value) and "abc" not in str(error.value)


def test_dictionaries_only_for_text():
    import pyarrow as pa

    schema = pa.schema(
        {
            "row_id": pa.int64(),
            "z0": pa.float32(),
            "label": pa.string(),
            "site": pa.dictionary(pa.int8(), pa.string()),
            "top_features": pa.list_(pa.string()),
            "tags": pa.large_list(pa.large_string()),
            "scores": pa.list_(pa.float32()),
        }
    )
    assert io.dictionary_columns(schema) == [
        "label",
        "site",
        "top_features.list.element",
        "tags.list.element",
    ]


def test_text_types_widen_when_a_later_block_disagrees(tmp_path):
    """Types come from a CSV's first 4 MB: a later 1.5 or "A17" widens the column, not fails."""
    n = 400_000
    frame = pd.DataFrame({"count": range(n), "code": range(n), "x": [0.5] * n})
    frame["count"] = frame["count"].astype(object)
    frame.loc[n - 2, "count"] = 1.5
    frame["code"] = frame["code"].astype(object)
    frame.loc[n - 1, "code"] = "A17"
    source = tmp_path / "late.csv"
    frame.to_csv(source, index=False)
    assert source.stat().st_size > io.TEXT_BLOCK  # the odd values are past the first block
    out = ingest(data_config(source), tmp_path / "raw")
    table = pq.read_table(out)
    assert str(table.schema.field("count").type) == "double"
    assert str(table.schema.field("code").type) == "string"
    assert table.column("count").to_pylist()[n - 2 :] == [1.5, n - 1]
    assert table.num_rows == n and table.column("row_id").to_pylist()[-1] == n - 1
    assert read_schema(out)["features"] == ["count", "x"]  # text, unique in each row: a key


def test_a_failed_restart_keeps_the_last_raw_folder(tmp_path, monkeypatch):
    """A widening restarts the ingest; when the rerun then fails, nothing is replaced."""
    monkeypatch.setattr(io, "TEXT_BLOCK", 1024)
    source = tmp_path / "t.csv"
    source.write_text("id,x\n" + "".join(f"{i},{i}\n" for i in range(100)))
    out = ingest(data_config(source, id_col="id"), tmp_path / "raw")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lines = "".join(f"{i},{i}\n" for i in range(3000))
    source.write_text(f"id,x\n{lines}1,2.5\n")  # x widens to float, then id 1 repeats
    with pytest.raises(AepipeError, match="id column 'id' has duplicate values"):
        ingest(data_config(source, id_col="id"), tmp_path / "raw")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_jsonl_numbers_then_text_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "TEXT_BLOCK", 1024)
    source = tmp_path / "mixed.jsonl"
    lines = [f'{{"x": {i}, "y": 1}}' for i in range(300)] + ['{"x": "v", "y": 2}'] * 300
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(AepipeError, match=r"mixed.jsonl: column 'x' holds both numbers and text"):
        ingest(data_config(source), tmp_path / "raw")


def test_multi_line_errors_hide_query_strings():
    text = "GET https://u:p@h/f.csv?sig=SECRET failed\nstatus 403 for https://h/g?token=T2"
    shown = io.redact_url(text)
    assert "SECRET" not in shown and "T2" not in shown and "u:p" not in shown
    assert shown.endswith("https://h/g?***")


def dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_only_the_leftovers_of_dead_processes_are_swept(tmp_path):
    import os

    dead = dead_pid()
    live = tmp_path / f".sales.{os.getppid()}-abc123.tmp"  # a live process's write
    live.mkdir()
    crashed = tmp_path / "model=1" / "batch=a" / f".part-0.parquet.{dead}-x1y2.tmp"
    crashed.parent.mkdir(parents=True)
    crashed.write_bytes(b"half a partition")
    moved = tmp_path / f".raw.{dead}-q9.old.tmp"  # moved aside, its replacement never came
    moved.mkdir()
    (moved / "part.parquet").write_text("kept")
    user = tmp_path / ".notes.tmp"  # not a name the pipeline makes
    user.write_text("mine")
    swept = io.sweep_leftovers(tmp_path)
    assert sorted(swept) == sorted([crashed, moved])
    assert live.exists() and user.exists() and not crashed.exists()
    assert (tmp_path / "raw" / "part.parquet").read_text() == "kept"
    with io.atomic_dir(tmp_path / "sales") as folder:
        (folder / "a").write_text("1")
    assert live.exists() and (tmp_path / "sales" / "a").exists()


@pytest.mark.parametrize(("role", "name"), [("label_col", "recon_error"), ("id_col", "z0")])
def test_roles_named_like_outputs_are_refused(tmp_path, frame, role, name):
    source = tmp_path / "t.csv"
    frame.assign(**{name: range(200)}).to_csv(source, index=False)
    with pytest.raises(AepipeError, match=rf"t.csv: \w+ column '{name}' has the name of a latent"):
        ingest(data_config(source, **{role: name}), tmp_path / "raw")
