"""The latent table: the contract with downstream consumers (see README)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from aecore.config import ExportConfig
from aecore.errors import AepipeError
from aecore.io import (
    BATCH_ROWS,
    atomic_path,
    dictionary_columns,
    file_digest,
    parquet_files,
    temporary_prefix,
)
from aecore.layout import CURRENT, UNREGISTERED, current_version
from aecore.models import load_model, model_outputs, row_errors
from aecore.normalize import iter_features
from aecore.schema import Mapper, read_schema
from aecore.scorer import Reference

SCHEMA_VERSION = "1"
META_PREFIX = "aepipe."


TOP_FEATURES = 3


def latent_columns(
    model: torch.nn.Module, x: np.ndarray, reference: Reference, quantize: bool = False
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The scored columns of the rows ``x`` (model inputs), and their latents ``(n, k)``.

    ``z0 … z{k-1}``, ``recon_error``, ``anomaly_score``, ``is_anomaly``, ``top_features``.

    Args:
        model: the trained model.
        x: the normalized rows ``(n, d)``.
        reference: the scoring reference of the evaluate stage: feature names, the
            anomaly score and its threshold.
        quantize: latents as float16.
    """
    outputs = model_outputs(model, x, reference.scorer.every_prefix)
    latents, feature_errors = outputs.embedding, outputs.errors[0]
    scaled = reference.scorer.scaled_errors(feature_errors)
    scaled[reference.at_constants(x)] = -1.0  # unchanged from training: never the reason
    scores = reference.scorer.score_rows(outputs, x)
    z_type = np.float16 if quantize else np.float32
    columns = {f"z{i}": pa.array(latents[:, i].astype(z_type)) for i in range(latents.shape[1])}
    columns["recon_error"] = pa.array(row_errors(feature_errors))
    columns["anomaly_score"] = pa.array(scores)
    # a row whose score cannot be computed (an infinite input) is flagged, never passed
    columns["is_anomaly"] = pa.array(~(scores <= reference.threshold))
    columns["top_features"] = top_features(scaled, reference.features)
    return columns, latents


def top_features(
    feature_errors: np.ndarray, features: Sequence[str], count: int = TOP_FEATURES
) -> pa.Array:
    """Per row, the names of the ``count`` columns with the largest error, largest first.

    Why a row is anomalous: the columns it reconstructs worst, each error measured
    against that column's typical training error.
    """
    n, d = feature_errors.shape
    count = min(count, d)
    remaining, rows = feature_errors.copy(), np.arange(n)
    top = np.empty((n, count), dtype=np.int32)
    for rank in range(count):  # a few argmax passes beat a full argpartition on wide rows
        top[:, rank] = remaining.argmax(axis=1)
        remaining[rows, top[:, rank]] = -np.inf
    names = pc.take(pa.array(list(features), pa.string()), pa.array(top.ravel()))
    offsets = pa.array(np.arange(0, n * count + 1, count, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, names)


def stamp(metadata: Mapping[str, object]) -> dict[bytes, bytes]:
    """The Parquet key-value metadata of a partition: ``aepipe.*`` keys, version and time."""
    stamped = {
        f"{META_PREFIX}schema_version": SCHEMA_VERSION,
        f"{META_PREFIX}created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **{f"{META_PREFIX}{key}": str(value) for key, value in metadata.items()},
    }
    return {k.encode(): v.encode() for k, v in stamped.items()}


class LatentWriter:
    """Writes scored record batches into one partition file, in whole row groups."""

    def __init__(self, path: Path, metadata: Mapping[str, object], row_group_size: int) -> None:
        self.path, self.stamped, self.row_group_size = path, stamp(metadata), row_group_size
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        """Add rows; a row group is written whenever enough rows are waiting."""
        if self._writer is None:
            schema = table.schema.with_metadata(self.stamped)
            self._writer = pq.ParquetWriter(
                self.path,
                schema,
                compression="zstd",
                use_dictionary=dictionary_columns(schema),
            )
        self._pending.append(table)
        self.rows += table.num_rows
        if sum(t.num_rows for t in self._pending) >= self.row_group_size:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self._pending)
        size = self.row_group_size
        whole = table.num_rows if final else table.num_rows - table.num_rows % size
        for start in range(0, whole, size):
            self._writer.write_table(table.slice(start, min(size, whole - start)), size)  # type: ignore[union-attr]
        self._pending = [table.slice(whole)] if whole < table.num_rows else []

    def close(self) -> None:
        if self._writer is not None:
            if self._pending:
                self._flush(final=True)
            self._writer.close()


@contextmanager
def latent_partition(
    path: Path, metadata: Mapping[str, object], row_group_size: int
) -> Iterator[LatentWriter]:
    """A writer of partition ``path``: it replaces the file only when the block succeeds."""
    with atomic_path(path) as temporary:
        writer = LatentWriter(temporary, metadata, row_group_size)
        try:
            yield writer
        finally:
            writer.close()


def export(
    processed: Path,
    model_path: Path,
    normalizer_path: Path,
    reference_path: Path,
    out: Path,
    config: ExportConfig,
    metadata: Mapping[str, str] | None = None,
    data_version: str = "",
    map_parts: Mapper | None = None,
) -> Path:
    """The export stage: encode every row and write the latent table partition ``out``.

    Streams record batches, so memory does not grow with the table.

    Args:
        processed: the normalized features with id, label and split columns.
        model_path: the trained weights.
        normalizer_path: its SHA-256 goes into the metadata.
        reference_path: the evaluation's reference.json: the anomaly score and threshold.
        out: the partition file, e.g. ``data/latents/digits/model=3/batch=train/part-0.parquet``.
        config: row group size and float16 quantization.
        metadata: more ``aepipe.*`` metadata, e.g. ``model_uri`` and ``mlflow_run_id``.
        data_version: the version of the input data (DVC md5 of the raw data).
        map_parts: when given (the flow's Dask mapper), the processed files are scored in
            parallel into temporary files, then copied into ``out`` in table order: the
            same partition as without it.
    """
    schema = read_schema(processed)
    model = load_model(model_path)
    reference = Reference.read(reference_path)
    info = {
        "latent_dim": str(model.k),
        "threshold": repr(reference.threshold),
        "normalizer_sha256": file_digest(normalizer_path, "sha256"),
        "data_version": data_version,
        "id_col": schema["id_col"],
        "label_col": schema["label_col"] or "",
        "model_uri": "",
        "model_version": UNREGISTERED,
        "mlflow_run_id": "",
        "batch_id": "train",
        **(metadata or {}),
    }
    files = parquet_files(processed)
    with latent_partition(out, info, config.row_group_size) as writer:
        if map_parts is None:
            for path in files:
                for table in scored_tables(path, model, reference, config.quantize):
                    writer.write(table)
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            dir=out.parent, prefix=temporary_prefix("export"), suffix=".tmp"
        ) as folder:
            items = [
                (path, Path(folder) / f"{n:05d}.arrow", model_path, reference, config.quantize)
                for n, path in enumerate(files)
            ]
            for part in map_parts(score_file, items):
                if not part.exists():
                    continue  # a file without rows
                with pa.memory_map(str(part)) as source:
                    reader = pa.ipc.open_file(source)
                    for i in range(reader.num_record_batches):
                        writer.write(pa.Table.from_batches([reader.get_batch(i)]))
    return out


def scored_tables(
    processed_file: Path,
    model: torch.nn.Module,
    reference: Reference,
    quantize: bool,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.Table]:
    """The latent-table rows of one processed file, a record batch at a time."""
    schema = read_schema(processed_file)
    passthrough = [c for c in (schema["id_col"], schema["label_col"]) if c]
    for batch, x in iter_features(processed_file, passthrough, batch_rows):
        scored, _ = latent_columns(model, x, reference, quantize)
        columns = {name: batch.column(i) for i, name in enumerate(passthrough)}
        yield pa.table({**columns, **scored})


def score_file(
    processed_file: Path, out: Path, model_path: Path, reference: Reference, quantize: bool
) -> Path:
    """Score one processed file into an Arrow IPC file ``out`` (a worker's share of export)."""
    model = load_model(model_path)
    writer = None
    for table in scored_tables(processed_file, model, reference, quantize):
        if writer is None:
            writer = pa.ipc.new_file(str(out), table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    return out


def read_metadata(path: Path) -> dict[str, str]:
    """Return the ``aepipe.*`` metadata of a latent table file, without the prefix."""
    raw = pq.read_schema(path).metadata or {}
    return {
        k.decode().removeprefix(META_PREFIX): v.decode()
        for k, v in raw.items()
        if k.decode().startswith(META_PREFIX)
    }


def read_latents(
    path: str | Path, batches: Sequence[str] | None = None, version: str | None = None
) -> pd.DataFrame:
    """Read one latent space of a table: the current one, or model ``version``.

    Args:
        path: the table, ``data/latents/<dataset>``.
        batches: only these partitions; default all of the model's.
        version: the registered model version; default the one ``_current`` names, the
            champion's.

    Returns:
        The rows, with ``batch`` as a string column (date-like ids included).

    Raises:
        AepipeError: when no version is given and the table has no current model yet.
    """
    import pyarrow.dataset as ds

    path = Path(path)
    version = version or current_version(path)
    if version is None:
        message = f"{path}: no {CURRENT} pointer yet (no champion model has written this table)"
        raise AepipeError(message)
    partitioning = ds.partitioning(pa.schema([("batch", pa.string())]), flavor="hive")
    folder = Path(path) / f"model={version}"
    dataset = ds.dataset(folder, format="parquet", partitioning=partitioning)
    expression = ds.field("batch").isin(list(batches)) if batches is not None else None
    return dataset.to_table(filter=expression).to_pandas()
