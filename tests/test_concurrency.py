"""Scorings at the same time, as cron and people start them, on the SQLite MLflow store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from aecore.export import read_latents
from aecore.synthetic import make_data
from flows import tracking
from tests.conftest import cli_env, write_project
from tests.test_cli import AEPIPE

pytestmark = pytest.mark.slow


def start(*args: str, cwd: Path, prefect_api: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(AEPIPE), *args],
        cwd=cwd,
        env=cli_env(prefect_api),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api) -> tuple[Path, pd.DataFrame]:
    root = write_project(
        tmp_path_factory.mktemp("concurrent"),
        train__epochs=3,
        train__device="cpu",
        data__image_shape=None,
    )
    make_data(root / "source", rows=5000, cols=8, seed=4)
    frame = pd.read_parquet(root / "source")
    frame.iloc[:2000].to_parquet(root / "sensors.parquet")
    wait_all(
        [
            start(
                "run",
                "--source",
                "sensors.parquet",
                "--label-col",
                "label",
                cwd=root,
                prefect_api=prefect_api,
            )
        ]
    )
    return root, frame


def test_four_scorings_at_once_all_complete(project, prefect_api):
    root, frame = project
    days = [f"day{i}" for i in range(4)]
    for i, day in enumerate(days):
        frame.iloc[2000 + 250 * i : 2250 + 250 * i].to_parquet(root / f"{day}.parquet")
    wait_all(
        [
            start(
                "score",
                "--source",
                f"{day}.parquet",
                "--dataset",
                "sensors",
                cwd=root,
                prefect_api=prefect_api,
            )
            for day in days
        ]
    )
    table = read_latents(root / "data/latents/sensors", days)
    assert table.groupby("batch").size().to_dict() == dict.fromkeys(days, 250)
    client = MlflowClient(tracking.default_uri(root))
    experiment = client.get_experiment_by_name("sensors-scoring")
    scored = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["aepipe.batch_id"] for r in scored) == days
    assert {r.info.status for r in scored} == {"FINISHED"}


def test_two_inbox_runs_at_once_score_every_file_once(project, prefect_api):
    root, frame = project
    inbox = root / "data/inbox/sensors"
    inbox.mkdir(parents=True)
    names = [f"2026-11-{day:02d}" for day in range(1, 7)]
    for i, name in enumerate(names):
        frame.iloc[3000 + 300 * i : 3300 + 300 * i].to_parquet(inbox / f"{name}.parquet")
    wait_all(
        [
            start("score", "--dataset", "sensors", cwd=root, prefect_api=prefect_api)
            for _ in range(2)
        ]
    )
    ledger = json.loads((root / "data/scored/sensors.json").read_text())
    assert sorted(entry["batch_id"] for entry in ledger.values()) == names
    client = MlflowClient(tracking.default_uri(root))
    experiment = client.get_experiment_by_name("sensors-scoring")
    batches = [
        r.data.tags["aepipe.batch_id"] for r in client.search_runs([experiment.experiment_id])
    ]
    assert sorted(b for b in batches if b.startswith("2026")) == names  # each file once
    table = read_latents(root / "data/latents/sensors", names)
    assert table.groupby("batch").size().to_dict() == dict.fromkeys(names, 300)
