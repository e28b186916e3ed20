"""Feature encoding fitted in one streaming pass over the training split; the normalize stage.

Every source column becomes one block of model inputs: a scaled number (plus a 0/1
missing indicator), five numbers for a datetime, or a one-hot block for a boolean or a
categorical column (hashed into buckets above ``max_onehot`` categories).

Memory does not grow with the table: means and variances are merged batch by batch
(Chan et al.), minima and maxima are exact, category counts stop at ``max_onehot``, and
medians and quartiles come from a uniform sample of ``sample_rows`` training rows (exact
when the training split fits in it). The train/validation split is a function of the row
id, so a rerun gives the same split without holding the rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aecore.config import NORMALIZE_METHODS, NormalizeConfig
from aecore.errors import AepipeError
from aecore.io import (
    BATCH_ROWS,
    atomic_dir,
    dictionary_columns,
    parquet_files,
    reading_state,
    write_json,
)
from aecore.schema import META_SCHEMA, Mapper, column_kind, read_schema, serial_map

SPLIT = "split"
OTHER = "__other__"  # the one-hot slot of missing values and categories unseen in training
DATETIME_PARTS = ("t", "dow_sin", "dow_cos", "hour_sin", "hour_cos")
MISSING = "__missing"
IQR_PER_STD = 1.349  # the interquartile range of a normal distribution, in standard deviations
NUMBERS = {"numeric": 1, "datetime": len(DATETIME_PARTS)}  # scaled inputs per column kind
Frame = pd.DataFrame | pa.Table | pa.RecordBatch


def as_arrow(data: Frame) -> pa.Table | pa.RecordBatch:
    """Return rows as an Arrow table: pandas frames are converted, Arrow passes through."""
    if isinstance(data, pa.Table | pa.RecordBatch):
        return data
    return pa.Table.from_pandas(pd.DataFrame(data), preserve_index=False)


class Normalizer:
    """Encode each source column into numbers and scale them with train statistics.

    Numbers and datetime parts are imputed with the train median and scaled: ``zscore``
    matches scikit-learn's StandardScaler, ``minmax`` its MinMaxScaler and ``robust``
    its RobustScaler; ``iqr`` centres on the mean and divides by the standard deviation
    that the interquartile range implies (``IQR / 1.349``; the standard deviation where
    the IQR is 0), so that the outliers among the training rows do not shrink every
    other row's scaled values. A constant column gets scale 1, so it maps to 0. One-hot and
    missing-indicator inputs stay 0/1. ``encoded`` names the model inputs and ``blocks``
    gives, per source column, ``("num" | "cat", width)`` in the same order.
    """

    def __init__(
        self,
        columns: Sequence[str],
        method: str,
        kinds: dict[str, str] | None = None,
        *,
        max_onehot: int,
        hash_buckets: int,
        missing_indicator: bool,
    ) -> None:
        if method not in NORMALIZE_METHODS:
            message = f"normalize.method: {method!r} is not one of {NORMALIZE_METHODS}"
            raise AepipeError(message)
        self.columns = tuple(columns)
        self.kinds = {c: (kinds or {}).get(c, "numeric") for c in self.columns}
        self.method = method
        self.max_onehot, self.hash_buckets = max_onehot, hash_buckets
        self.missing_indicator = missing_indicator
        self.codes: list[dict[str, Any]] = []

    # -- reading one column --------------------------------------------------------------

    def _column(self, data: pa.Table | pa.RecordBatch, name: str, source: str) -> pa.Array:
        index = data.schema.get_field_index(name)  # a lookup: no list of every name per column
        if index < 0:
            names = set(data.schema.names)
            missing = [c for c in self.columns if c not in names]
            message = f"{source}: column {name!r} not found ({len(missing)} missing)"
            raise AepipeError(message)
        column = data.column(index)
        return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column

    def _values(self, column: pa.Array, name: str, source: str) -> np.ndarray:
        """Read one column as the kind it was fitted as.

        Numbers ``(n,)`` or datetime parts ``(n, 5)`` as float64 (NaN when missing), or
        strings ``(n,)`` (``None`` when missing) for one-hot columns.
        """
        kind, kind_found = self.kinds[name], column_kind(column.type)
        try:
            if kind == "numeric":
                if kind_found != "numeric" and not pa.types.is_null(column.type):
                    raise TypeError
                return column.to_numpy(zero_copy_only=False).astype(np.float64)
            if kind == "datetime":
                return datetime_parts(column)
            return np.asarray(pc.cast(column, pa.string()).to_numpy(zero_copy_only=False))
        except (TypeError, ValueError, pa.ArrowException) as error:
            message = f"{source}: column {name!r} is {column.type}, the model expects {kind}"
            raise AepipeError(message) from error

    # -- fitting and applying ------------------------------------------------------------

    def fit(self, data: Frame, source: str = "input") -> Normalizer:
        """Learn categories, medians, centres and scales from the training rows in ``data``."""
        data = as_arrow(data)
        fitting = NormalizerFit(self, sample_rows=max(data.num_rows, 1), source=source)
        fitting.add(data, np.arange(data.num_rows, dtype=np.float64))
        return fitting.finish()

    def numbers(self, data: pa.Table | pa.RecordBatch, source: str) -> list[np.ndarray]:
        """Each column's values as ``_values`` reads them, in the fitted order."""
        return [self._values(self._column(data, c, source), c, source) for c in self.columns]

    def _scaled(self) -> np.ndarray:
        """Per model input: a number to scale, or a 0/1 (one-hot or missing indicator)."""
        mask: list[bool] = []
        for code in self.codes:
            numbers = NUMBERS.get(code["kind"], 0)
            mask += [True] * numbers + [False] * (block_width(code) - numbers)
        return np.array(mask, dtype=bool)

    def _encode(self, columns: Iterable[np.ndarray], rows: int) -> np.ndarray:
        """Encode every column's values, before imputation and scaling: ``(rows, width)``."""
        widths = [block_width(code) for code in self.codes]
        out = np.empty((rows, sum(widths)))
        start = 0
        for values, code, width in zip(columns, self.codes, widths, strict=True):
            if code["kind"] in NUMBERS:
                values = values.reshape(len(values), -1)
                out[:, start : start + values.shape[1]] = values
                if code["indicator"]:
                    out[:, start + values.shape[1]] = np.isnan(values).any(axis=1)
            else:
                out[:, start : start + width] = one_hot(values, code)
            start += width
        return out

    def transform(
        self, data: Frame, source: str = "input", infinite: dict[str, int] | None = None
    ) -> np.ndarray:
        """Return the model inputs of ``data`` as a float32 array ``(n, width)``.

        An infinite number stays infinite, so the row cannot be scored; ``infinite``, when
        given, receives the rows with one per source column (``{"amount": 3}``).

        Raises:
            AepipeError: naming ``source`` and the column, when one is missing or its type
                cannot be read as the kind that was fitted.
        """
        if not self.codes:
            message = "Normalizer is not fitted: call fit() or from_json() first"
            raise AepipeError(message)
        data = as_arrow(data)
        columns = (self._values(self._column(data, c, source), c, source) for c in self.columns)
        x = self._encode(columns, data.num_rows)  # one column read at a time
        if infinite is not None:
            bad = np.isinf(x)
            if bad.any():
                start = 0
                for name, code in zip(self.columns, self.codes, strict=True):
                    width = block_width(code)
                    count = int(bad[:, start : start + width].any(axis=1).sum())
                    if count:
                        infinite[name] = infinite.get(name, 0) + count
                    start += width
        np.copyto(x, self.median_, where=np.isnan(x))  # impute and scale in place: x is ours
        x -= self.center_
        x /= self.scale_
        return x.astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Map scaled model inputs ``(n, width)`` back to the source's units."""
        return x.astype(np.float64) * self.scale_ + self.center_

    @property
    def encoded(self) -> list[str]:
        """The names of the model inputs, e.g. ``amount``, ``color=red``, ``ts__hour_sin``."""
        names = []
        for name, code in zip(self.columns, self.codes, strict=True):
            if code["kind"] == "numeric":
                names.append(name)
            elif code["kind"] == "datetime":
                names += [f"{name}__{part}" for part in DATETIME_PARTS]
            elif "categories" in code:
                names += [f"{name}={value}" for value in [*code["categories"], OTHER]]
            else:
                names += [f"{name}#{i}" for i in range(code["buckets"])]
            if code.get("indicator"):
                names.append(f"{name}{MISSING}")
        return names

    @property
    def blocks(self) -> list[tuple[str, int]]:
        """Per source column: ``("num", width)`` or ``("cat", width)`` for a one-hot block."""
        return [
            ("num" if code["kind"] in NUMBERS else "cat", block_width(code)) for code in self.codes
        ]

    def to_dict(self) -> dict:
        """Return the fitted state as plain JSON-ready values."""
        return {
            "method": self.method,
            "columns": list(self.columns),
            "kinds": self.kinds,
            "max_onehot": self.max_onehot,
            "hash_buckets": self.hash_buckets,
            "missing_indicator": self.missing_indicator,
            "codes": self.codes,
            "median_": self.median_.tolist(),
            "center_": self.center_.tolist(),
            "scale_": self.scale_.tolist(),
        }

    def to_json(self, path: Path) -> Path:
        """Write the fitted state to ``path``."""
        return write_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, path: Path) -> Normalizer:
        """Read a normalizer written by ``to_json``.

        Raises:
            AepipeError: naming the file, when it is missing, not JSON, or lacks a field.
        """
        with reading_state(path, "normalizer", "normalize"):
            state = json.loads(Path(path).read_text())
            options = ("kinds", "max_onehot", "hash_buckets", "missing_indicator")
            normalizer = cls(state["columns"], state["method"], **{k: state[k] for k in options})
            normalizer.codes = state["codes"]
            for key in ("median_", "center_", "scale_"):
                setattr(normalizer, key, np.asarray(state[key], dtype=np.float64))
        return normalizer


def block_width(code: dict[str, Any]) -> int:
    """The number of model inputs of one fitted column."""
    if code["kind"] in NUMBERS:
        return NUMBERS[code["kind"]] + int(code["indicator"])
    return len(code["categories"]) + 1 if "categories" in code else code["buckets"]


def datetime_parts(column: pa.Array) -> np.ndarray:
    """Seconds since 1970 and the day of week and hour of day as sine/cosine: ``(n, 5)``.

    Timestamps with a time zone are read in UTC; dates and ISO-8601 strings are accepted.
    """
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.timestamp("us"))
    if pa.types.is_date(column.type):
        column = pc.cast(column, pa.timestamp("s"))
    if not pa.types.is_timestamp(column.type):
        raise TypeError(column.type)
    micros = pc.cast(pc.cast(column, pa.timestamp("us", column.type.tz)), pa.int64())
    seconds = micros.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6
    day = 2 * np.pi * ((np.floor(seconds / 86400) + 3) % 7) / 7  # 1970-01-01 was a Thursday
    hour = 2 * np.pi * (seconds % 86400) / 86400
    return np.column_stack([seconds, np.sin(day), np.cos(day), np.sin(hour), np.cos(hour)])


def one_hot(values: np.ndarray, code: dict[str, Any]) -> np.ndarray:
    """One-hot rows ``(n, width)`` of strings.

    A known category, else the other slot; or a stable hash bucket when the column had
    too many categories.
    """
    n = len(values)
    if "categories" in code:
        slot = pd.Index(code["categories"], dtype=object).get_indexer(values)
        slot = np.where(slot < 0, len(code["categories"]), slot)
        width = len(code["categories"]) + 1
    else:
        width = code["buckets"]
        keys = np.where(pd.isna(values), "\0", values).astype(object)
        slot = (pd.util.hash_array(keys) % np.uint64(width)).astype(np.int64)
    out = np.zeros((n, width))
    out[np.arange(n), slot] = 1.0
    return out


class BottomK:
    """The ``k`` rows with the smallest keys among all rows added: a uniform sample.

    Keys are uniform hashes of the row ids (``split_keys``), so the sample is the same
    whatever order the rows come in. Rows are tuples of arrays indexed alike; ``result``
    returns them in the order they were added (by ``position``).

    With ``limit``, the k-th smallest key found beforehand by a pass over the keys alone
    (``kth``), exactly the rows whose key is at most ``limit`` enter, straight into
    arrays of ``k`` rows: the sample never takes more memory than itself.
    """

    def __init__(self, k: int, limit: float | None = None) -> None:
        self.k = k
        self.preset = limit is not None
        self.limit = math.inf if limit is None else limit  # larger keys cannot enter
        self.seen = 0
        self._keys: list[np.ndarray] = []
        self._rows: list[tuple[np.ndarray, ...]] = []
        self._size = 0

    def add(self, keys: np.ndarray, *rows: np.ndarray) -> None:
        """Offer rows with their keys; only those that can still be in the sample are kept."""
        self.seen += len(keys)
        if self.limit < math.inf:
            keep = keys <= self.limit if self.preset else keys < self.limit
            keys, rows = keys[keep], tuple(r[keep] for r in rows)
        if not len(keys):
            return
        if self.preset:
            self._fill(keys, rows)
            return
        self._keys.append(keys)
        self._rows.append(rows)
        self._size += len(keys)
        if self._size >= 2 * self.k:
            self._compact()

    def _fill(self, keys: np.ndarray, rows: tuple[np.ndarray, ...]) -> None:
        if not self._keys:
            self._keys = [np.empty(self.k, keys.dtype)]
            self._rows = [tuple(np.empty((self.k, *r.shape[1:]), r.dtype) for r in rows)]
        take = min(len(keys), self.k - self._size)  # more only on a tie at the limit
        end = self._size + take
        self._keys[0][self._size : end] = keys[:take]
        for buffer, row in zip(self._rows[0], rows, strict=True):
            buffer[self._size : end] = row[:take]
        self._size = end

    def _compact(self) -> None:
        if self.preset:
            self._keys = [self._keys[0][: self._size]]
            self._rows = [tuple(r[: self._size] for r in self._rows[0])]
            return
        keys = np.concatenate(self._keys)
        rows = tuple(np.concatenate(parts) for parts in zip(*self._rows, strict=True))
        if len(keys) > self.k:
            chosen = np.argpartition(keys, self.k - 1)[: self.k]
            keys, rows = keys[chosen], tuple(r[chosen] for r in rows)
            self.limit = float(keys.max())
        self._keys, self._rows, self._size = [keys], [rows], len(keys)

    def kth(self) -> float:
        """The largest key in the sample: the ``limit`` of a second pass that takes it."""
        self._compact()
        return float(self._keys[0].max()) if self._keys and len(self._keys[0]) else math.inf

    def result(self, position: int = 0) -> tuple[np.ndarray, ...]:
        """The sampled rows, sorted by their array number ``position`` (e.g. row number)."""
        if not self._keys:
            return ()
        self._compact()
        rows = self._rows[0]
        order = rows[position]
        if len(order) < 2 or (order[1:] >= order[:-1]).all():
            return rows  # added in order: no copy
        order = np.argsort(order, kind="stable")
        return tuple(r[order] for r in rows)

    @property
    def complete(self) -> bool:
        """Whether every row added is in the sample (the sample is the whole table)."""
        return self.seen <= self.k


def split_keys(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row: a function of its id and ``seed`` only."""
    values = ids.to_numpy(zero_copy_only=False)
    if values.dtype.kind not in "iuf":
        values = np.asarray(values, dtype=object)
    hashed = pd.util.hash_array(values)
    mixed = pd.util.hash_array(hashed ^ np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64)))
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class Split:
    """Rows whose key is below ``threshold`` are held out for validation.

    ``sample_limit``: the training rows whose key is at most this are the normalizer's
    sample of ``sample_rows`` (every training row when they are fewer).
    """

    seed: int
    threshold: float
    train_rows: int
    val_rows: int
    sample_limit: float = math.inf

    def is_val(self, keys: np.ndarray) -> np.ndarray:
        return keys < self.threshold


def plan_split(raw: Path, id_col: str, config: NormalizeConfig) -> Split:
    """Hold out the rows whose key is below ``val_fraction``, reading only the id column.

    At least one row goes to each side: on a tiny table, the row with the smallest key
    is held out, or the one with the largest is kept for training. Also finds the key
    limit of the normalizer's sample. Memory: ``sample_rows`` keys, whatever the rows.
    """
    rows = n_val = 0
    low, high = math.inf, -math.inf
    sample = BottomK(config.sample_rows + 1)  # one spare: a tiny table moves one row out
    for path in parquet_files(raw):
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(columns=[id_col]):
            keys = split_keys(batch.column(0), config.seed)
            rows += len(keys)
            held = keys < config.val_fraction
            n_val += int(held.sum())
            if len(keys):
                low, high = min(low, float(keys.min())), max(high, float(keys.max()))
            sample.add(keys[~held], keys[~held])
    if rows < 2:
        message = f"{raw}: {rows} rows are too few to hold out a validation split"
        raise AepipeError(message)
    threshold = config.val_fraction
    if n_val == 0:
        threshold, n_val = float(np.nextafter(low, 1.0)), 1
    elif n_val == rows:
        threshold, n_val = high, rows - 1
    train_keys = sample.result()[0] if sample.seen else np.zeros(0)  # sorted: keys lead
    train_keys = train_keys[train_keys >= threshold]
    limit = (
        float(train_keys[config.sample_rows - 1]) if rows - n_val > config.sample_rows else math.inf
    )
    return Split(config.seed, threshold, rows - n_val, n_val, limit)


class NormalizerFit:
    """Fits a ``Normalizer`` from record batches of training rows, in one pass.

    Exact: category counts (up to ``max_onehot``), missing values, counts, means and
    variances (merged with Chan's formula), minima and maxima. From a uniform sample of
    ``sample_rows`` rows: the medians that impute missing values and the quartiles of
    ``robust`` and ``iqr``; exact when every training row fits in the sample.
    """

    def __init__(
        self,
        normalizer: Normalizer,
        sample_rows: int,
        source: str = "input",
        sample_limit: float | None = None,
    ) -> None:
        self.normalizer, self.source = normalizer, source
        self.counts: list[dict[str, int] | None] = [
            None if normalizer.kinds[c] in NUMBERS else {} for c in normalizer.columns
        ]
        self.missing = [False] * len(normalizer.columns)
        self.infinite = [0] * len(normalizer.columns)
        self.sample = BottomK(sample_rows, sample_limit)
        self.n = 0
        self.n_obs = self.mean = self.m2 = self.low = self.high = None

    def add(self, data: pa.Table | pa.RecordBatch, keys: np.ndarray) -> None:
        """Fold training rows into the fit; ``keys`` are their ``split_keys``."""
        if data.num_rows == 0:
            return  # a batch of held-out rows only
        normalizer = self.normalizer
        numbers = []
        for i, values in enumerate(normalizer.numbers(data, self.source)):
            counts = self.counts[i]
            if counts is None:
                values = values.reshape(len(values), -1)
                numbers.append(values)
                self.missing[i] |= bool(np.isnan(values).any())
                self.infinite[i] += int(np.isinf(values).any(axis=1).sum())
            elif len(counts) <= normalizer.max_onehot:
                batch = pd.Series(values, dtype=object).value_counts(dropna=True)
                for value, count in batch.items():
                    counts[value] = counts.get(value, 0) + int(count)
        if not numbers:
            self.n += data.num_rows
            return
        x = np.hstack(numbers)
        self._moments(x)
        self.sample.add(keys, x, np.arange(self.n, self.n + len(x)))
        self.n += len(x)

    def _moments(self, x: np.ndarray) -> None:
        observed = ~np.isnan(x)
        n_b = observed.sum(axis=0)
        with np.errstate(all="ignore"):
            mean_b = np.where(n_b > 0, np.nansum(x, axis=0) / np.maximum(n_b, 1), 0.0)
            m2_b = np.nansum((x - mean_b) ** 2, axis=0)
            low_b = np.where(n_b > 0, np.nanmin(np.where(observed, x, np.inf), axis=0), np.inf)
            high_b = np.where(n_b > 0, np.nanmax(np.where(observed, x, -np.inf), axis=0), -np.inf)
        if self.n_obs is None:
            self.n_obs, self.mean, self.m2, self.low, self.high = n_b, mean_b, m2_b, low_b, high_b
            return
        n = self.n_obs + n_b
        delta = mean_b - self.mean
        share = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2_b + delta**2 * self.n_obs * share
        self.n_obs = n
        self.low, self.high = np.minimum(self.low, low_b), np.maximum(self.high, high_b)

    def finish(self) -> Normalizer:
        """Set the normalizer's codes and its median, centre and scale per model input.

        Raises:
            AepipeError: naming the column and the count, when a training row holds an
                infinite number (an empty value is a missing one; inf has no meaning).
        """
        normalizer = self.normalizer
        for name, count in zip(normalizer.columns, self.infinite, strict=True):
            if count:
                message = (
                    f"{self.source}: column {name!r} holds {count} infinite values (inf or "
                    f"-inf) in {self.n:,} training rows; make them empty (missing) or finite"
                )
                raise AepipeError(message)
        normalizer.codes = []
        for name, counts, missing in zip(
            normalizer.columns, self.counts, self.missing, strict=True
        ):
            code: dict[str, Any] = {"kind": normalizer.kinds[name]}
            if counts is None:
                code["indicator"] = bool(normalizer.missing_indicator and missing)
            elif len(counts) <= normalizer.max_onehot:
                ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
                code["categories"] = [value for value, _ in ordered]
            else:
                code["buckets"] = normalizer.hash_buckets
            normalizer.codes.append(code)
        scaled = normalizer._scaled()
        width = len(scaled)
        median_, center_, scale_ = np.zeros(width), np.zeros(width), np.ones(width)
        if self.n_obs is not None:
            sample = self.sample.result(position=1)[0]
            with np.errstate(all="ignore"):
                median = np.nanmedian(sample, axis=0) if len(sample) else np.zeros(len(self.mean))
            median = np.where(np.isnan(median), 0.0, median)  # all-missing column: 0
            center, scale = self._center_and_scale(sample, median)
            scale = np.where(scale > 1e-12 * np.maximum(np.abs(center), 1.0), scale, 1.0)
            median_[scaled], center_[scaled], scale_[scaled] = median, center, scale
        normalizer.median_, normalizer.center_, normalizer.scale_ = median_, center_, scale_
        return normalizer

    def _center_and_scale(
        self, sample: np.ndarray, median: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Over the training rows with missing values imputed by ``median``."""
        n, missing = self.n, self.n - self.n_obs
        method = self.normalizer.method
        mean = (self.n_obs * self.mean + missing * median) / max(n, 1)
        m2 = self.m2 + self.n_obs * missing / max(n, 1) * (self.mean - median) ** 2
        std = np.sqrt(np.maximum(m2, 0.0) / max(n, 1))
        if method == "zscore":
            return mean, std
        if method == "minmax":
            low = np.where(missing > 0, np.minimum(self.low, median), self.low)
            high = np.where(missing > 0, np.maximum(self.high, median), self.high)
            low, high = np.where(np.isfinite(low), low, 0.0), np.where(np.isfinite(high), high, 0.0)
            return low, high - low
        imputed = np.where(np.isnan(sample), median, sample)
        if not len(imputed):
            return np.zeros(len(median)), np.ones(len(median))
        q25, center, q75 = np.percentile(imputed, [25, 50, 75], axis=0)
        if method == "robust":
            return center, q75 - q25
        spread = (q75 - q25) / IQR_PER_STD  # iqr
        return mean, np.where(spread > 0, spread, std)


@dataclass(frozen=True)
class NormalizeSummary:
    """What the normalize stage did: rows per side, model inputs, fitted on a sample."""

    rows: int
    train_rows: int
    val_rows: int
    inputs: int
    sampled: bool


def normalize(
    raw: Path,
    out: Path,
    normalizer_path: Path,
    config: NormalizeConfig,
    map_parts: Mapper = serial_map,
) -> NormalizeSummary:
    """Split the raw rows, fit the normalizer on the train split and encode every row.

    Two streaming passes over ``raw``: the fit, then the encoding. Writes the folder
    ``out`` (one Parquet file per raw file: id, label, ``split`` and the float32 model
    inputs, whose names and blocks go into the schema metadata) and the normalizer JSON.

    Returns:
        What it did: rows per side, model inputs, whether the medians came from a sample.
    """
    schema = read_schema(raw)
    split = plan_split(raw, schema["id_col"], config)
    normalizer = Normalizer(
        schema["features"],
        config.method,
        schema.get("kinds"),
        max_onehot=config.max_onehot,
        hash_buckets=config.hash_buckets,
        missing_indicator=config.missing_indicator,
    )
    limit = None if split.sample_limit == math.inf else split.sample_limit
    fitting = NormalizerFit(normalizer, config.sample_rows, schema.get("source", str(raw)), limit)
    columns = list(dict.fromkeys([schema["id_col"], *schema["features"]]))
    for path in parquet_files(raw):
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(columns=columns):
            keys = split_keys(batch.column(schema["id_col"]), split.seed)
            train = ~split.is_val(keys)
            fitting.add(batch.filter(pa.array(train)), keys[train])
    fitting.finish()
    schema |= {
        "encoded": normalizer.encoded,
        "blocks": normalizer.blocks,
        "split": {"seed": split.seed, "threshold": split.threshold},
    }
    with atomic_dir(out) as folder:
        items = [
            (path, folder / f"part-{number:05d}.parquet", normalizer, schema)
            for number, path in enumerate(parquet_files(raw))
        ]
        map_parts(transform_file, items)
    normalizer.to_json(normalizer_path)
    return NormalizeSummary(
        rows=split.train_rows + split.val_rows,
        train_rows=split.train_rows,
        val_rows=split.val_rows,
        inputs=len(normalizer.encoded),
        sampled=not fitting.sample.complete,
    )


def transform_file(raw: Path, out: Path, normalizer: Normalizer, schema: dict) -> Path:
    """Encode one raw file into one processed file, a record batch at a time."""
    passthrough = [c for c in (schema["id_col"], schema["label_col"]) if c]
    seed, threshold = schema["split"]["seed"], schema["split"]["threshold"]
    file = pq.ParquetFile(raw, pre_buffer=False)
    fields = [file.schema_arrow.field(c) for c in passthrough]
    fields += [pa.field(SPLIT, pa.string())]
    fields += [pa.field(name, pa.float32()) for name in schema["encoded"]]
    out_schema = pa.schema(fields, metadata={META_SCHEMA: json.dumps(schema).encode()})
    columns = list(dict.fromkeys([*passthrough, *schema["features"]]))
    flags = [
        name
        for name, scaled in zip(schema["encoded"], normalizer._scaled(), strict=True)
        if not scaled
    ]  # one-hot and missing-indicator inputs repeat: a dictionary; scaled numbers seldom do
    dictionary = [*dictionary_columns(out_schema), *flags]
    with pq.ParquetWriter(
        out, out_schema, compression="zstd", use_dictionary=dictionary
    ) as parquet:
        for batch in file.iter_batches(columns=columns):
            infinite: dict[str, int] = {}
            x = normalizer.transform(batch, str(raw), infinite)
            if infinite:
                name, count = next(iter(infinite.items()))
                message = (
                    f"{schema['source']}: column {name!r} holds {count} infinite values "
                    "(inf or -inf) in a batch of its rows; make them empty (missing) or finite"
                )
                raise AepipeError(message)
            is_val = split_keys(batch.column(schema["id_col"]), seed) < threshold
            arrays = [batch.column(c) for c in passthrough]
            arrays.append(pa.array(np.where(is_val, "val", "train")))
            arrays += [pa.array(x[:, i]) for i in range(x.shape[1])]
            parquet.write_batch(pa.RecordBatch.from_arrays(arrays, schema=out_schema))
    return out


@dataclass
class Features:
    """Model inputs read from the processed folder, with what identifies each row."""

    x: np.ndarray  # (n, d) float32
    is_val: np.ndarray  # (n,) bool
    labels: np.ndarray | None
    total: int  # the rows of the split(s) sampled from, in the whole table


def iter_features(
    processed: Path, columns: Sequence[str] = (), batch_rows: int = BATCH_ROWS
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Yield ``(batch of the extra columns, float32 model inputs)`` over every processed row."""
    schema = read_schema(processed)
    encoded = schema["encoded"]
    for path in parquet_files(processed):
        file = pq.ParquetFile(path, pre_buffer=False)
        for batch in file.iter_batches(batch_size=batch_rows, columns=[*columns, *encoded]):
            width = len(columns)
            x = np.empty((batch.num_rows, len(encoded)), np.float32)
            for i in range(len(encoded)):
                x[:, i] = batch.column(width + i).to_numpy()
            yield batch.select(list(range(width))), x


def load_features(
    processed: Path, split: str | None = None, max_rows: int | None = None
) -> Features:
    """A uniform sample of at most ``max_rows`` processed rows of ``split`` (``train``/``val``).

    The sample is the rows with the smallest split keys, in table order: the same rows on
    every run, and every row when they fit. ``None`` reads every row of both splits.
    """
    return load_samples(processed, {split: max_rows})[split]


def load_samples(
    processed: Path, sizes: Mapping[str | None, int | None]
) -> dict[str | None, Features]:
    """Uniform samples of several splits (``{"train": 1_000_000, "val": 65_536}``) at once.

    Two passes over the processed files, whatever the number of splits: the keys alone,
    to find each sample's largest key, then the rows, straight into arrays of the
    samples' sizes. A size of ``None`` takes every row of that split.
    """
    schema = read_schema(processed)
    label_col, seed, id_col = schema["label_col"], schema["split"]["seed"], schema["id_col"]
    keys = {split: BottomK(size or 1) for split, size in sizes.items()}
    for path in parquet_files(processed):
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(columns=[id_col, SPLIT]):
            row_keys = split_keys(batch.column(0), seed)
            for split, sample in keys.items():
                sample.add(row_keys[_chosen(batch.column(1), split)])
    limits, samples = {}, {}
    for split, size in sizes.items():
        total = keys[split].seen
        limits[split] = keys[split].kth() if size and total > size else math.inf
        samples[split] = BottomK(max(min(total, size or total), 1), limits[split])
    extra = [id_col, SPLIT, *([label_col] if label_col else [])]
    position = 0
    for batch, x in iter_features(processed, extra):
        row_keys = split_keys(batch.column(0), seed)
        is_val = batch.column(1).to_numpy(zero_copy_only=False) == "val"
        labels = batch.column(2).to_numpy(zero_copy_only=False) if label_col else is_val
        for split, sample in samples.items():
            chosen = _chosen(batch.column(1), split) & (row_keys <= limits[split])
            rows = np.flatnonzero(chosen)
            sample.add(row_keys[rows], rows + position, x[rows], is_val[rows], labels[rows])
        position += len(x)
    result = {}
    for split, sample in samples.items():
        arrays = sample.result(position=0)
        if arrays:
            x, is_val, labels = arrays[1:]
        else:
            x = np.zeros((0, len(schema["encoded"])), np.float32)
            is_val, labels = np.zeros(0, bool), None
        result[split] = Features(x, is_val, labels if label_col else None, keys[split].seen)
    return result


def _chosen(split_column: pa.Array, split: str | None) -> np.ndarray:
    values = split_column.to_numpy(zero_copy_only=False)
    return np.ones(len(values), bool) if split is None else values == split
