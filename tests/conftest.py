"""Shared fixtures: tiny tables written once per test, and a throwaway project folder."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aecore.config import DataConfig, NormalizeConfig, Params, load_params
from aecore.normalize import Normalizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for the flow runs of the whole session (seconds to start).

    Without it, a flow run starts Prefect's ephemeral server, which stops at exit and logs
    to pytest's closed output.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def cli_env(prefect_api: str | None = None, drop: str = "PREFECT_API") -> dict[str, str]:
    """The environment of an ``aepipe`` subprocess: the local MLflow store, and Prefect's
    temporary server unless ``prefect_api`` names one. ``drop``: the Prefect variables left out.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith((drop, "MLFLOW_"))}
    return env | ({"PREFECT_API_URL": prefect_api} if prefect_api else {})


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect server for the ``aepipe`` processes the tests start: its API URL.

    Each process would otherwise start a temporary server of its own, seconds apiece.
    """
    from flows.server import TemporaryServer

    server = TemporaryServer()
    server.wait_ready()
    yield server.api_url
    server.stop()


@pytest.fixture
def params() -> Params:
    """The project's own defaults."""
    return load_params(REPO / "params.yaml")


def data_config(source: object, **changes: object) -> DataConfig:
    """A data section for ``source``: dataset ``t``, no id, label or feature list."""
    values = {"id_col": None, "label_col": None, "features": None, "image_shape": None}
    return DataConfig(**{"dataset": "t", "source": str(source), **values, **changes})


def normalize_config(**changes: object) -> NormalizeConfig:
    """params.yaml's normalize section with ``changes``."""
    return dataclasses.replace(load_params(REPO / "params.yaml").normalize, **changes)


def make_normalizer(
    columns: Sequence[str], method: str = "zscore", kinds: dict[str, str] | None = None
) -> Normalizer:
    """An unfitted Normalizer with params.yaml's encoding settings."""
    config = load_params(REPO / "params.yaml").normalize
    return Normalizer(
        columns,
        method,
        kinds,
        max_onehot=config.max_onehot,
        hash_buckets=config.hash_buckets,
        missing_indicator=config.missing_indicator,
    )


@pytest.fixture
def frame() -> pd.DataFrame:
    """200 rows of 4 correlated features, a constant column, an id and a 0/1 label."""
    generator = np.random.default_rng(0)
    base = generator.normal(3, 2, (200, 2))
    features = np.column_stack([base, base @ [[1.0, 0.5], [0.2, -1.0]]])
    frame = pd.DataFrame(features, columns=list("abcd"))
    frame["constant"] = 1.0
    frame.insert(0, "id", np.arange(1000, 1200))
    frame["name"] = [f"row {i}" for i in range(200)]
    frame["label"] = (np.arange(200) % 20 == 0).astype(int)
    return frame


def write_project(root: Path, **changes: object) -> Path:
    """Copy params.yaml into ``root`` with dotted keys changed; return ``root``."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with params.yaml (short training) and no data yet."""
    return write_project(tmp_path, train__epochs=12, train__patience=50)


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A CSV of low-rank rows with 3% planted anomalies and an anomaly label."""
    generator = np.random.default_rng(1)
    n, d = 600, 12
    z = generator.normal(size=(n, 3))
    x = z @ generator.normal(size=(3, d)) + 0.05 * generator.normal(size=(n, d))
    label = np.zeros(n, dtype=int)
    rows = generator.choice(n, 18, replace=False)
    x[rows] += generator.normal(0, 3, (18, d))
    label[rows] = 1
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
    frame["is_anomaly_label"] = label
    path = tmp_path / "planted.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def copy_repo_file(tmp_path: Path):
    def copy(name: str) -> Path:
        return Path(shutil.copy(REPO / name, tmp_path / name))

    return copy
