"""Real crashes: `aepipe` killed with SIGKILL mid-stage, then run again as a user would.

Nothing is mocked: the process is killed while it trains, exports or scores, in a git +
DVC project with the SQLite MLflow store and Prefect's temporary server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.dataset as ds
import pytest
from mlflow.tracking import MlflowClient

from aecore.export import read_latents
from aecore.synthetic import make_data
from flows import tracking
from tests.conftest import cli_env
from tests.test_cli import AEPIPE
from tests.test_versioning import make_repo, sh

pytestmark = pytest.mark.slow


def start(*args: str, cwd: Path, api: str | None = None) -> subprocess.Popen:
    """``aepipe args`` in ``cwd``: against the Prefect server ``api``, or a temporary one."""
    return subprocess.Popen(
        [str(AEPIPE), *args],
        cwd=cwd,
        env=cli_env(api),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 180) -> None:
    """SIGKILL ``process`` alone (not its children) as soon as ``ready()``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"finished before the crash:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the moment to crash never came")
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def temporary_files(root: Path) -> list[Path]:
    return [p for p in (root / "data").rglob("*.tmp")]


def runs(root: Path, experiment: str) -> list:
    client = MlflowClient(tracking.default_uri(root))
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], order_by=["start_time ASC"])


SYNTHETIC = {"data__image_shape": None, "data__label_col": "label", "train__device": "cpu"}


def test_killed_training_resumes_and_matches_an_uninterrupted_run(tmp_path, prefect_api):
    make_data(tmp_path / "source", rows=10000, cols=16, seed=1)
    options = SYNTHETIC | {
        "train__epochs": 40,
        "train__patience": 1000,
        "train__checkpoint_seconds": 0.2,
    }
    args = ("run", "--source", str(tmp_path / "source"), "--dataset", "sensors")
    crashed = make_repo(tmp_path / "crashed", **options)
    checkpoint = crashed / "data/models/sensors/checkpoint.pt"
    process = start(*args, cwd=crashed)
    server = []

    def trained_a_while() -> bool:
        server[:] = psutil.Process(process.pid).children()
        return checkpoint.exists() and time.time() - checkpoint.stat().st_mtime < 1

    time.sleep(1)
    kill_when(process, lambda: checkpoint.exists() and trained_a_while())
    time.sleep(3)
    assert server and not any(p.is_running() and p.status() != "zombie" for p in server), (
        "the temporary Prefect server outlived its parent"
    )
    [dead] = runs(crashed, "sensors")
    assert dead.info.status == "RUNNING"

    output = finish(start(*args, "--resume", cwd=crashed, api=prefect_api))
    assert "resumed" in output
    first, second = runs(crashed, "sensors")
    assert first.info.status == "FAILED"  # the dead process's run, ended by the next run
    assert second.info.status == "FINISHED"
    assert not checkpoint.exists() and temporary_files(crashed) == []
    assert sh("dvc", "status", cwd=crashed).returncode == 0

    whole = make_repo(tmp_path / "whole", **options)
    finish(start(*args, cwd=whole, api=prefect_api))
    resumed = read_latents(crashed / "data/latents/sensors").sort_values("row_id")
    expected = read_latents(whole / "data/latents/sensors").sort_values("row_id")
    latents = [c for c in expected if c.startswith("z")]
    np.testing.assert_allclose(resumed[latents], expected[latents], rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed["anomaly_score"], expected["anomaly_score"], rtol=1e-6)


def test_killed_export_and_scoring_leave_nothing_half_done(tmp_path, prefect_api):
    make_data(tmp_path / "source", rows=400_000, cols=16, seed=2)
    options = SYNTHETIC | {
        "train__epochs": 1,
        "train__max_steps": 3,
        "export__row_group_size": 16384,
    }
    root = make_repo(tmp_path / "project", **options)
    args = ("run", "--source", str(tmp_path / "source"), "--dataset", "sensors")
    partition = root / "data/latents/sensors/model=1/batch=train"
    process = start(*args, cwd=root)
    kill_when(process, lambda: partition.is_dir() and any(partition.glob(".part-0.parquet.*")))
    table = ds.dataset(root / "data/latents/sensors", partitioning="hive")
    assert table.count_rows() == 0  # readers skip the half-written file
    assert not (root / "data/latents/sensors/_current").exists()

    finish(start(*args, cwd=root, api=prefect_api))  # not blocked by what the crash left
    client = MlflowClient(tracking.default_uri(root))
    versions = client.search_model_versions("name = 'sensors-autoencoder'")
    assert [str(v.version) for v in versions] == ["2"]  # the dead run's version 1 was deleted
    assert not partition.parent.exists()
    assert (root / "data/latents/sensors/_current").read_text().strip() == "model=2"
    assert [r.info.status for r in runs(root, "sensors")] == ["FAILED", "FINISHED"]
    assert temporary_files(root) == []

    frame = pd.read_parquet(tmp_path / "source")
    frame.to_parquet(tmp_path / "big.parquet")
    scoring = ("score", "--source", str(tmp_path / "big.parquet"), "--dataset", "sensors")
    batch = root / "data/latents/sensors/model=2/batch=big"
    process = start(*scoring, cwd=root, api=prefect_api)
    kill_when(process, lambda: batch.is_dir() and any(batch.glob(".part-0.parquet.*")))
    assert not (batch / "part-0.parquet").exists()
    finish(start(*scoring, cwd=root, api=prefect_api))
    assert len(read_latents(root / "data/latents/sensors", ["big"])) == len(frame)
    assert [p.name for p in batch.iterdir()] == ["part-0.parquet"]
    assert [r.info.status for r in runs(root, "sensors-scoring")] == ["FAILED", "FINISHED"]
    assert temporary_files(root) == []
