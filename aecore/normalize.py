"""Feature encoding fitted on the training split, and the normalize stage.

Every source column becomes one block of model inputs: a scaled number (plus a 0/1
missing indicator), five numbers for a datetime, or a one-hot block for a boolean or a
categorical column (hashed into buckets above ``max_onehot`` categories).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aecore.config import NORMALIZE_METHODS, NormalizeConfig
from aecore.errors import AepipeError
from aecore.io import column_kind, read_schema, write_json, write_parquet

SPLIT = "split"
OTHER = "__other__"  # the one-hot slot of missing values and categories unseen in training
DATETIME_PARTS = ("t", "dow_sin", "dow_cos", "hour_sin", "hour_cos")
MISSING = "__missing"
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
    its RobustScaler; a constant column gets scale 1, so it maps to 0. One-hot and
    missing-indicator inputs stay 0/1. ``encoded`` names the model inputs and ``blocks``
    gives, per source column, ``("num" | "cat", width)`` in the same order.
    """

    def __init__(
        self,
        columns: Sequence[str],
        method: str = "zscore",
        kinds: dict[str, str] | None = None,
        max_onehot: int = 20,
        hash_buckets: int = 16,
        missing_indicator: bool = True,
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
        if name not in data.schema.names:
            missing = [c for c in self.columns if c not in data.schema.names]
            message = f"{source}: column {name!r} not found ({len(missing)} missing)"
            raise AepipeError(message)
        column = data.column(name)
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
        columns = [self._values(self._column(data, c, source), c, source) for c in self.columns]
        self.codes = []
        for name, values in zip(self.columns, columns, strict=True):
            code: dict[str, Any] = {"kind": self.kinds[name]}
            if code["kind"] in NUMBERS:
                missing = np.isnan(values).any() if len(values) else False
                code["indicator"] = bool(self.missing_indicator and missing)
            else:
                counts = pd.Series(values, dtype=object).value_counts(dropna=True)
                if len(counts) <= self.max_onehot:
                    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
                    code["categories"] = [value for value, _ in ordered]
                else:
                    code["buckets"] = self.hash_buckets
            self.codes.append(code)
        raw = self._encode(columns, data.num_rows)
        scaled = self._scaled()
        with np.errstate(all="ignore"):
            median = np.nanmedian(raw, axis=0) if len(raw) else np.zeros(raw.shape[1])
        median = np.where(np.isnan(median), 0.0, median)  # all-missing column: 0
        x = np.where(np.isnan(raw), median, raw)
        if self.method == "zscore":
            center, scale = x.mean(axis=0), x.std(axis=0, ddof=0)
        elif self.method == "minmax":
            center, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
        else:
            q25, center, q75 = np.percentile(x, [25, 50, 75], axis=0)
            scale = q75 - q25
        scale = np.where(scale > 1e-12 * np.maximum(np.abs(center), 1.0), scale, 1.0)
        self.median_ = np.where(scaled, median, 0.0)
        self.center_ = np.where(scaled, center, 0.0)
        self.scale_ = np.where(scaled, scale, 1.0)
        return self

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

    def transform(self, data: Frame, source: str = "input") -> np.ndarray:
        """Return the model inputs of ``data`` as a float32 array ``(n, width)``.

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
        """Read a normalizer written by ``to_json``."""
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


def split_rows(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Return a boolean mask of the held-out rows: a seeded random ``val_fraction`` of ``n``."""
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return is_val


def normalize(raw: Path, out: Path, normalizer_path: Path, config: NormalizeConfig) -> Path:
    """Split the raw rows, fit the normalizer on the train split and encode every row.

    Writes ``out`` (id, label, ``split`` and the float32 model inputs, whose names and
    blocks go into its schema metadata) and the normalizer JSON.
    """
    schema = read_schema(raw)
    table = pq.read_table(raw)
    is_val = split_rows(table.num_rows, config.val_fraction, config.seed)
    if is_val.all() or not is_val.any():
        message = f"{raw}: {table.num_rows} rows are too few to hold out a validation split"
        raise AepipeError(message)
    normalizer = Normalizer(
        schema["features"],
        config.method,
        schema.get("kinds"),
        config.max_onehot,
        config.hash_buckets,
        config.missing_indicator,
    ).fit(table.filter(pa.array(~is_val)), str(raw))
    x = normalizer.transform(table, str(raw))
    passthrough = [c for c in (schema["id_col"], schema["label_col"]) if c]
    columns = {c: table.column(c) for c in passthrough}
    columns[SPLIT] = pa.array(np.where(is_val, "val", "train"))
    encoded = normalizer.encoded
    columns.update({name: pa.array(x[:, i]) for i, name in enumerate(encoded)})
    schema |= {"encoded": encoded, "blocks": normalizer.blocks}
    metadata = {**(pq.read_schema(raw).metadata or {}), b"aepipe.schema": json.dumps(schema)}
    normalizer.to_json(normalizer_path)
    write_parquet(pa.table(columns).replace_schema_metadata(metadata), out)
    return out
