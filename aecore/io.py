"""All file access: reading sources, ingesting them, and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aecore.config import DataConfig
from aecore.errors import AepipeError

DEMO_SOURCES = ("sklearn:digits",)
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}
COMPRESSIONS = (".gz", ".bz2", ".xz")
ROW_ID = "row_id"
META_SCHEMA = b"aepipe.schema"


def redact_url(source: str) -> str:
    """Hide credentials and query strings in a URL so that it can be logged."""
    redacted = re.sub(r"(?<=://)[^/@]+@", "***@", source)
    return re.sub(r"\?.*$", "?***", redacted) if "://" in redacted else redacted


def format_of(path: str) -> str | None:
    """Return ``parquet``, ``csv`` or ``json`` from a file name, or ``None``."""
    name = path.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    return FORMATS.get(Path(name).suffix)


def list_source_files(source: str) -> tuple[object, list[str]]:
    """Expand a file, folder, glob or fsspec URL into ``(filesystem, sorted files)``."""
    import fsspec

    shown = redact_url(source)
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as error:
        message = f"{shown}: cannot open this source: {error}"
        raise AepipeError(message) from error
    try:
        if any(char in path for char in "*?["):
            files = fs.glob(path)
        elif fs.isdir(path):
            files = fs.find(path)
        elif fs.exists(path):
            return fs, [path]
        else:
            message = f"{shown}: no such file or directory"
            raise AepipeError(message)
    except OSError as error:
        message = f"{shown}: cannot list the source: {error}"
        raise AepipeError(message) from error
    files = sorted(f for f in files if format_of(f) and not Path(f).name.startswith((".", "_")))
    if not files:
        message = f"{shown}: no CSV, Parquet or JSONL files found"
        raise AepipeError(message)
    return fs, files


def _read_file(fs: object, path: str, shown: str) -> pa.Table:
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    kind = format_of(path)
    if kind is None:
        message = f"{shown}: unknown format; use .csv, .parquet or .jsonl"
        raise AepipeError(message)
    try:
        with fs.open(path, "rb", compression="infer") as handle:  # type: ignore[attr-defined]
            if kind == "parquet":
                return pq.read_table(handle)
            if kind == "csv":
                delimiter = "\t" if ".tsv" in path.lower() else ","
                return pcsv.read_csv(
                    handle,
                    parse_options=pcsv.ParseOptions(delimiter=delimiter),
                    convert_options=pcsv.ConvertOptions(strings_can_be_null=True),  # "" is missing
                )
            return pjson.read_json(handle)
    except (pa.ArrowException, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"{shown}: cannot read as {kind.upper()}: {reason}"
        raise AepipeError(message) from error


def _demo_table(name: str) -> pa.Table:
    from sklearn.datasets import load_digits

    if name != "sklearn:digits":
        message = f"{name}: unknown demo source; known: {', '.join(DEMO_SOURCES)}"
        raise AepipeError(message)
    return pa.Table.from_pandas(load_digits(as_frame=True).frame, preserve_index=False)


def read_source(source: str) -> pa.Table:
    """Read every file of a source into one Arrow table (columns unified by name)."""
    if source.startswith("sklearn:"):
        return _demo_table(source)
    fs, files = list_source_files(source)
    tables = []
    for path in files:
        shown = redact_url(fs.unstrip_protocol(path)) if "://" in source else path  # type: ignore[attr-defined]
        tables.append(_read_file(fs, path, shown))
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as error:
        message = f"{redact_url(source)}: files do not share a schema: {error}"
        raise AepipeError(message) from error


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

    A string column with a different value in every row (a name, a key, free text) has
    nothing to learn from; it stays in the raw data but is not a feature.
    """
    kind = column_kind(column.type)
    if kind != "categorical":
        return kind is not None
    return len(column) < 2 or len(column.unique()) < len(column)


def select_columns(table: pa.Table, config: DataConfig, shown: str) -> tuple[str, list[str]]:
    """Check the id and label columns and pick the features; return ``(id column, features)``.

    Raises:
        AepipeError: naming the source and the column, when a column is missing or unusable.
    """
    names = table.column_names
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
            if column_kind(table.schema.field(column).type) is None:
                kind = table.schema.field(column).type
                message = (
                    f"{shown}: feature column {column!r} is {kind}, not numeric, boolean, "
                    "datetime or string"
                )
                raise AepipeError(message)
    else:
        features = [n for n in names if n not in roles and is_feature(table.column(n))]
    if not features:
        message = f"{shown}: no usable feature columns (columns: {listed})"
        raise AepipeError(message)
    if config.id_col is not None:
        ids = table.column(config.id_col)
        if ids.null_count:
            message = f"{shown}: id column {config.id_col!r} has {ids.null_count} empty values"
            raise AepipeError(message)
        if len(ids.unique()) != len(ids):
            message = f"{shown}: id column {config.id_col!r} has duplicate values"
            raise AepipeError(message)
    return id_col, features


def ingest(config: DataConfig, out: Path) -> Path:
    """Read the source, check its columns and write it to ``out`` as Parquet.

    The rows are kept as they are; a stable int64 ``row_id`` (source order) is added
    when no id column is given. The column roles go into the file's metadata.

    Returns:
        ``out``, the raw Parquet file.
    """
    shown = redact_url(config.source)
    table = read_source(config.source)
    if table.num_rows == 0:
        message = f"{shown}: the source has no rows"
        raise AepipeError(message)
    id_col, features = select_columns(table, config, shown)
    if config.id_col is None:
        table = table.add_column(0, ROW_ID, pa.array(np.arange(table.num_rows), pa.int64()))
    schema = {
        "source": shown,
        "id_col": id_col,
        "label_col": config.label_col,
        "features": features,
        "types": {name: str(table.schema.field(name).type) for name in features},
        "kinds": {name: column_kind(table.schema.field(name).type) for name in features},
    }
    metadata = {**(table.schema.metadata or {}), META_SCHEMA: json.dumps(schema).encode()}
    write_parquet(table.replace_schema_metadata(metadata), out)
    return out


def read_schema(path: Path) -> dict:
    """Return the column roles that ``ingest`` recorded in a raw file's metadata."""
    metadata = pq.read_schema(path).metadata or {}
    if META_SCHEMA not in metadata:
        message = f"{path}: not written by aepipe ingest (no {META_SCHEMA.decode()} metadata)"
        raise AepipeError(message)
    return json.loads(metadata[META_SCHEMA])


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` that replaces it only when the block succeeds.

    The temporary name starts with a dot, which Parquet readers skip.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_parquet(
    table: pa.Table,
    path: Path,
    row_group_size: int | None = None,
    use_dictionary: bool | list[str] = True,
) -> Path:
    """Write ``table`` to ``path`` atomically, zstd-compressed."""
    with atomic_path(path) as temporary:
        pq.write_table(
            table,
            temporary,
            compression="zstd",
            row_group_size=row_group_size,
            use_dictionary=use_dictionary,
        )
    return path


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet paths of a latent table worth a dictionary: text and lists of text.

    Latents, errors, scores and row ids seldom repeat; trying a dictionary on them first
    costs a latent table four fifths of its write time and a third of its bytes.
    """
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    paths = []
    for field in schema:
        listed = any(is_list(field.type) for is_list in lists)
        kind = field.type.value_type if listed else field.type
        if pa.types.is_dictionary(kind) or any(is_text(kind) for is_text in text):
            paths.append(f"{field.name}.list.element" if listed else field.name)
    return paths


def write_json(data: Mapping, path: Path) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Return the hex digest of a file's bytes (md5 is what DVC records for a file)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
