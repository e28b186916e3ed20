"""Bad input from a new user, as the `aepipe` command sees it: tests/data/bad/cases.yaml.

Every case either does what README documents, checked on what it wrote, or fails with
exit status 2 and one line `error: ...` naming the file and the column or row. Either
way, nothing else under data/ and in the model registry changes; a failing `aepipe run`
fails in seconds, before any server starts, and leaves no trace in MLflow.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import cli_env

pytestmark = pytest.mark.slow

AEPIPE = Path(sys.executable).with_name("aepipe")
BAD = Path(__file__).with_name("data") / "bad"
FAIL_FAST_S = 5.0


@dataclass(frozen=True)
class Project:
    """The module's project folder, with a model trained on good.csv (dataset `good`)."""

    root: Path
    trained: frozenset[str]  # the files under data/ that training `good` wrote
    api_url: str  # the module's Prefect server

    def latents(self, dataset: str, batch: str, version: int = 1) -> Path:
        return self.root / f"data/latents/{dataset}/model={version}/batch={batch}/part-0.parquet"


def aepipe(*args: str, cwd: Path, api_url: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the console script against the module's Prefect server and the local MLflow."""
    return subprocess.run(
        [str(AEPIPE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(api_url),
    )


# -- snapshots -------------------------------------------------------------------------
# The project is a git + DVC repository: an error case leaves DVC's cache and dvc.lock
# as they were, as well as data/, the registry and MLflow's runs.


def data_files(root: Path) -> dict[str, str]:
    """Every file under data/: its path relative to the project, and its SHA-256."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((root / "data").rglob("*"))
        if path.is_file()
    }


def mlflow_client(root: Path) -> Any:
    """A client of the project's MLflow store, or ``None`` before it exists."""
    from mlflow.tracking import MlflowClient

    db = root / "mlflow" / "mlflow.db"
    return MlflowClient(f"sqlite:///{db}") if db.exists() else None


def registry(root: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Registered models: name -> (its versions, its aliases with their versions)."""
    client = mlflow_client(root)
    if client is None:
        return {}
    return {
        model.name: (
            sorted(str(v.version) for v in client.search_model_versions(f"name='{model.name}'")),
            {alias: str(version) for alias, version in sorted(model.aliases.items())},
        )
        for model in client.search_registered_models()
    }


def dvc_state(root: Path) -> tuple[list[str], str]:
    """DVC's cache (every object's path) and dvc.lock's text."""
    cache = sorted(p.relative_to(root).as_posix() for p in (root / ".dvc/cache").rglob("*"))
    lock = root / "dvc.lock"
    return cache, lock.read_text() if lock.exists() else ""


def experiments(root: Path) -> dict[str, int]:
    """MLflow experiments: name -> number of runs."""
    from mlflow.entities import ViewType

    client = mlflow_client(root)
    if client is None:
        return {}
    return {
        experiment.name: len(
            client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
        )
        for experiment in client.search_experiments(view_type=ViewType.ALL)
    }


# -- checks of the cases that succeed (`expect: {check: <name>}`) -------------------------


@dataclass
class Outcome:
    """What a case did: its result, the files it added under data/, the registry around it."""

    result: subprocess.CompletedProcess
    added: set[str]
    registry_before: dict
    registry_after: dict

    def warned(self, pattern: str) -> bool:
        """Whether a `warning:` line of the output matches ``pattern``.

        Line breaks count as spaces: rich wraps the printed warnings at 80 columns.
        """
        output = " ".join(f"{self.result.stdout}\n{self.result.stderr}".split())
        return any(re.search(pattern, warning) for warning in output.split("warning:")[1:])


def trained_new_dataset(project: Project, outcome: Outcome, dataset: str) -> pd.DataFrame:
    """Check that a run wrote what training `good` wrote, for ``dataset``; return its table."""

    def renamed(path: str) -> str:
        names = {"good": dataset, "good.json": f"{dataset}.json"}
        return "/".join(names.get(part, part) for part in path.split("/"))

    expected = {renamed(path) for path in project.trained}
    assert outcome.added == expected, (
        f"missing {sorted(expected - outcome.added)}, unexpected {sorted(outcome.added - expected)}"
    )
    name = f"{dataset}-autoencoder"
    assert outcome.registry_after == {**outcome.registry_before, name: (["1"], {"champion": "1"})}
    return pd.read_parquet(project.latents(dataset, "train"))


def scored_batch(project: Project, outcome: Outcome, batch: str) -> pd.DataFrame:
    """Check that scoring added the batch's partition and nothing else; return it."""
    partition = project.latents("good", batch)
    assert outcome.added == {partition.relative_to(project.root).as_posix()}
    assert outcome.registry_after == outcome.registry_before
    table = pd.read_parquet(partition)
    train = pd.read_parquet(project.latents("good", "train"))
    assert list(table.columns) == list(train.columns)
    return table


def all_finite(scores: pd.Series) -> bool:
    return bool(np.isfinite(scores.to_numpy(dtype=float)).all())


def check_nan_only(project: Project, outcome: Outcome) -> None:
    table = trained_new_dataset(project, outcome, "nan_only")
    assert len(table) == 40 and all_finite(table["anomaly_score"])
    blamed = sum("humidity" in list(top) for top in table["top_features"])
    assert blamed == 0, f"the empty column 'humidity' is a top feature of {blamed} of 40 rows"
    assert outcome.warned(r"\bhumidity\b"), "no warning names the empty column 'humidity'"


def check_constant(project: Project, outcome: Outcome) -> None:
    table = trained_new_dataset(project, outcome, "constant")
    assert len(table) == 40 and all_finite(table["anomaly_score"])
    assert table["anomaly_score"].nunique() == 1, "identical rows, different scores"
    assert not table["is_anomaly"].any(), f"{table['is_anomaly'].sum()} identical rows flagged"


def check_unicode(project: Project, outcome: Outcome) -> None:
    table = trained_new_dataset(project, outcome, "unicode_cols")
    columns = {"température °C", "Größe (cm)", "列3", "km/h", "région, pays"}
    assert set(pd.read_csv(BAD / "unicode_cols.csv", nrows=0).columns) == columns
    assert len(table) == 40 and all_finite(table["anomaly_score"])
    named = {name for top in table["top_features"] for name in top}
    assert named <= columns, f"top_features names {sorted(named - columns)}"


def check_extra_column(project: Project, outcome: Outcome) -> None:
    table = scored_batch(project, outcome, "extra")
    assert len(table) == 20 and all_finite(table["anomaly_score"])
    assert outcome.warned(r"\boperator\b"), "no warning names the extra column 'operator'"


def check_infinite_rows(project: Project, outcome: Outcome) -> None:
    table = scored_batch(project, outcome, "inf").set_index("row_id")
    assert len(table) == 20
    unscored = table.index.isin([4, 15])  # a = inf and a = -inf
    assert table.loc[unscored, "anomaly_score"].isna().all()
    assert table.loc[unscored, "is_anomaly"].all()
    assert all_finite(table.loc[~unscored, "anomaly_score"])
    assert outcome.warned(r"'a'.*\b2\b|\b2\b.*'a'"), "no warning names column 'a' and 2 rows"


CHECKS: dict[str, Callable[[Project, Outcome], None]] = {
    check.__name__: check
    for check in (
        check_nan_only,
        check_constant,
        check_unicode,
        check_extra_column,
        check_infinite_rows,
    )
}


# -- the cases -----------------------------------------------------------------------------


def load_cases() -> list[dict]:
    """The manifest, checked: unique ids, a known command, one expectation each."""
    cases = yaml.safe_load((BAD / "cases.yaml").read_text(encoding="utf-8"))
    ids = [case["id"] for case in cases]
    assert len(ids) == len(set(ids)), "case ids repeat"
    for case in cases:
        assert case["command"] in ("run", "score"), case["id"]
        expect = case["expect"]
        assert ("error" in expect) != ("ok" in expect), case["id"]
        if "error" in expect:
            re.compile(expect["error"])
        else:
            assert expect["check"] in CHECKS, case["id"]
    return cases


CASES = load_cases()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Project:
    """A git + DVC project with a model trained once on good.csv (dataset `good`)."""
    from tests.test_versioning import make_repo

    root = make_repo(tmp_path_factory.mktemp("bad-input") / "project", train__epochs=3)
    result = aepipe(
        "run", "--source", str(BAD / "good.csv"), "--device", "cpu", cwd=root, api_url=prefect_api
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert registry(root) == {"good-autoencoder": (["1"], {"champion": "1"})}
    return Project(root, frozenset(data_files(root)), prefect_api)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input(project: Project, case: dict) -> None:
    root = project.root
    args = [arg.replace("{file}", str(BAD / case["file"])) for arg in case["args"]]
    files, models, runs = data_files(root), registry(root), experiments(root)
    versions = dvc_state(root)

    start = time.perf_counter()
    result = aepipe(case["command"], *args, cwd=root, api_url=project.api_url)
    seconds = time.perf_counter() - start

    problems = []  # every broken promise of the case, not only the first
    for name, stream in (("stdout", result.stdout), ("stderr", result.stderr)):
        if "Traceback" in stream:
            problems.append(f"a traceback in {name}")
    after = data_files(root)
    changed = sorted(p for p in files if after.get(p) != files[p])
    added = set(after) - set(files)
    models_after = registry(root)
    expect = case["expect"]
    if "error" in expect:
        lines = result.stderr.strip().splitlines()
        if result.returncode != 2:
            problems.append(f"exit status {result.returncode}, not 2")
        said = [line for line in lines if "error" in line.lower()]
        if case["command"] == "run" and len(lines) != 1:
            problems.append(f"stderr is {len(lines)} lines, not one line 'error: ...'")
        if len(said) != 1 or not said[0].startswith("error: "):
            # scoring checks the batch against the model inside its flow: Prefect's two
            # lines that the flow run began may come first, but the error is said once
            problems.append(f"the error is said {len(said)} times, not once as 'error: ...'")
        error = next((line for line in reversed(lines) if line.startswith("error: ")), "")
        if not re.search(expect["error"], error):
            problems.append(f"the error line {error!r} does not match {expect['error']!r}")
        if result.stdout.strip():
            problems.append("output on stdout")
        if changed or added:
            problems.append(f"data/ changed: {changed + sorted(added)}")
        if models_after != models:
            problems.append(f"the registry changed: {models} -> {models_after}")
        if dvc_state(root) != versions:
            problems.append("DVC's cache or dvc.lock changed")
        if case["command"] == "run":
            if seconds >= FAIL_FAST_S:
                problems.append(f"failed after {seconds:.1f} s, not before any server started")
            runs_after = experiments(root)
            if runs_after != runs:
                problems.append(f"MLflow experiments and runs changed: {runs} -> {runs_after}")
    else:
        if result.returncode != 0:
            problems.append(f"exit status {result.returncode}, not 0")
        elif changed:
            problems.append(f"files under data/ changed: {changed}")
        else:
            outcome = Outcome(result, added, models, models_after)
            try:
                CHECKS[expect["check"]](project, outcome)
            except AssertionError as failure:
                problems.append(f"{expect['check']} failed: {failure}")
    if problems:
        pytest.fail(
            f"{case['id']}: {'; '.join(problems)}\n--- stdout (tail)\n{result.stdout[-1500:]}\n"
            f"--- stderr (tail)\n{result.stderr[-2500:]}",
            pytrace=False,
        )
