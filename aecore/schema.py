"""Column kinds and roles, and the ingest stage: a source streamed into raw Parquet files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aecore.config import DataConfig
from aecore.errors import AepipeError
from aecore.io import PartWriter, Source, TypeWidened, atomic_dir, parquet_files, redact_url

ROW_ID = "row_id"
META_SCHEMA = b"aepipe.schema"
ROWS_PER_FILE = 1 << 20  # rows per raw and processed Parquet file
KEY_ROWS = 1 << 16  # a text column with a different value in each of its first rows is a key
MAX_WIDENINGS = 64


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

    ``column`` is the first rows of the source (up to ``KEY_ROWS``). A text column with a
    different value in each of them (a name, a key, free text) has nothing to learn
    from; it stays in the raw data but is not a feature.
    """
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


class IdCheck:
    """Checks that an id column has no empty and no repeated value, one batch at a time.

    Keeps 8 bytes per row: integer ids as they are, others as 64-bit hashes.
    """

    def __init__(self, column: str, shown: str) -> None:
        self.column, self.shown = column, shown
        self.nulls = 0
        self.keys: list[np.ndarray] = []

    def add(self, batch: pa.RecordBatch) -> None:
        ids = batch.column(self.column)
        self.nulls += ids.null_count
        values = ids.to_numpy(zero_copy_only=False)
        if not pa.types.is_integer(ids.type):
            values = pd.util.hash_array(np.asarray(values, dtype=object))
        self.keys.append(values.astype(np.int64, copy=False).view(np.uint64))

    def check(self) -> None:
        """Raise ``AepipeError`` naming the source and the column when an id repeats."""
        if self.nulls:
            message = f"{self.shown}: id column {self.column!r} has {self.nulls} empty values"
            raise AepipeError(message)
        keys = np.concatenate(self.keys) if self.keys else np.zeros(0, np.uint64)
        keys.sort()
        if len(keys) > 1 and (keys[1:] == keys[:-1]).any():
            message = f"{self.shown}: id column {self.column!r} has duplicate values"
            raise AepipeError(message)


def ingest(config: DataConfig, out: Path, rows_per_file: int = ROWS_PER_FILE) -> Path:
    """Stream the source into the folder ``out`` as Parquet files of at most ``rows_per_file``.

    The rows are kept as they are; a stable int64 ``row_id`` (source order) is added
    when no id column is given. The column roles go into every file's metadata. The
    folder is replaced only when every row was read and the id column checked.

    Returns:
        ``out``, the raw folder.
    """
    source = Source(config.source)
    for _ in range(MAX_WIDENINGS):
        try:
            return _ingest(source, config, out, rows_per_file)
        except TypeWidened:
            continue  # a column's type was widened: read again from the start
    message = f"{source.shown}: column types keep changing; give a Parquet source"
    raise AepipeError(message)


def _ingest(source: Source, config: DataConfig, out: Path, rows_per_file: int) -> Path:
    shown = redact_url(config.source)
    schema = source.schema()
    batches = source.batches()
    head: list[pa.RecordBatch] = []
    for batch in batches:
        head.append(batch)
        if sum(b.num_rows for b in head) >= KEY_ROWS:
            break
    first = pa.Table.from_batches(head, schema)
    if first.num_rows == 0:
        message = f"{shown}: the source has no rows"
        raise AepipeError(message)
    id_col, features = select_columns(first, config, shown)
    if config.id_col is None:
        schema = schema.insert(0, pa.field(ROW_ID, pa.int64()))
    roles = {
        "source": shown,
        "id_col": id_col,
        "label_col": config.label_col,
        "features": features,
        "types": {name: str(schema.field(name).type) for name in features},
        "kinds": {name: column_kind(schema.field(name).type) for name in features},
    }
    schema = schema.with_metadata({META_SCHEMA: json.dumps(roles).encode()})
    ids = IdCheck(id_col, shown) if config.id_col else None
    with atomic_dir(out) as folder:
        writer = PartWriter(folder, schema, rows_per_file)
        for batch in itertools.chain(head, batches):
            if ids is None:
                row_ids = pa.array(np.arange(writer.rows, writer.rows + batch.num_rows))
                batch = batch.add_column(0, ROW_ID, row_ids)
            else:
                ids.add(batch)
            writer.write(batch.replace_schema_metadata(schema.metadata))
        writer.close()
        if ids is not None:
            ids.check()
    return out


def read_schema(path: Path) -> dict:
    """Return the column roles recorded in a raw or processed file's (or folder's) metadata."""
    first = parquet_files(path)[0]
    metadata = pq.read_schema(first).metadata or {}
    if META_SCHEMA not in metadata:
        message = f"{path}: not written by aepipe (no {META_SCHEMA.decode()} metadata)"
        raise AepipeError(message)
    return json.loads(metadata[META_SCHEMA])
