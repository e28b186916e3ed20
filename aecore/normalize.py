"""Feature scaling fitted on the training split, and the normalize stage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aecore.config import NORMALIZE_METHODS, NormalizeConfig
from aecore.errors import AepipeError
from aecore.io import read_schema, write_json, write_parquet

SPLIT = "split"


class Normalizer:
    """Impute missing values with train medians, then scale each feature.

    ``zscore`` matches scikit-learn's StandardScaler, ``minmax`` its MinMaxScaler and
    ``robust`` its RobustScaler. A constant column gets scale 1, so it maps to 0.
    """

    def __init__(self, columns: Sequence[str], method: str = "zscore") -> None:
        if method not in NORMALIZE_METHODS:
            message = f"normalize.method: {method!r} is not one of {NORMALIZE_METHODS}"
            raise AepipeError(message)
        self.columns = tuple(columns)
        self.method = method

    def _select(self, frame: pd.DataFrame, source: str) -> np.ndarray:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            message = f"{source}: column {missing[0]!r} not found ({len(missing)} missing)"
            raise AepipeError(message)
        x = frame.loc[:, list(self.columns)]
        for column in self.columns:
            if not (pd.api.types.is_numeric_dtype(x[column]) and x[column].dtype != bool):
                message = f"{source}: column {column!r} is {x[column].dtype}, not numeric"
                raise AepipeError(message)
        return x.to_numpy(dtype=np.float64, na_value=np.nan)

    def fit(self, frame: pd.DataFrame, source: str = "input") -> Normalizer:
        """Learn medians, centres and scales from the training rows in ``frame``."""
        x = self._select(frame, source)
        with np.errstate(all="ignore"):
            median = np.nanmedian(x, axis=0) if len(x) else np.zeros(x.shape[1])
        self.median_ = np.where(np.isnan(median), 0.0, median)  # all-missing column: 0
        x = np.where(np.isnan(x), self.median_, x)
        if self.method == "zscore":
            center, scale = x.mean(axis=0), x.std(axis=0, ddof=0)
        elif self.method == "minmax":
            center, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
        else:
            q25, center, q75 = np.percentile(x, [25, 50, 75], axis=0)
            scale = q75 - q25
        self.center_ = center
        self.scale_ = np.where(scale > 1e-12 * np.maximum(np.abs(center), 1.0), scale, 1.0)
        return self

    def transform(self, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
        """Return the scaled features of ``frame`` as a float32 array of shape ``(n, d)``."""
        if not hasattr(self, "scale_"):
            message = "Normalizer is not fitted: call fit() or from_json() first"
            raise AepipeError(message)
        return self.scale(self._select(frame, source))

    def scale(self, x: np.ndarray) -> np.ndarray:
        """Impute and scale raw feature rows ``(n, d)``, columns in ``self.columns`` order."""
        x = np.where(np.isnan(x), self.median_, x)
        return ((x - self.center_) / self.scale_).astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Map scaled rows ``(n, d)`` back to the source's units."""
        return x.astype(np.float64) * self.scale_ + self.center_

    def to_dict(self) -> dict:
        """Return the fitted state as plain JSON-ready values."""
        return {
            "method": self.method,
            "columns": list(self.columns),
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
        normalizer = cls(state["columns"], state["method"])
        for key in ("median_", "center_", "scale_"):
            setattr(normalizer, key, np.asarray(state[key], dtype=np.float64))
        return normalizer


def split_rows(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Return a boolean mask of the held-out rows: a seeded random ``val_fraction`` of ``n``."""
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return is_val


def normalize(raw: Path, out: Path, normalizer_path: Path, config: NormalizeConfig) -> Path:
    """Split the raw rows, fit the normalizer on the train split and scale every row.

    Writes ``out`` (id, label, ``split`` and the float32 features) and the normalizer JSON.
    """
    schema = read_schema(raw)
    frame = pq.read_table(raw).to_pandas()
    is_val = split_rows(len(frame), config.val_fraction, config.seed)
    if is_val.all() or not is_val.any():
        message = f"{raw}: {len(frame)} rows are too few to hold out a validation split"
        raise AepipeError(message)
    normalizer = Normalizer(schema["features"], config.method).fit(frame[~is_val], str(raw))
    x = normalizer.transform(frame, str(raw))
    passthrough = [c for c in (schema["id_col"], schema["label_col"]) if c]
    columns = {c: pa.array(frame[c]) for c in passthrough}
    columns[SPLIT] = pa.array(np.where(is_val, "val", "train"))
    columns.update({name: pa.array(x[:, i]) for i, name in enumerate(normalizer.columns)})
    table = pa.table(columns).replace_schema_metadata(pq.read_schema(raw).metadata)
    normalizer.to_json(normalizer_path)
    write_parquet(table, out)
    return out
