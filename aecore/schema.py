"""Column kinds and roles, and the ingest stage: a source streamed into raw Parquet files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aecore.config import DataConfig
from aecore.errors import AepipeError
from aecore.io import (
    Source,
    TypeWidened,
    atomic_dir,
    conform,
    dictionary_columns,
    parquet_files,
)

ROW_ID = "row_id"
META_SCHEMA = b"aepipe.schema"
ROWS_PER_FILE = 1 << 20  # rows per raw and processed Parquet file
KEY_ROWS = 1 << 16  # a text column with a different value in each of its first rows is a key
MAX_WIDENINGS = 64


OUTPUTS = ("recon_error", "anomaly_score", "is_anomaly", "top_features", "batch")


def is_output_name(name: str) -> bool:
    """Whether ``name`` is a column the latent table adds (``z0``…, ``recon_error``…)."""
    return name in OUTPUTS or re.fullmatch(r"z\d+", name) is not None


def is_numeric(column_type: pa.DataType) -> bool:
    """Return whether an Arrow type is a number (integers and floats)."""
    return pa.types.is_integer(column_type) or pa.types.is_floating(column_type)


def column_kind(column_type: pa.DataType) -> str | None:
    """The kind of feature a column makes, from its Arrow type, or ``None`` when unusable.

    ``numeric`` (integers, floats), ``boolean``, ``datetime`` (timestamps, dates) or
    ``categorical`` (strings, dictionaries).
    """
    if pa.types.is_boolean(column_type):
        return "boolean"
    if is_numeric(column_type):
        return "numeric"
    if pa.types.is_timestamp(column_type) or pa.types.is_date(column_type):
        return "datetime"
    if pa.types.is_dictionary(column_type):
        return column_kind(column_type.value_type) and "categorical"
    if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        return "categorical"
    return None


def is_feature(column: pa.ChunkedArray) -> bool:
    """Whether a column is a feature by default: a usable type, and not a key.

    ``column`` is the first rows of the source (up to ``KEY_ROWS``). A column empty in
    all of them, or a text column with a different value in each (a name, a key, free
    text), has nothing to learn
    from; it stays in the raw data but is not a feature.
    """
    if len(column) and column.null_count == len(column):
        return False  # empty in every row read: nothing to learn, and it would be imputed
    kind = column_kind(column.type)
    if kind != "categorical":
        return kind is not None
    return len(column) < 2 or len(column.unique()) < len(column)


def select_columns(head: pa.Table, config: DataConfig, shown: str) -> tuple[str, list[str]]:
    """Check the id and label columns and pick the features; return ``(id column, features)``.

    ``head`` holds the source's first rows and its whole schema.

    Raises:
        AepipeError: naming the source and the column, when a column is missing or unusable.
    """
    names = head.column_names
    listed = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    for role, column in (("id", config.id_col), ("label", config.label_col)):
        if column is not None and column not in names:
            message = f"{shown}: {role} column {column!r} not found (columns: {listed})"
            raise AepipeError(message)
    id_col = config.id_col or ROW_ID
    if config.id_col is None and ROW_ID in names:
        message = f"{shown}: column {ROW_ID!r} exists; pass it as the id column (--id-col)"
        raise AepipeError(message)
    for role, column in (("id", config.id_col), ("label", config.label_col)):
        if column is not None and is_output_name(column):
            message = (
                f"{shown}: {role} column {column!r} has the name of a latent-table column "
                "(z0…, recon_error, anomaly_score, is_anomaly, top_features, batch); rename it"
            )
            raise AepipeError(message)
    roles = {config.id_col, config.label_col}
    if config.features is not None:
        features = list(config.features)
        for column in features:
            if column not in names:
                message = f"{shown}: feature column {column!r} not found (columns: {listed})"
                raise AepipeError(message)
            if column_kind(head.schema.field(column).type) is None:
                kind = head.schema.field(column).type
                message = (
                    f"{shown}: feature column {column!r} is {kind}, not numeric, boolean, "
                    "datetime or string"
                )
                raise AepipeError(message)
    else:
        features = [n for n in names if n not in roles and is_feature(head.column(n))]
    if not features:
        message = f"{shown}: no usable feature columns (columns: {listed})"
        raise AepipeError(message)
    return id_col, features


def unused_columns(head: pa.Table, roles: set[str | None], features: list[str]) -> dict[str, str]:
    """The source columns that are neither id, label nor feature, each with the reason."""
    unused = {}
    for name in head.column_names:
        if name in roles or name in features:
            continue
        kind = column_kind(head.schema.field(name).type)
        if head.num_rows and head.column(name).null_count == head.num_rows:
            unused[name] = f"empty in each of its first {head.num_rows:,} rows"
        elif kind is None:
            unused[name] = (
                f"its type {head.schema.field(name).type} is not numeric, boolean, datetime or text"
            )
        elif kind == "categorical" and not is_feature(head.column(name)):
            unused[name] = (
                f"text with a different value in each of its first {head.num_rows:,} rows "
                "(a key or free text): nothing to learn from; name it in data.features to use it"
            )
        else:
            unused[name] = "not in data.features"
    return unused


def unused_warnings(roles: dict) -> list[str]:
    """One warning per reason, naming the source columns that reason leaves out."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in roles.get("unused", {}).items():
        by_reason.setdefault(reason, []).append(repr(name))
    return [
        f"{roles['source']}: column{'s' if len(names) > 1 else ''} {', '.join(names)} "
        f"not used: {reason}"
        for reason, names in by_reason.items()
    ]


def check_source(config: DataConfig) -> dict:
    """Check the source and its columns from its first rows, before anything is written.

    Returns:
        The column roles: id column, features with their kinds, and ``unused`` columns
        with the reason each is left out.

    Raises:
        AepipeError: naming the source and the column, as ingest would.
    """
    return plan_ingest(Source(config.source), config)[1]


Mapper = Callable[[Callable[..., Any], Sequence[tuple]], list[Any]]


def serial_map(function: Callable[..., Any], items: Sequence[tuple]) -> list[Any]:
    """Call ``function(*item)`` for each item, one after another: the default mapper.

    The stages take a mapper for their per-file work; the flow passes one that runs each
    call as a task on its task runner (Dask, with ``--task-runner dask``).
    """
    return [function(*item) for item in items]


def check_ids(raw: Path, column: str, shown: str) -> None:
    """Raise ``AepipeError`` when the id column has an empty or a repeated value.

    Reads that one column; keeps 8 bytes per row (integer ids as they are, others hashed).
    """
    nulls, keys = 0, []
    for path in parquet_files(raw):
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(columns=[column]):
            ids = batch.column(0)
            nulls += ids.null_count
            values = ids.to_numpy(zero_copy_only=False)
            if not pa.types.is_integer(ids.type):
                values = pd.util.hash_array(np.asarray(values, dtype=object))
            keys.append(np.asarray(values).astype(np.int64, copy=False).view(np.uint64))
    if nulls:
        message = f"{shown}: id column {column!r} has {nulls} empty values"
        raise AepipeError(message)
    merged = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
    if len(merged) > 1 and (merged[1:] == merged[:-1]).any():
        message = f"{shown}: id column {column!r} has duplicate values"
        raise AepipeError(message)


def ingest(
    config: DataConfig,
    out: Path,
    rows_per_file: int = ROWS_PER_FILE,
    map_parts: Mapper | None = None,
) -> Path:
    """Stream the source into the folder ``out``: Parquet files of at most ``rows_per_file``.

    Each source file becomes ``part-<file>-<chunk>.parquet``; the rows are kept as they
    are, and a stable int64 ``row_id`` (source order) is added when no id column is
    given. The column roles go into every file's metadata. The folder is replaced only
    when every row was read and the id column checked.

    Args:
        config: the source and the column roles.
        out: the raw folder.
        rows_per_file: the most rows in one raw file.
        map_parts: runs the per-file work (``serial_map`` when ``None``; the flow's Dask
            mapper reads the files in parallel, after counting their rows for the ids).

    Returns:
        ``out``, the raw folder.
    """
    source = Source(config.source)
    for _ in range(MAX_WIDENINGS):
        schema, _ = plan_ingest(source, config)
        try:
            with atomic_dir(out) as folder:
                widened = _ingest_files(source, config, folder, schema, rows_per_file, map_parts)
                if widened:
                    raise _Restart(widened)  # leaves the old folder as it was
                if config.id_col:
                    check_ids(folder, config.id_col, source.shown)
        except _Restart as restart:
            source.widen(restart.widened)  # a column's type was widened: read it all again
            continue
        return out
    message = f"{source.shown}: column types keep changing; give a Parquet source"
    raise AepipeError(message)


class _Restart(Exception):
    def __init__(self, widened: dict[str, pa.DataType]) -> None:
        super().__init__(sorted(widened))
        self.widened = widened


def _ingest_files(
    source: Source,
    config: DataConfig,
    folder: Path,
    schema: pa.Schema,
    rows_per_file: int,
    map_parts: Mapper | None,
) -> dict[str, pa.DataType]:
    """Write every source file into ``folder``; return the columns to widen, if any."""
    widened: dict[str, pa.DataType] = {}
    if map_parts is None:
        offset = 0
        for number, path in enumerate(source.files):
            result = ingest_file(source, number, path, offset, folder, schema, rows_per_file)
            widened |= result.get("widened", {})
            if widened:
                return widened
            offset += result["rows"]
        return widened
    offsets = [0] * len(source.files)
    if config.id_col is None:
        counts = map_parts(count_file_rows, [(source, p) for p in source.files])
        offsets = [int(x) for x in np.cumsum([0, *counts[:-1]])]
    items = [
        (source, number, path, offsets[number], folder, schema, rows_per_file)
        for number, path in enumerate(source.files)
    ]
    for result in map_parts(ingest_file, items):
        widened |= result.get("widened", {})
    return widened


def plan_ingest(source: Source, config: DataConfig) -> tuple[pa.Schema, dict]:
    """The raw files' schema, with the column roles in its metadata, from the first rows."""
    shown = source.shown
    schema = source.schema()
    head: list[pa.RecordBatch] = []
    try:
        for batch in source.batches():
            head.append(batch)
            if sum(b.num_rows for b in head) >= KEY_ROWS:
                break
    except TypeWidened:
        return plan_ingest(source, config)
    first = pa.Table.from_batches(head, schema)
    if first.num_rows == 0:
        message = f"{shown}: the source has no rows"
        raise AepipeError(message)
    id_col, features = select_columns(first, config, shown)
    if config.id_col:  # the first rows now; every row once ingested (check_ids)
        ids = first.column(config.id_col)
        if ids.null_count:
            message = f"{shown}: id column {id_col!r} has {ids.null_count} empty values"
            raise AepipeError(message)
        if pc.count_distinct(ids).as_py() < len(ids):
            message = f"{shown}: id column {id_col!r} has duplicate values"
            raise AepipeError(message)
    for name in features:  # later rows are checked as they are normalized
        column = first.column(name)
        infinite = pc.sum(pc.is_inf(column)).as_py() if pa.types.is_floating(column.type) else 0
        if infinite:
            message = (
                f"{shown}: column {name!r} holds {infinite} infinite values (inf or -inf) in "
                f"its first {first.num_rows:,} rows; make them empty (missing) or finite"
            )
            raise AepipeError(message)
    unused = unused_columns(first, {config.id_col, config.label_col}, features)
    if config.id_col is None:
        schema = schema.insert(0, pa.field(ROW_ID, pa.int64()))
    roles = {
        "source": shown,
        "id_col": id_col,
        "label_col": config.label_col,
        "features": features,
        "types": {name: str(schema.field(name).type) for name in features},
        "kinds": {name: column_kind(schema.field(name).type) for name in features},
        "unused": unused,
    }
    return schema.with_metadata({META_SCHEMA: json.dumps(roles).encode()}), roles


def count_file_rows(source: Source, path: str) -> int:
    """The rows of one source file (Parquet: from its footer)."""
    for _ in range(MAX_WIDENINGS):
        try:
            return source.file_rows(path)
        except TypeWidened:
            continue
    message = f"{source.shown_file(path)}: column types keep changing; give a Parquet source"
    raise AepipeError(message)


def ingest_file(
    source: Source,
    number: int,
    path: str,
    offset: int,
    folder: Path,
    schema: pa.Schema,
    rows_per_file: int,
) -> dict[str, Any]:
    """Write one source file as ``part-<number>-<chunk>.parquet`` files of ``schema``.

    ``row_id`` (when ``schema`` has it first) counts on from ``offset``.

    Returns:
        ``{"rows": n}``, or ``{"widened": {column: type}}`` when a column's type must be
        widened and the ingest started again.
    """
    add_ids = schema.names[0] == ROW_ID and ROW_ID not in source.schema().names
    body = pa.schema([f for f in schema if not (add_ids and f.name == ROW_ID)])
    rows, chunk, writer, in_file = 0, 0, None, 0
    try:
        for batch in source.file_batches(path):
            batch = conform(batch, body)
            if add_ids:
                ids = pa.array(np.arange(offset + rows, offset + rows + batch.num_rows))
                batch = batch.add_column(0, ROW_ID, ids)
            start = 0
            while start < batch.num_rows:
                if writer is None or in_file >= rows_per_file:
                    if writer is not None:
                        writer.close()
                        chunk += 1
                    target = folder / f"part-{number:05d}-{chunk:04d}.parquet"
                    writer = pq.ParquetWriter(
                        target,
                        schema,
                        compression="zstd",
                        use_dictionary=dictionary_columns(schema),  # floats: 5x faster without
                    )
                    in_file = 0
                take = min(batch.num_rows - start, rows_per_file - in_file)
                writer.write_batch(
                    batch.slice(start, take).replace_schema_metadata(schema.metadata)
                )
                start, in_file = start + take, in_file + take
            rows += batch.num_rows
    except TypeWidened:
        return {"widened": dict(source.widened)}
    finally:
        if writer is not None:
            writer.close()
    return {"rows": rows}


def read_schema(path: Path) -> dict:
    """Return the column roles recorded in a raw or processed file's (or folder's) metadata."""
    first = parquet_files(path)[0]
    metadata = pq.read_schema(first).metadata or {}
    if META_SCHEMA not in metadata:
        message = f"{path}: not written by aepipe (no {META_SCHEMA.decode()} metadata)"
        raise AepipeError(message)
    return json.loads(metadata[META_SCHEMA])
