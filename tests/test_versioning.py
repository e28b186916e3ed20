"""DVC versioning against a real git + DVC repository in a temporary folder, never mocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from aecore.errors import AepipeError
from aecore.export import read_metadata
from aecore.io import file_digest
from flows import tracking
from flows.train import train_autoencoder
from tests.conftest import REPO, write_project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
BIN = str(Path(sys.executable).parent)
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def sh(*command: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        message = f"{command} failed:\n{result.stdout}\n{result.stderr}"
        raise AssertionError(message)
    return result


def make_repo(root: Path, source: Path | None = None, **changes: object) -> Path:
    """A project as a user clones it: code, params.yaml, dvc.yaml, git and DVC initialised."""
    if source is not None:
        changes |= {
            "data__source": str(source),
            "data__dataset": "sensors",
            "data__label_col": None,
            "data__image_shape": None,
        }
    root.mkdir(exist_ok=True)
    write_project(root, **{"train__epochs": 8, **changes})
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "aecore", root / "aecore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    sh(*GIT, "init", "-q", cwd=root)
    sh(*GIT, "add", "-A", cwd=root)
    sh(*GIT, "commit", "-q", "-m", "project", cwd=root)
    return root


def sensor_csv(path: Path, seed: int) -> Path:
    generator = np.random.default_rng(seed)
    x = generator.normal(size=(300, 2)) @ generator.normal(size=(2, 6))
    pd.DataFrame(x, columns=[f"s{i}" for i in range(6)]).to_csv(path, index=False)
    return path


def lock_md5(root: Path, stage: str) -> str:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return lock["stages"][stage]["outs"][0]["md5"]


def runs_of(root: Path, dataset: str) -> list:
    client = MlflowClient(tracking.default_uri(root))
    experiment = client.get_experiment_by_name(dataset)
    return client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])


def test_dvc_repro_reruns_only_what_changed(tmp_path):
    root = make_repo(tmp_path)
    first = sh("dvc", "repro", cwd=root).stdout
    for stage in ("ingest", "normalize", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in first
    assert (root / "data/latents/digits/model=1/batch=train/part-0.parquet").exists()
    assert sh("dvc", "status", cwd=root).stdout.strip() == "Data and pipelines are up to date."
    again = sh("dvc", "repro", cwd=root).stdout
    assert "Running stage" not in again

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = sh("dvc", "repro", cwd=root).stdout
    ran = [
        s
        for s in ("ingest", "normalize", "train", "evaluate", "export")
        if f"Running stage '{s}'" in changed
    ]
    assert ran == ["train", "evaluate", "export"]

    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=root).stdout)
    shown = next(iter(metrics.values()))["data"]["data/reports/digits/metrics.json"]["data"]
    assert 0 < shown["recon_mse"] < shown["pca_recon_mse"] * 2
    sh("dvc", "plots", "show", "-o", str(tmp_path / "plots"), cwd=root)
    assert "Loss curves" in (tmp_path / "plots/index.html").read_text()

    runs = runs_of(root, "digits")  # every export stage left an MLflow run
    assert len(runs) == 2 and {r.data.tags["aepipe.runner"] for r in runs} == {"dvc"}
    assert runs[-1].data.params["train.epochs"] == "3"
    assert runs[-1].data.tags["dvc.latents_md5"] == exported(root)["md5"]
    assert runs[-1].data.tags["dvc.raw_md5"] == lock_md5(root, "ingest")
    # the first run's partition is still there: a retrain adds a model=<version> folder
    assert exported(root)["partition"] == "latents/digits/model=2/batch=train/part-0.parquet"
    assert (root / "data/latents/digits/model=1/batch=train/part-0.parquet").exists()


def exported(root: Path) -> dict:
    """The export stage's DVC output, checked against dvc.lock: the partition and its md5."""
    record = root / "data/reports/digits/export.json"
    assert file_digest(record) == lock_md5(root, "export")
    return json.loads(record.read_text())


def test_dvc_exp_run_is_compared_and_tracked(tmp_path):
    root = make_repo(tmp_path)
    sh("dvc", "repro", cwd=root)
    sh(*GIT, "add", "-A", cwd=root)
    sh(*GIT, "commit", "-q", "-m", "baseline", cwd=root)
    sh("dvc", "exp", "run", "-S", "model.kind=vae", cwd=root)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=root).stdout)
    kinds = []
    for entry in shown:
        for experiment in [entry, *(entry.get("experiments") or [])]:
            revisions = experiment.get("revs", [experiment])
            for rev in revisions:
                data = (rev.get("data") or {}).get("params", {}).get("params.yaml", {})
                if data:
                    kinds.append(data["data"]["model"]["kind"])
    default = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["kind"]
    assert {"vae", default} <= set(kinds)  # the experiment beside the baseline
    latest = runs_of(root, "digits")[-1]
    assert latest.data.params["model.kind"] == "vae"


def test_flow_run_leaves_dvc_clean_and_tags_its_data(tmp_path):
    root = make_repo(tmp_path)
    summary = train_autoencoder(root=str(root))
    assert summary["warnings"] == []
    assert sh("dvc", "status", cwd=root).stdout.strip() == "Data and pipelines are up to date."
    tags = MlflowClient(tracking.default_uri(root)).get_run(summary["run_id"]).data.tags
    assert tags["dvc.raw_md5"] == lock_md5(root, "ingest")
    assert tags["dvc.latents_md5"] == exported(root)["md5"]
    assert (
        tags["mlflow.source.git.commit"] == sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
    )
    assert tags["aepipe.dvc_pushed"] == "true"
    table = root / "data/latents/digits/model=1/batch=train/part-0.parquet"
    assert read_metadata(table)["data_version"] == f"md5:{tags['dvc.raw_md5']}"
    md5 = tags["dvc.latents_md5"]
    assert (root / "dvc-remote/files/md5" / md5[:2] / md5[2:]).exists()  # pushed
    assert sh("git", "status", "--porcelain", "--", "data", cwd=root).stdout.count("parquet") == 0


def test_restore_brings_back_a_runs_exact_bytes(tmp_path):
    source = sensor_csv(tmp_path / "sensors.csv", seed=1)
    root = make_repo(tmp_path / "project", source=source)
    first = train_autoencoder(root=str(root))
    raw, table = (
        root / "data/raw/sensors/part-00000-0000.parquet",
        root / "data/latents/sensors/model=1/batch=train/part-0.parquet",
    )
    before = raw.read_bytes(), table.read_bytes()
    assert sorted(p.name for p in raw.parent.iterdir()) == [raw.name]
    sensor_csv(source, seed=2)  # the source changes; the next run reads other data
    second = train_autoencoder(root=str(root))
    assert raw.read_bytes() != before[0]
    assert table.read_bytes() == before[1]  # a retrain never replaces another model's partition
    table.unlink()
    shutil.rmtree(root / ".dvc/cache")  # only the remote has the first run's data now
    result = sh(str(Path(BIN) / "aepipe"), "data", "restore", first["run_id"], cwd=root)
    assert "restored data/raw/sensors\n" in result.stdout
    assert (raw.read_bytes(), table.read_bytes()) == before
    # the second run's data were cached before being replaced: nothing was lost
    second_tags = MlflowClient(tracking.default_uri(root)).get_run(second["run_id"]).data.tags
    sh(str(Path(BIN) / "aepipe"), "data", "restore", second["run_id"], cwd=root)
    assert file_digest(Path(second["latent_table"])) == second_tags["dvc.latents_md5"]
    bad = sh(str(Path(BIN) / "aepipe"), "data", "restore", "no-such-run", cwd=root, check=False)
    assert bad.returncode == 2 and "MLflow run 'no-such-run' not found" in bad.stderr


@pytest.mark.parametrize("remote", ["missing", "unreachable"])
def test_remote_problems_warn_and_keep_local_data(tmp_path, remote):
    root = make_repo(tmp_path)
    if remote == "missing":
        sh("dvc", "remote", "remove", "local", cwd=root)
    else:
        sh("dvc", "remote", "modify", "local", "url", "http://127.0.0.1:9/nowhere", cwd=root)
    summary = train_autoencoder(root=str(root))
    assert any("not pushed to the DVC remote" in w for w in summary["warnings"])
    tags = MlflowClient(tracking.default_uri(root)).get_run(summary["run_id"]).data.tags
    assert tags["aepipe.dvc_pushed"] == "false"
    md5 = tags["dvc.latents_md5"]
    assert (root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists()
    assert sh("dvc", "status", cwd=root).stdout.strip() == "Data and pipelines are up to date."


def test_missing_git_and_dvc_are_named(tmp_path):
    write_project(tmp_path, train__epochs=3)
    summary = train_autoencoder(root=str(tmp_path))
    warnings = " ".join(summary["warnings"])
    assert "not a git repository with a commit; run `git init`" in warnings
    assert "not a DVC repository; run `dvc init`" in warnings
    assert Path(summary["latent_table"]).exists()  # the run itself succeeded


def test_dirty_git_is_named(tmp_path):
    root = make_repo(tmp_path)
    train_autoencoder(root=str(root))
    sh(*GIT, "add", "-A", cwd=root)
    sh(*GIT, "commit", "-q", "-m", "results", cwd=root)
    # a rerun rewrites tracked results (dvc.lock, metrics): not uncommitted code
    rerun = train_autoencoder(root=str(root), epochs=3)
    assert sh("git", "status", "--porcelain", "data/reports", cwd=root).stdout.strip()
    assert rerun["warnings"] == []
    (root / "aecore" / "io.py").write_text((root / "aecore" / "io.py").read_text() + "\n# edit\n")
    summary = train_autoencoder(root=str(root))
    assert any("uncommitted changes" in w for w in summary["warnings"])
    tags = MlflowClient(tracking.default_uri(root)).get_run(summary["run_id"]).data.tags
    assert tags["aepipe.git_dirty"] == "true"


@pytest.mark.parametrize(
    "relative",
    ["data/models/digits/model.pt", "data/processed/digits/normalizer.json"],
)
def test_hand_edited_output_is_not_overwritten(tmp_path, relative):
    root = make_repo(tmp_path)
    train_autoencoder(root=str(root))
    edited = root / relative
    edited.write_bytes(edited.read_bytes()[:-2] + b"  ")  # an edit of any kind
    before = edited.read_bytes()
    state = train_autoencoder(root=str(root), return_state=True)
    assert state.is_failed()
    with pytest.raises(AepipeError, match=f"{relative}: changed since the last run.*`dvc commit`"):
        state.result()
    assert edited.read_bytes() == before
