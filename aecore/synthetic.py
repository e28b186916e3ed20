"""Synthetic tables of any size: low-rank rows plus noise, with planted anomalies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aecore.errors import AepipeError
from aecore.io import atomic_path

CHUNK_ROWS = 131072  # one row group; generated and written at a time


def make_data(
    out: Path,
    rows: int,
    cols: int,
    anomaly_rate: float = 0.01,
    seed: int = 0,
    rows_per_file: int = 1_048_576,
) -> list[Path]:
    """Write ``rows`` x ``cols`` synthetic rows to Parquet files in ``out``, streaming.

    Normal rows lie near a rank-``max(2, cols // 8)`` subspace; anomalies (share
    ``anomaly_rate``) get a large off-subspace displacement. Columns ``f0 … f{cols-1}``
    (float32), ``label`` (1 = anomaly). Memory stays one chunk of rows, whatever ``rows``.

    Returns:
        The files written, ``part-00000.parquet`` onwards.
    """
    if rows < 1 or cols < 2 or not 0 <= anomaly_rate < 1:
        message = f"{out}: need rows >= 1, cols >= 2 and 0 <= anomaly_rate < 1"
        raise AepipeError(message)
    rank = max(2, cols // 8)
    basis = np.random.default_rng(seed).normal(size=(rank, cols)) / np.sqrt(rank)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [*(pa.field(f"f{i}", pa.float32()) for i in range(cols)), pa.field("label", pa.int8())]
    )
    files, written = [], 0
    while written < rows:
        path = out / f"part-{len(files):05d}.parquet"
        in_file = min(rows_per_file, rows - written)
        with (
            atomic_path(path) as temporary,
            pq.ParquetWriter(temporary, schema, compression="zstd", use_dictionary=False) as writer,
        ):
            for start in range(0, in_file, CHUNK_ROWS):
                n = min(CHUNK_ROWS, in_file - start)
                generator = np.random.default_rng([seed, written + start])
                x = generator.normal(size=(n, rank)) @ basis + 0.1 * generator.normal(
                    size=(n, cols)
                )
                label = generator.random(n) < anomaly_rate
                x[label] += generator.normal(0, 2.0, size=(int(label.sum()), cols))
                columns = [pa.array(x[:, i].astype(np.float32)) for i in range(cols)]
                writer.write_table(
                    pa.Table.from_arrays([*columns, pa.array(label.astype(np.int8))], schema=schema)
                )
        written += in_file
        files.append(path)
    return files
