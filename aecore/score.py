"""Scoring new batches with a trained model: schema check, streaming encode, drift."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from torch import nn

from aecore.errors import AepipeError
from aecore.export import latent_columns, latent_partition
from aecore.io import (
    file_digest,
    first_line,
    format_of,
    list_source_files,
    redact_url,
    temporary_prefix,
)
from aecore.normalize import Normalizer
from aecore.schema import ROW_ID, Mapper, column_kind, is_numeric
from aecore.scorer import Reference

# log-spaced bins for the running error histogram: p99 and drift without keeping rows
HISTOGRAM_EDGES = np.concatenate([[0.0], np.logspace(-12, 12, 2401), [np.inf]])


@dataclass
class ScoreSummary:
    """What a scored batch looked like: counts, error distribution, latent means."""

    rows: int = 0
    anomalies: int = 0
    error_sum: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(HISTOGRAM_EDGES) - 1))
    infinite: dict[str, int] = field(default_factory=dict)  # unscorable rows per column
    unscored: int = 0
    latent_sum: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def add_table(self, table: pa.Table, latents: np.ndarray) -> None:
        """Fold one scored record batch into the running totals."""
        errors = table.column("recon_error").to_numpy()
        self.add(errors, latents, table.column("is_anomaly").to_numpy(zero_copy_only=False))

    def merge(self, other: ScoreSummary) -> None:
        """Add another part's totals (a file scored elsewhere)."""
        self.rows += other.rows
        self.unscored += other.unscored
        self.anomalies += other.anomalies
        self.error_sum += other.error_sum
        self.histogram = self.histogram + other.histogram
        for name, count in other.infinite.items():
            self.infinite[name] = self.infinite.get(name, 0) + count
        if other.latent_sum is not None:
            self.latent_sum = (
                other.latent_sum if self.latent_sum is None else self.latent_sum + other.latent_sum
            )
        self.warnings += other.warnings

    def add(self, errors: np.ndarray, latents: np.ndarray, flags: np.ndarray) -> None:
        """Fold one record batch into the running totals."""
        self.rows += len(errors)
        self.anomalies += int(flags.sum())
        finite = np.isfinite(errors)
        if not finite.all():  # rows that could not be scored: flagged, out of the statistics
            self.unscored += int((~finite).sum())
            errors, latents = errors[finite], latents[finite]
        self.error_sum += float(errors.sum(dtype=np.float64))
        self.histogram += np.histogram(errors, HISTOGRAM_EDGES)[0]
        sums = latents.sum(axis=0, dtype=np.float64)
        self.latent_sum = sums if self.latent_sum is None else self.latent_sum + sums

    def quantile(self, q: float) -> float:
        """Approximate error quantile from the histogram (bins 1% wide in log space)."""
        cumulative = np.cumsum(self.histogram)
        index = int(np.searchsorted(cumulative, q * cumulative[-1]))
        return float(HISTOGRAM_EDGES[min(index + 1, len(HISTOGRAM_EDGES) - 2)])

    def metrics(self, reference: Reference) -> dict[str, float]:
        """Rows, anomaly rate, mean and p99 error, and drift against the training baseline.

        ``drift_ks`` is the Kolmogorov-Smirnov distance between this batch's errors and
        the held-out training errors; ``latent_mean_shift`` the largest shift of a latent
        mean, in training standard deviations.
        """
        if not self.rows:
            return {"rows": 0}
        scored = max(self.rows - self.unscored, 1)  # the error statistics: scored rows only
        reference_q = np.asarray(reference.error_quantiles)
        ours = np.cumsum(self.histogram) / scored
        theirs = np.interp(HISTOGRAM_EDGES[1:], reference_q, np.linspace(0, 1, len(reference_q)))
        std = np.maximum(reference.scorer.latent_std_, 1e-12)
        mean = (self.latent_sum if self.latent_sum is not None else 0.0) / scored
        shift = np.abs(mean - reference.scorer.latent_mean_) / std
        return {
            "rows": self.rows,
            "unscored_rows": self.unscored,
            "anomaly_rate": self.anomalies / self.rows,
            "recon_error_mean": self.error_sum / scored,
            "recon_error_p99": self.quantile(0.99),
            "drift_ks": float(np.max(np.abs(ours - theirs))),
            "latent_mean_shift": float(np.max(shift)),
        }


def check_schema(schema: pa.Schema, reference: Reference, shown: str) -> list[str]:
    """Compare a batch's columns with the training schema; return warnings for extras.

    Raises:
        AepipeError: naming the file and the column, when a column is missing or no
            longer numeric, or the id column is missing.
    """
    names = set(schema.names)
    id_col = reference.id_col
    for column in reference.features:
        if column not in names:
            message = f"{shown}: column {column!r} is missing; the model was trained with it"
            raise AepipeError(message)
        found, trained = schema.field(column).type, reference.kinds[column]
        if not readable_as(found, trained):
            was = reference.types.get(column, trained)
            message = f"{shown}: column {column!r} is {found}, the model was trained on {was}"
            raise AepipeError(message)
    if id_col != ROW_ID and id_col not in names:
        message = f"{shown}: id column {id_col!r} is missing"
        raise AepipeError(message)
    known = {*reference.features, id_col, reference.label_col}
    extra = sorted(names - known)
    if extra:
        listed = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
        columns = "column" if len(extra) == 1 else f"{len(extra)} columns"
        return [f"{shown}: {columns} not used, the model was not trained on them: {listed}"]
    return []


def readable_as(found: pa.DataType, kind: str) -> bool:
    """Whether a column of Arrow type ``found`` can feed a feature of ``kind``.

    Numbers must stay numbers; a datetime may come as a timestamp, a date or a string
    (parsed as ISO 8601); booleans and categories may come as any type, read as text.
    """
    if pa.types.is_null(found):
        return True  # an all-missing column: imputed
    if kind == "numeric":
        return is_numeric(found)
    if kind == "datetime":
        return column_kind(found) in ("datetime", "categorical")
    return column_kind(found) is not None


def open_batch(source: str) -> tuple[ds.Dataset, str]:
    """Open a file, folder, glob or URL as one Arrow dataset (read lazily)."""
    fs, files = list_source_files(source)
    formats = {format_of(f) for f in files}
    if len(formats) != 1:
        message = f"{redact_url(source)}: mixes formats {sorted(map(str, formats))}; use one"
        raise AepipeError(message)
    kind = formats.pop()
    try:
        dataset = ds.dataset(files, filesystem=fs, format="json" if kind == "json" else kind)
    except (pa.ArrowException, OSError) as error:
        message = f"{redact_url(source)}: cannot read as {kind.upper()}: {first_line(error)}"
        raise AepipeError(message) from None
    return dataset, redact_url(source)


def read_batches(
    dataset: ds.Dataset, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Yield record batches file by file, each read only when asked for.

    A dataset scanner decodes ahead on background threads: when the model is slower than
    the reader, the queue, and memory, grow with the batch. Pulling keeps one row group.
    """
    for fragment in dataset.get_fragments():
        try:
            if isinstance(fragment, ds.ParquetFileFragment):
                with fragment.filesystem.open_input_file(fragment.path) as handle:
                    file = pq.ParquetFile(handle, pre_buffer=False)
                    yield from file.iter_batches(batch_size=batch_rows, columns=columns)
            else:
                yield from fragment.to_batches(columns=columns, batch_size=batch_rows)
        except (pa.ArrowException, OSError) as error:  # a file that is not what it says
            message = f"{redact_url(fragment.path)}: cannot read: {first_line(error)}"
            raise AepipeError(message) from None


def score_batch(
    source: str,
    model: nn.Module,
    normalizer: Normalizer,
    reference: Reference,
    out: Path,
    metadata: Mapping[str, str],
    *,
    batch_rows: int,
    row_group_size: int,
    map_parts: Mapper | None = None,
) -> ScoreSummary:
    """Encode and score every row of ``source`` into the partition file ``out``.

    Reads record batches, so memory does not grow with the batch's size; writes to a
    temporary file renamed into place, so a failure leaves no partial partition. With
    ``map_parts`` (the flow's Dask mapper), the files of a many-file batch are scored in
    parallel and copied into ``out`` in order: the same partition as without it.

    Returns:
        The batch's summary (metrics via ``summary.metrics(reference)``).
    """
    dataset, shown = open_batch(source)
    summary = ScoreSummary(warnings=check_schema(dataset.schema, reference, shown))
    info = {
        "data_version": source_version(source),
        "id_col": reference.id_col,
        "label_col": reference.label_col or "",
        **metadata,
        "threshold": repr(reference.threshold),
        "latent_dim": len(reference.scorer.latent_mean_),
    }
    model_parts = (model, normalizer, reference, batch_rows)
    with latent_partition(out, info, row_group_size) as writer:
        if map_parts is None or len(dataset.files) < 2:
            for table, latents in scored_tables(dataset, shown, 0, *model_parts, summary.infinite):
                writer.write(table)
                summary.add_table(table, latents)
        else:
            fs, kind = dataset.filesystem, dataset.format.default_extname
            offsets = [0] * len(dataset.files)
            if reference.id_col == ROW_ID:
                counts = map_parts(file_rows, [(fs, path, kind) for path in dataset.files])
                offsets = [int(x) for x in np.cumsum([0, *counts[:-1]])]
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(
                dir=out.parent, prefix=temporary_prefix("score"), suffix=".tmp"
            ) as folder:
                items = [
                    (
                        fs,
                        path,
                        kind,
                        shown,
                        offsets[n],
                        Path(folder) / f"{n:05d}.arrow",
                        *model_parts,
                    )
                    for n, path in enumerate(dataset.files)
                ]
                for part, partial in map_parts(score_file, items):
                    summary.merge(partial)
                    if part.exists():
                        with pa.memory_map(str(part)) as handle:
                            reader = pa.ipc.open_file(handle)
                            for i in range(reader.num_record_batches):
                                writer.write(pa.Table.from_batches([reader.get_batch(i)]))
        if writer.rows == 0:
            message = f"{shown}: no rows to score"
            raise AepipeError(message)
    if summary.unscored:
        columns = ", ".join(f"{name!r} ({count})" for name, count in summary.infinite.items())
        summary.warnings.append(
            f"{shown}: {summary.unscored} rows could not be scored (infinite values in "
            f"{columns or 'their inputs'}); they are flagged is_anomaly, anomaly_score NaN"
        )
    return summary


def source_version(source: str) -> str:
    """The version of a batch's input: ``md5:<hex>`` of a local file, else empty."""
    path = Path(source)
    return f"md5:{file_digest(path)}" if "://" not in source and path.is_file() else ""


def scored_tables(
    dataset: ds.Dataset,
    shown: str,
    first_row: int,
    model: nn.Module,
    normalizer: Normalizer,
    reference: Reference,
    batch_rows: int,
    infinite: dict[str, int] | None = None,
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """The scored rows of ``dataset`` with their latents, a record batch at a time.

    ``row_id`` (when the model was trained without an id column) counts from ``first_row``.
    ``infinite`` receives, per column, the rows that could not be scored for an infinite
    value in it.
    """
    features, id_col, label_col = reference.features, reference.id_col, reference.label_col
    passthrough = [c for c in (id_col, label_col) if c and c in dataset.schema.names]
    infinite = {} if infinite is None else infinite
    row = first_row
    for batch in read_batches(dataset, [*passthrough, *features], batch_rows):
        if batch.num_rows == 0:
            continue
        x = normalizer.transform(batch, shown, infinite)
        columns = {c: batch.column(c) for c in passthrough}
        if id_col == ROW_ID:
            columns = {ROW_ID: pa.array(np.arange(row, row + batch.num_rows)), **columns}
        row += batch.num_rows
        scored, latents = latent_columns(model, x, reference)
        yield pa.table({**columns, **scored}), latents


def file_rows(fs: object, path: str, kind: str) -> int:
    """The rows of one file of a batch (Parquet: from its footer)."""
    dataset = ds.dataset([path], filesystem=fs, format=kind)
    return dataset.count_rows()


def score_file(
    fs: object,
    path: str,
    kind: str,
    shown: str,
    first_row: int,
    out: Path,
    model: nn.Module,
    normalizer: Normalizer,
    reference: Reference,
    batch_rows: int,
) -> tuple[Path, ScoreSummary]:
    """Score one file of a batch into an Arrow IPC file (a worker's share of a batch)."""
    dataset = ds.dataset([path], filesystem=fs, format=kind)
    summary, writer = ScoreSummary(), None
    for table, latents in scored_tables(
        dataset, shown, first_row, model, normalizer, reference, batch_rows, summary.infinite
    ):
        if writer is None:
            writer = pa.ipc.new_file(str(out), table.schema)
        writer.write_table(table)
        summary.add_table(table, latents)
    if writer is not None:
        writer.close()
    return out, summary
