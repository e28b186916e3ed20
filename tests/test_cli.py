"""The `aepipe` console script, run as a user runs it: a subprocess in a project folder."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import cli_env, write_project

AEPIPE = Path(sys.executable).with_name("aepipe")


def aepipe(
    *args: str, cwd: Path, timeout: int = 240, api: str | None = None
) -> subprocess.CompletedProcess:
    """``aepipe args`` in ``cwd``: against the Prefect server ``api``, or a temporary one."""
    return subprocess.run(
        [str(AEPIPE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(api),
    )


def test_help_is_instant_and_lists_commands(project):
    start = time.perf_counter()
    result = aepipe("--help", cwd=project)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("run", "ui"))
    assert time.perf_counter() - start < 3  # no prefect, mlflow or torch behind --help


def test_version_short_help_and_the_defaults_of_params_yaml(project):
    from importlib.metadata import version

    assert aepipe("--version", cwd=project).stdout.strip() == f"aepipe {version('aepipe')}"
    assert "Usage: aepipe" in aepipe("-h", cwd=project).stdout
    write_project(project, train__epochs=7)
    wide = {**cli_env(), "COLUMNS": "300"}  # one option per line: no wrapped values
    shown = subprocess.run(
        [str(AEPIPE), "run", "-h"], cwd=project, capture_output=True, text=True, env=wide
    ).stdout
    for text in ("[params.yaml: 7]", "[params.yaml: denoising]", "[params.yaml: auto]"):
        assert text in shown, text


def test_ui_on_a_busy_port_fails(project):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = aepipe("ui", "--port", str(port), cwd=project)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: port {port} on 127.0.0.1 is in use; choose another with --port"
    )


@pytest.mark.slow
def test_run_on_a_csv_prints_the_summary(project, planted, prefect_api):
    """At a terminal: the summary, and an epoch bar that ends before the next log line."""
    code, lines = in_terminal(
        "run",
        "--source",
        str(planted),
        "--label-col",
        "is_anomaly_label",
        "--latent-dim",
        "3",
        "--epochs",
        "20",
        "--device",
        "cpu",
        "--kind",
        "vae",
        "--set",
        "evaluate.kl_weight=0.5",  # the VAE's score adds its KL divergence
        cwd=project,
    )
    output = "\n".join(lines)
    assert code == 0, output[-3000:]
    finished = [i for i, line in enumerate(lines) if "Task run 'train' - Finished" in line]
    assert finished, output[-3000:]
    assert "/20 epochs" in lines[finished[0] - 1]  # the bar's last state, on its own line
    assert "epochs" not in lines[finished[0]].split("Task run")[0]
    outcome = [line for line in lines if "Flow run" in line and " - training " in line]
    assert len(outcome) == 1 and (
        "stopped early at epoch" in outcome[0] or "ran all 20" in outcome[0]
    )
    for text in (
        "v1 is champion: the first model of planted-autoencoder",
        "table size",
        "as Parquet:",
        "rows",
        "600 (12 features)",
        "latent dim",
        "vs PCA",
        "AUROC",
        "MLflow run",
        "aepipe ui",
        "orchestration",
    ):
        assert text in output, text
    table = pd.read_parquet(project / "data/latents/planted/model=1/batch=train/part-0.parquet")
    assert len(table) == 600 and [c for c in table if c.startswith("z")] == ["z0", "z1", "z2"]
    # scoring the same rows with the registered model gives the same scores, KL included
    scored = aepipe(
        "score", "--source", str(planted), "--batch-id", "again", cwd=project, api=prefect_api
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    again = pd.read_parquet(project / "data/latents/planted/model=1/batch=again/part-0.parquet")
    np.testing.assert_allclose(again["anomaly_score"], table["anomaly_score"], rtol=1e-5)
    reference = json.loads((project / "data/reports/planted/reference.json").read_text())
    fused = reference["fused"]  # the views: two per latent width, the tails, the KL
    assert fused["kl"] and len(fused["surprises"]) == 2 * len(fused["prefixes"]) + 2
    # the champion over HTTP: the same latents and scores as the latent table
    rows = pd.read_csv(planted).drop(columns=["is_anomaly_label"]).head(20)
    served = serve(project, rows)
    np.testing.assert_allclose(
        served[["z0", "z1", "z2"]], table[["z0", "z1", "z2"]][:20], rtol=1e-4
    )
    np.testing.assert_allclose(served["anomaly_score"], table["anomaly_score"][:20], rtol=1e-4)
    assert served["is_anomaly"].tolist() == table["is_anomaly"][:20].tolist()


def serve(project: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Start `aepipe serve-model` as a user would, POST ``rows``, stop it."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**cli_env(), "PATH": "/usr/bin:/bin"}  # not the venv's: the command finds its own
    server = subprocess.Popen(
        [str(AEPIPE), "serve-model", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        body = json.dumps({"dataframe_records": rows.to_dict(orient="records")}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    return pd.DataFrame(json.loads(response.read())["predictions"])
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the model server did not answer"
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(project):
    result = aepipe("run", "--source", "absent.csv", cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: absent.csv: no such file or directory"
    assert "Traceback" not in result.stderr
    assert not (project / "data/latents").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.epochs=many"], "train.epochs: expected int, got 'many'"),
        (["--set", "model.kind=lstm"], "model.kind = 'lstm' is invalid"),
        (["--dataset", "../outside"], "data.dataset = '../outside' is invalid"),
        (["--params", "other.yaml"], "other.yaml: parameters file not found"),
        (["--latent-dim", "0"], "model.latent_dim = 0 is invalid"),
        (
            ["--set", 'train.seed=!!python/object/apply:os.system ["touch pwned"]'],
            "--set train.seed: not a plain YAML value",
        ),
    ],
)
def test_bad_parameters_fail_before_any_work(project, args, message):
    result = aepipe("run", *args, cwd=project, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "data").exists() and not (project / "mlflow").exists()
    assert not (project / "pwned").exists()


def test_score_defaults_to_the_dataset_trained_last(tmp_path):

    from aecore.layout import trained_last

    assert trained_last(tmp_path) is None
    for age, name in ((100, "older"), (0, "newer")):
        weights = tmp_path / "data" / "models" / name / "model.pt"
        weights.parent.mkdir(parents=True)
        weights.write_bytes(b"w")
        os.utime(weights, (weights.stat().st_mtime - age,) * 2)
    assert trained_last(tmp_path) == "newer"


def test_the_temporary_server_runs_what_prefects_own_would():
    """flows/server.py starts Prefect's API the way Prefect does: a release that changes
    the command or its private settings fails here, not in a user's run."""
    import ast
    import inspect
    import textwrap

    from prefect.server.api.server import SubprocessASGIServer

    from flows import server

    source = textwrap.dedent(inspect.getsource(SubprocessASGIServer._run_uvicorn_command))
    tree = ast.parse(source)
    env = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "server_env"
    )
    assert env == server.SERVER_ENV
    args = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.keyword) and node.arg == "args"
    )
    literals = [element.value for element in args.elts if isinstance(element, ast.Constant)]
    assert literals[:2] == ["-m", "uvicorn"]
    ours = server.uvicorn_arguments(Path("APP"), 4321)
    assert [a for a in ours if a not in ("APP", "4321")] == literals[2:]


@pytest.mark.slow
def test_ui_stops_with_every_process_it_started(project):
    import signal
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen([str(AEPIPE), "ui", "--port", str(port)], cwd=project, env=cli_env())
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                assert page.status == 200
                break
        except OSError:
            assert ui.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
    pattern = ["pgrep", "-f", "--", f"mlflow ui .*--port {port}"]
    [server] = subprocess.run(pattern, capture_output=True, text=True).stdout.split()
    session = os.getsid(int(server))
    assert session != os.getsid(0)  # the server and its workers: a session of their own
    assert len(in_session(session)) >= 2  # the server and the web workers it started
    ui.send_signal(signal.SIGTERM)
    assert ui.wait(timeout=30) == 0
    time.sleep(1)
    assert in_session(session) == [], "a process of the UI outlived it"


def in_session(session: int) -> list[int]:
    """The live processes of a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":  # sid; not a zombie
                found.append(int(entry.name))
    return found


def in_terminal(*args: str, cwd: Path) -> tuple[int, list[str]]:
    """Run aepipe in a pseudo-terminal, as a user at a shell; the lines as drawn."""
    import pty

    controller, terminal = pty.openpty()
    env = {**cli_env(), "COLUMNS": "120", "TERM": "xterm"}
    run = subprocess.Popen(
        [str(AEPIPE), *args], cwd=cwd, stdin=terminal, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the run ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = run.wait(timeout=240)
    text = b"".join(chunks).decode(errors="replace")
    return code, [line.rstrip("\r").split("\r")[-1] for line in text.split("\n")]


def test_an_error_exit_never_waits_on_a_thread_left_running(tmp_path):
    """A mistake exits at once with status 2, whatever native or Python threads still run.

    Arrow's CSV read-ahead from a file that failed can still be running when the command
    ends; tearing the interpreter down around such threads aborted the process now and
    then. A thread that never ends stands for them: the exit must not wait on it.
    """
    script = (
        "import sys, threading\n"
        "threading.Thread(target=threading.Event().wait).start()  # never ends\n"
        "sys.argv = ['aepipe', 'run', '--no-such-option']\n"
        "from flows.cli import main\n"
        "main()\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env() | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 2, done.stderr
    assert "No such option" in done.stderr
    assert time.perf_counter() - start < 30


def test_the_summary_says_when_pca_reconstructs_exactly(capsys):
    """One input column and one latent: PCA's error is 0, and the ratio is not a number."""
    from flows.cli import print_summary

    metrics = {
        "rows": 1000,
        "features": 1,
        "latent_dim": 1,
        "recon_mse": 0.0226,
        "pca_recon_mse": 0.0,
        "recon_mse_vs_pca": math.inf,
        "threshold": 6.6,
        "anomaly_rate": 0.005,
        "compression_ratio": 0.65,
        "latent_bytes": 15600,
    }
    summary = {
        "dataset": "one",
        "metrics": metrics,
        "latent_table": "data/latents/one",
        "champion": True,
        "model_version": 1,
        "champion_reason": "v1 is champion",
        "run_id": "abc",
        "stage_seconds": {"train": 1.0},
    }
    print_summary(summary, wall_s=2.0)
    shown = capsys.readouterr().out
    assert "PCA exact: k >= inputs" in shown and "inf" not in shown
