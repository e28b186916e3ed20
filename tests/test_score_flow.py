"""The score-batch flow against Prefect's test server and a SQLite MLflow store."""

import datetime
import json
import time

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)

from aecore.errors import AepipeError
from aecore.export import read_latents
from aecore.synthetic import make_data
from flows import tracking
from flows.score import score_batches
from flows.train import train_autoencoder
from tests.conftest import write_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_server):
    root = write_project(tmp_path_factory.mktemp("scoring"), train__epochs=25)
    make_data(root / "incoming", rows=4000, cols=10, anomaly_rate=0.02, seed=3)
    frame = pd.read_parquet(root / "incoming")
    frame.iloc[:3000].to_parquet(root / "sensors.parquet")
    summary = train_autoencoder(source=str(root / "sensors.parquet"), root=str(root))
    return root, frame, summary


def test_scored_batch_is_tracked_against_its_model(trained):
    root, frame, training = trained
    frame.iloc[3000:].to_csv(root / "day1.csv", index=False)
    [result] = score_batches(source=str(root / "day1.csv"), dataset="sensors", root=str(root))
    assert result["batch_id"] == "day1"
    table = read_latents(root / "data/latents/sensors", ["day1"])
    assert len(table) == 1000 and table["row_id"].tolist() == list(range(1000))
    client = MlflowClient(tracking.default_uri(root))
    run = client.get_run(result["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "sensors-scoring"
    metrics = run.data.metrics
    assert metrics["rows"] == 1000
    assert metrics["anomaly_rate"] == pytest.approx(table["is_anomaly"].mean())
    assert metrics["recon_error_mean"] == pytest.approx(table["recon_error"].mean(), rel=1e-5)
    assert {"recon_error_p99", "drift_ks", "latent_mean_shift"} <= set(metrics)
    tags = run.data.tags
    assert tags["aepipe.model_version"] == training["model_version"]
    assert tags["aepipe.model_uri"] == f"models:/sensors-autoencoder/{training['model_version']}"
    assert tags["aepipe.training_run_id"] == training["run_id"]
    assert "aepipe.drift_warning" not in tags
    from aecore.export import read_metadata

    scored = read_metadata(root / "data/latents/sensors/model=1/batch=day1/part-0.parquet")
    trained_meta = read_metadata(root / "data/latents/sensors/model=1/batch=train/part-0.parquet")
    assert set(trained_meta) == set(scored)  # the same keys in every partition
    for key in (
        "model_uri",  # one form: models:/<name>/<version>
        "model_version",
        "mlflow_run_id",
        "normalizer_sha256",
        "id_col",
        "label_col",
        "latent_dim",
        "threshold",
    ):
        assert scored[key] == trained_meta[key], key
    assert scored["data_version"].startswith("md5:")


def test_inbox_files_are_scored_once(trained):
    root, frame, _ = trained
    inbox = root / "data/inbox/sensors"
    inbox.mkdir(parents=True)
    frame.iloc[3000:3400].to_parquet(inbox / "2026-11-01.parquet")
    frame.iloc[3400:3700].to_parquet(inbox / "2026-11-02.parquet")
    first = score_batches(dataset="sensors", root=str(root))
    assert [r["batch_id"] for r in first] == ["2026-11-01", "2026-11-02"]
    assert score_batches(dataset="sensors", root=str(root)) == []  # nothing new
    frame.iloc[3700:].to_parquet(inbox / "2026-11-03.parquet")
    assert [r["batch_id"] for r in score_batches(dataset="sensors", root=str(root))] == [
        "2026-11-03"
    ]
    ledger = json.loads((root / "data/scored/sensors.json").read_text())
    assert sorted(e["batch_id"] for e in ledger.values()) == [
        "2026-11-01",
        "2026-11-02",
        "2026-11-03",
    ]
    sizes = read_latents(root / "data/latents/sensors").groupby("batch").size()
    assert sizes["2026-11-01"] == 400 and sizes["2026-11-03"] == 300
    # date-like batch ids: readers infer dates unless told, as the README says
    dates = f"{root}/data/latents/sensors/model=1/batch=2026-*/*.parquet"
    query = "select distinct batch from read_parquet('{}', hive_partitioning=true{})"
    inferred = duckdb.sql(query.format(dates, "")).fetchall()
    assert {type(b) for (b,) in inferred} == {datetime.date}
    told = duckdb.sql(query.format(dates, ", hive_types={'batch': VARCHAR}")).fetchall()
    assert {b for (b,) in told} == {"2026-11-01", "2026-11-02", "2026-11-03"}
    frame = pl.read_parquet(dates, hive_schema={"model": pl.Int64, "batch": pl.String})
    assert frame["batch"].dtype == pl.String


def test_drift_warns_without_failing(trained):
    root, frame, _ = trained
    shifted = frame.iloc[3000:].copy()
    features = [c for c in shifted if c.startswith("f")]
    shifted[features] = shifted[features] * 3 + np.linspace(0, 2, len(features))
    shifted.to_parquet(root / "odd.parquet")
    state = score_batches(
        source=str(root / "odd.parquet"), dataset="sensors", root=str(root), return_state=True
    )
    assert state.is_completed()
    [result] = state.result()
    assert any(w.startswith("drift: recon_error's KS distance") for w in result["warnings"])
    tags = MlflowClient(tracking.default_uri(root)).get_run(result["run_id"]).data.tags
    assert tags["aepipe.drift_warning"].startswith("drift:")
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sensors-odd-scoring"]))
        )
    assert "**warning:** drift" in artifact.data and result["run_id"] in artifact.data
    # the same batch, for a team that wants drift to fail the run: scored and kept, then failed
    failing = score_batches(
        source=str(root / "odd.parquet"),
        batch_id="odd-paged",
        dataset="sensors",
        root=str(root),
        overrides={"score.fail_on_drift": True},
        return_state=True,
    )
    assert failing.is_failed()
    with pytest.raises(AepipeError, match="batch odd-paged drifted from training"):
        failing.result()
    assert len(read_latents(root / "data/latents/sensors", ["odd-paged"])) == 1000


def test_a_scoring_run_reads_well(trained):
    """Its name, the drift plot against training's, and one log line on what it wrote."""
    root, frame, _ = trained
    frame.iloc[3000:3500].to_parquet(root / "day9.parquet")
    [result] = score_batches(source=str(root / "day9.parquet"), dataset="sensors", root=str(root))
    client = MlflowClient(tracking.default_uri(root))
    run = client.get_run(result["run_id"])
    assert run.info.run_name == "score-day9-sensors"
    [plot] = client.list_artifacts(result["run_id"], "scoring")
    assert plot.path == "scoring/error_drift.png" and plot.file_size > 10_000
    wrote = "wrote data/latents/sensors/model=1/batch=day9/part-0.parquet"
    deadline = time.monotonic() + 30  # Prefect sends logs in batches, every few seconds
    with get_client(sync_client=True) as prefect:
        [flow_run] = prefect.read_flow_runs(limit=1, sort="START_TIME_DESC")
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        tasks = {task.name for task in prefect.read_task_runs(flow_run_filter=this_run)}
        its_logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
        while True:
            logs = [log.message for log in prefect.read_logs(log_filter=its_logs)]
            said = [m for m in logs if m.startswith("scored 500 rows of batch day9:")]
            if said:
                break
            assert time.monotonic() < deadline, logs
            time.sleep(1)
    assert said[0].endswith(wrote), said
    assert "score-day9" in tasks


def test_schema_drift_fails_the_flow_and_writes_nothing(trained):
    root, frame, _ = trained
    frame.iloc[3000:].drop(columns="f4").to_parquet(root / "broken.parquet")
    state = score_batches(
        source=str(root / "broken.parquet"), dataset="sensors", root=str(root), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="broken.parquet: column 'f4' is missing"):
        state.result()
    assert not (root / "data/latents/sensors/model=1/batch=broken").exists()


@pytest.mark.parametrize("batch_id", ["train", "", "  "])
def test_reserved_and_empty_batch_ids_are_refused(trained, batch_id):
    root, frame, _ = trained
    frame.iloc[3000:3100].to_csv(root / "day9.csv", index=False)
    before = (root / "data/latents/sensors/model=1/batch=train/part-0.parquet").read_bytes()
    state = score_batches(
        source=str(root / "day9.csv"),
        batch_id=batch_id,
        dataset="sensors",
        root=str(root),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match=r"batch id|not a valid name"):
        state.result()
    assert (root / "data/latents/sensors/model=1/batch=train/part-0.parquet").read_bytes() == before
    assert not list((root / "data/latents/sensors").glob("model=1/batch=/*"))


def test_the_model_names_the_dataset_it_scores_into(trained):
    root, frame, training = trained
    frame.iloc[3000:3200].to_csv(root / "day8.csv", index=False)
    model = f"models:/sensors-autoencoder/{training['model_version']}"
    [result] = score_batches(source=str(root / "day8.csv"), model=model, root=str(root))
    assert result["partition"].endswith("data/latents/sensors/model=1/batch=day8/part-0.parquet")
    assert not (root / "data/latents/digits").exists()  # params.yaml's dataset untouched
    state = score_batches(
        source=str(root / "day8.csv"),
        model=model,
        dataset="digits",
        root=str(root),
        return_state=True,
    )
    with pytest.raises(Exception, match="is the model of dataset 'sensors', not of 'digits'"):
        state.result()
