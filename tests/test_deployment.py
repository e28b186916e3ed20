"""A real deployment: `prefect server start`, `aepipe serve`, `prefect deployment run --watch`."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aecore.synthetic import make_data
from flows.server import free_port
from tests.conftest import REPO, write_project

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def deployment_exists(api: str, name: str) -> bool:
    """Whether the server at ``api`` holds the deployment ``flow/deployment``."""
    try:
        with urllib.request.urlopen(f"{api}/deployments/name/{name}", timeout=2) as response:
            return response.status == 200
    except OSError:  # urllib's HTTPError (404) included
        return False


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    running = [p for p in started if p.poll() is None]
    for process in running:  # stop everything this test started, even when it failed
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 3  # the test is over: no need to wait for a clean exit
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_prefect_deployment_run_scores_a_batch(tmp_path, processes):
    root = tmp_path / "project"
    root.mkdir()
    write_project(root, train__epochs=5)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PATH": f"{BIN}{os.pathsep}{env['PATH']}",
    }
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed with the process
    processes.append(
        subprocess.Popen(
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-ui",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    wait_for(lambda: healthy(api), 90, "prefect server")

    make_data(root / "incoming", rows=3000, cols=8, seed=2)
    frame = pd.read_parquet(root / "incoming")
    frame.iloc[:2500].to_parquet(root / "plant.parquet")
    frame.iloc[2500:].to_parquet(root / "today.parquet")
    trained = subprocess.run(
        [str(BIN / "aepipe"), "run", "--source", "plant.parquet"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]

    serve_log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    processes.append(
        subprocess.Popen(
            [str(BIN / "aepipe"), "serve"],
            cwd=root,
            env=env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    wait_for(lambda: deployment_exists(api, "score-batch/nightly"), 90, "the served deployments")
    assert deployment_exists(api, "train-autoencoder/weekly")

    run = subprocess.run(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            "score-batch/nightly",
            "-p",
            f"source={root / 'today.parquet'}",
            "-p",
            "dataset=plant",
            "--watch",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Completed" in run.stdout
    partition = root / "data/latents/plant/model=1/batch=today/part-0.parquet"
    assert len(pd.read_parquet(partition)) == 500


def test_prefect_yaml_matches_params():
    deployments = {
        d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }
    params = yaml.safe_load((REPO / "params.yaml").read_text())["schedule"]
    assert deployments["weekly"]["schedules"][0]["cron"] == params["train_cron"]
    assert deployments["nightly"]["schedules"][0]["cron"] == params["score_cron"]
    assert deployments["weekly"]["entrypoint"] == "flows/train.py:train_autoencoder"
    assert deployments["nightly"]["entrypoint"] == "flows/score.py:score_batches"
