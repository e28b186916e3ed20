"""A password planted in a source URL never reaches a store, a log or a traceback.

The source is served over HTTP with Basic auth by a real server on 127.0.0.1; the run is
the `aepipe` console script in a git + DVC project; then every store is searched.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import cli_env
from tests.test_cli import AEPIPE
from tests.test_versioning import make_repo

pytestmark = pytest.mark.slow
PASSWORD = "p@ss-7731-SECRET"  # an "@" inside, as real passwords have


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """``http://127.0.0.1:<port>``: data.csv for user:PASSWORD, 403 for anyone else."""
    generator = np.random.default_rng(0)
    rows = generator.normal(size=(400, 2)) @ generator.normal(size=(2, 6))
    body = pd.DataFrame(rows, columns=[f"s{i}" for i in range(6)]).to_csv(index=False).encode()
    expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def answer(self, send_body: bool) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_error(403, "Forbidden")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self.answer(send_body=True)

        def do_HEAD(self) -> None:
            self.answer(send_body=False)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def aepipe(*args: str, cwd: Path, prefect_home: Path) -> subprocess.CompletedProcess:
    env = cli_env(drop="PREFECT_") | {"PREFECT_HOME": str(prefect_home)}  # its database here
    return subprocess.run(
        [str(AEPIPE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def holding(folder: Path, secret: str) -> list[Path]:
    """Every file under ``folder`` whose bytes hold ``secret``."""
    needle = secret.encode()
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_password_in_the_source_url_is_stored_nowhere(tmp_path, server):
    root = make_repo(tmp_path / "project", data__image_shape=None, data__label_col=None)
    home = tmp_path / "prefect-home"
    source = f"http://user:{PASSWORD}@{server}/data.csv"
    result = aepipe("run", "--source", source, "--epochs", "3", cwd=root, prefect_home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "data/latents/data/_current").exists()
    scored = aepipe("score", "--source", source, "--batch-id", "again", cwd=root, prefect_home=home)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert home.joinpath("prefect.db").exists() or list(home.rglob("*.db"))
    for secret in (PASSWORD, "ss-7731"):  # the whole password, and its tail after the "@"
        assert secret not in result.stdout + result.stderr + scored.stdout + scored.stderr
        for folder in (home, root / "mlflow", root / "data", root / ".dvc", root / ".git"):
            assert holding(folder, secret) == [], folder
        assert not (root / "dvc.lock").exists() or secret not in (root / "dvc.lock").read_text()


def test_a_refused_request_is_one_line_without_headers(tmp_path, server):
    root = make_repo(tmp_path / "project")
    home = tmp_path / "prefect-home"
    source = f"http://user:wrong-{PASSWORD}@{server}/data.csv"
    result = aepipe("run", "--source", source, cwd=root, prefect_home=home)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: http://***@127.0.0.1:") and "403" in line
    for text in (PASSWORD, "Authorization", "Traceback"):
        assert text not in result.stdout + result.stderr
    assert not (root / "data/raw").exists() and not (root / "mlflow/mlflow.db").exists()


def test_a_password_written_into_params_yaml_is_refused(tmp_path, server):
    root = make_repo(tmp_path / "project", data__source=f"http://user:{PASSWORD}@{server}/d.csv")
    result = aepipe("run", cwd=root, prefect_home=tmp_path / "home")
    assert result.returncode == 2
    assert "data.source holds a password" in result.stderr and PASSWORD not in result.stderr


def test_a_password_named_by_an_environment_variable(tmp_path, server, monkeypatch):
    """params.yaml says ${NAME}: dvc.lock, MLflow and Prefect keep the name, not the value."""
    root = make_repo(
        tmp_path / "project",
        data__source=f"http://user:${{AEPIPE_TEST_PASSWORD}}@{server}/data.csv",
        data__dataset="data",
        data__label_col=None,
        data__image_shape=None,
        train__epochs=2,
    )
    monkeypatch.setenv("AEPIPE_TEST_PASSWORD", PASSWORD)
    result = aepipe("run", cwd=root, prefect_home=tmp_path / "home")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "${AEPIPE_TEST_PASSWORD}" in (root / "dvc.lock").read_text()  # params.yaml's run
    for folder in (tmp_path / "home", root / "mlflow", root / "data", root / ".dvc"):
        assert holding(folder, PASSWORD) == [], folder
    assert PASSWORD not in (root / "dvc.lock").read_text()
