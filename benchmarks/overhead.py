"""The fixed cost of orchestration: wall time of `aepipe run` minus the time in its stages.

Runs `aepipe run` on digits twice in a fresh git + DVC project, each as a whole process
(the first also creates Prefect's and MLflow's SQLite databases). Versioning the data
(DVC cache, dvc.lock, push to the local remote) counts as overhead. The stage times come
from the run's MLflow metrics (`seconds_<stage>`). Target: overhead <= 10 s on the
second run. Prints a table; exits 1 when the target is missed.

    .venv/bin/python benchmarks/overhead.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 10.0
STAGES = ("ingest", "normalize", "train", "evaluate", "export")
REPO = Path(__file__).resolve().parents[1]
AEPIPE = Path(sys.executable).with_name("aepipe")


def timed_run(project: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(AEPIPE), "run"], cwd=project, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def stage_seconds(project: Path) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    run = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]
    return {stage: run.data.metrics[f"seconds_{stage}"] for stage in STAGES}


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        for name in ("params.yaml", "dvc.yaml", ".gitignore", ".dvcignore"):
            shutil.copy(REPO / name, project / name)
        shutil.copytree(REPO / "aecore", project / "aecore")
        shutil.copytree(
            REPO / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp")
        )
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        subprocess.run([*git, "init", "-q"], cwd=project, check=True)
        subprocess.run([*git, "add", "-A"], cwd=project, check=True)
        subprocess.run([*git, "commit", "-q", "-m", "bench"], cwd=project, check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env |= {
            "PREFECT_HOME": str(project / ".prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import prefect, mlflow, torch"], check=True)
        imports = time.perf_counter() - start
        rows = []
        for label in ("first (creates databases)", "second"):
            wall = timed_run(project, env)
            stages = stage_seconds(project)
            rows.append((label, wall, stages))
    print(f"baseline: python -c 'import prefect, mlflow, torch' takes {imports:.1f} s")
    print(f"{'run':<26} {'wall s':>7} {'stages s':>8} {'overhead s':>10}   stage split")
    for label, wall, stages in rows:
        inside = sum(stages.values())
        split = "  ".join(f"{k} {v:.1f}" for k, v in stages.items())
        print(f"{label:<26} {wall:>7.1f} {inside:>8.1f} {wall - inside:>10.1f}   {split}")
    overhead = rows[-1][1] - sum(rows[-1][2].values())
    print(f"second-run overhead {overhead:.1f} s (target <= {TARGET_S:.0f} s)")
    return 0 if overhead <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
