"""The real flow, end to end: Prefect's test server, a SQLite MLflow store, Parquet read back."""

import subprocess
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from aecore.config import load_params
from aecore.export import read_latents, read_metadata
from aecore.layout import Layout
from flows import tracking
from flows.train import train_autoencoder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def digits_project(tmp_path_factory):
    from tests.conftest import write_project

    root = write_project(tmp_path_factory.mktemp("project"), train__epochs=15, train__patience=50)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], cwd=root, check=True)
    first = train_autoencoder(root=str(root))
    second = train_autoencoder(root=str(root), epochs=1, latent_dim=4)  # a worse model
    return root, first, second


Z8 = [f"z{i}" for i in range(8)]


def test_latent_table_is_written_and_readable(digits_project):
    root, first, second = digits_project
    path = root / "data/latents/digits/model=2/batch=train/part-0.parquet"
    assert second["latent_table"] == str(path)
    table = pd.read_parquet(path)
    assert len(table) == 1797
    assert list(table.columns) == [
        "row_id",
        "target",
        *[f"z{i}" for i in range(4)],
        "recon_error",
        "anomaly_score",
        "is_anomaly",
        "top_features",
    ]
    meta = read_metadata(path)
    assert meta["mlflow_run_id"] == second["run_id"]
    assert meta["model_uri"] == second["model_uri"] == "models:/digits-autoencoder/2"
    assert meta["latent_dim"] == "4"
    assert read_metadata(Path(first["latent_table"]))["model_uri"] == first["model_uri"]


def test_a_retrain_that_loses_never_changes_what_readers_see(digits_project):
    """Every README reader, on the current view: the champion's 8 latents, one space."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as ds

    root, first, _second = digits_project
    latents = root / "data/latents/digits"
    assert (latents / "_current").read_text().strip() == f"model={first['model_version']}"
    current = latents / (latents / "_current").read_text().strip()
    batch_string = ds.partitioning(pa.schema([("batch", pa.string())]), flavor="hive")
    readers = {
        "read_latents": read_latents(latents),
        "pandas": pd.read_parquet(current, partitioning=batch_string),
        "pyarrow": ds.dataset(current, partitioning=batch_string).to_table().to_pandas(),
        "duckdb": duckdb.sql(
            f"select * from read_parquet('{current}/*/*.parquet', hive_partitioning=true, "
            "hive_types={'batch': VARCHAR})"
        ).df(),
        "polars": pl.read_parquet(
            f"{current}/*/*.parquet",
            hive_partitioning=True,
            hive_schema={"model": pl.Int64, "batch": pl.String},  # every key=value of the path
        ).to_pandas(),
    }
    for name, frame in readers.items():
        assert len(frame) == 1797, name
        assert [c for c in frame.columns if c.startswith("z")] == Z8, name
        assert frame[Z8].notna().all().all(), name
        assert set(frame["batch"].astype(str)) == {"train"}, name
    # the whole table keeps the two latent spaces apart by their `model` key
    everything = duckdb.sql(
        f"select model, count(*) as n, count(z7) as z7 from read_parquet("
        f"'{latents}/*/*/*.parquet', hive_partitioning=true, union_by_name=true) "
        "group by model order by model"
    ).fetchall()
    assert everything == [(1, 1797, 1797), (2, 1797, 0)]


def test_mlflow_run_holds_params_metrics_artifacts_and_tags(digits_project):
    root, first, _ = digits_project
    client = MlflowClient(tracking.default_uri(root))
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    # sized from the inputs (64 / 8), and logged as the value used, never "null"
    assert run.data.params["model.latent_dim"] == "8" and run.data.metrics["latent_dim"] == 8
    assert run.data.params["model.hidden"] == "[128, 64]"
    assert run.data.params["device"] == "cpu" and "data.id_col" not in run.data.params
    assert run.info.run_name == "denoising-k8-digits"
    assert run.data.tags["mlflow.note.content"].startswith("# Evaluation")
    assert run.data.tags["aepipe.champion"].startswith(f"v{first['model_version']} is champion")
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits"
    assert (
        f"md5:{dataset.dataset.digest}"
        == read_metadata(Path(first["latent_table"]))["data_version"]
    )
    version = client.get_model_version("digits-autoencoder", first["model_version"])
    assert version.tags["latent_dim"] == "8" and version.tags["kind"] == "denoising"
    assert version.tags["data_version"].startswith("md5:")
    assert version.description.startswith("denoising autoencoder, k = 8 (encoder [128, 64])")
    assert run.data.params["train.epochs"] == "15"
    assert run.data.params["data.source"] == "sklearn:digits"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(15))
    metrics = run.data.metrics
    for name in (
        "recon_mse",
        "pca_recon_mse",
        "recon_mse_vs_pca",
        "threshold",
        "anomaly_rate",
        "latent_bytes",
        "compression_ratio",
        "train_rows_per_s",
        "seconds_ingest",
        "seconds_normalize",
        "seconds_train",
        "seconds_evaluate",
        "seconds_export",
    ):
        assert name in metrics, name
    assert metrics["recon_mse_vs_pca"] == pytest.approx(
        metrics["recon_mse"] / metrics["pca_recon_mse"]
    )
    assert "auroc" not in metrics  # digit classes are no anomaly label
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/loss.csv", "evaluation/figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/figures")}
    for name in (
        "loss_curves.png",
        "error_histogram.png",
        "latent_projection.png",
        "reconstructions.png",
        "report.md",
    ):
        assert f"evaluation/figures/{name}" in figures
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "normalizer.json",
        "history.json",
    }
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert run.data.tags["prefect.flow_run_id"]
    assert (root / "mlflow/artifacts").is_dir() and not (root / "mlruns").exists()


def test_registered_champion_predicts_the_table(digits_project):
    root, first, second = digits_project
    mlflow.set_tracking_uri(tracking.default_uri(root))
    client = MlflowClient()
    champion = client.get_model_version_by_alias("digits-autoencoder", "champion")
    assert (first["champion"], second["champion"]) == (True, False)  # the worse one did not win
    assert str(champion.version) == first["model_version"]
    assert second["model_version"] == str(int(first["model_version"]) + 1)
    # the latest table is the second run's: load that exact model and compare
    model = mlflow.pyfunc.load_model(second["model_uri"])
    raw = pd.read_parquet(root / "data/raw/digits")
    table = pd.read_parquet(second["latent_table"])
    sample = raw.sample(64, random_state=0)
    predicted = model.predict(sample.drop(columns=["row_id", "target"]))
    expected = table.set_index("row_id").loc[sample["row_id"]]
    latent_columns = [f"z{i}" for i in range(4)]
    np.testing.assert_allclose(
        predicted[latent_columns], expected[latent_columns], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(predicted["recon_error"], expected["recon_error"], rtol=1e-5)
    np.testing.assert_allclose(predicted["anomaly_score"], expected["anomaly_score"], rtol=1e-4)
    assert (predicted["is_anomaly"].to_numpy() == expected["is_anomaly"].to_numpy()).all()
    assert [list(t) for t in predicted["top_features"]] == [
        list(t) for t in expected["top_features"]
    ]
    by_alias = mlflow.pyfunc.load_model("models:/digits-autoencoder@champion")
    assert by_alias.metadata.signature.inputs.input_names()[:2] == ["pixel_0_0", "pixel_0_1"]
    # a better model moves the alias, and the current view follows it
    layout = Layout(root, "digits")
    method = load_params(root / "params.yaml").normalize.method
    assert tracking.promote("digits-autoencoder", second["model_version"], 0.0, layout, method)[0]
    champion = client.get_model_version_by_alias("digits-autoencoder", "champion")
    assert str(champion.version) == second["model_version"]
    # errors of inputs scaled otherwise do not compare: the new version takes over
    other = "zscore" if method != "zscore" else "robust"
    name = "digits-autoencoder"
    won, reason = tracking.promote(name, first["model_version"], 99.0, layout, other)
    assert won and f"scaled by {other}, v{second['model_version']}'s by {method}" in reason
    assert tracking.promote("digits-autoencoder", second["model_version"], 0.0, layout, method)[0]
    assert list(read_latents(layout.latents).filter(like="z")) == ["z0", "z1", "z2", "z3"]


def test_markdown_artifact_names_the_run(digits_project):
    _, _, second = digits_project
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["digits-evaluation"]))
        )
    assert any(second["run_id"] in (a.data or "") for a in artifacts)
    assert any("recon_mse" in (a.data or "") for a in artifacts)


def test_binary_label_gives_auroc(project, planted):
    summary = train_autoencoder(
        source=str(planted), label_col="is_anomaly_label", epochs=30, root=str(project)
    )
    assert summary["dataset"] == "planted"
    assert summary["metrics"]["auroc"] > 0.8
    assert 0 <= summary["metrics"]["avg_precision"] <= 1
    table = read_latents(project / "data/latents/planted")
    assert table["is_anomaly_label"].sum() == 18 and "row_id" in table


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("missing.csv", {}, "missing.csv: no such file or directory"),
        ("planted", {"label_col": "nope"}, "label column 'nope' not found"),
    ],
)
def test_bad_input_fails_the_run_and_writes_nothing(project, planted, source, options, message):
    path = str(planted) if source == "planted" else str(project / source)
    state = train_autoencoder(source=path, root=str(project), return_state=True, **options)
    assert state.is_failed()
    with pytest.raises(Exception, match=message):
        state.result()
    assert not (project / "data/latents").exists()
    client = MlflowClient(tracking.default_uri(project))
    assert client.search_registered_models() == []
    # checked before the MLflow run opens: no run, no experiment named after the bad file
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_a_large_table_trains_on_a_logged_sample_within_its_budget(tmp_path):
    from tests.conftest import write_project

    root = write_project(tmp_path)
    summary = train_autoencoder(
        root=str(root), overrides={"train.max_rows": 500, "train.max_steps": 30}
    )
    fit = summary["fit"]
    assert (fit["train_rows"], fit["stopped"], fit["steps"]) == (500, "max_steps", 30)
    run = MlflowClient(tracking.default_uri(root)).get_run(summary["run_id"])
    metrics = run.data.metrics
    assert metrics["train_rows"] == 500 and metrics["train_sampled"] == 1
    assert metrics["train_rows_total"] == fit["train_rows_total"] > 1000
    assert metrics["evaluate_sampled"] == 0  # the evaluation still saw every row
    assert run.data.tags["aepipe.train_stopped"] == "max_steps"


def test_a_failed_export_leaves_no_registered_version(project, planted):
    blocker = project / "data/latents/planted/model=1"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")  # the partition cannot be written: a real fault
    state = train_autoencoder(source=str(planted), epochs=2, root=str(project), return_state=True)
    assert state.is_failed()
    client = MlflowClient(tracking.default_uri(project))
    [model] = client.search_registered_models()
    assert client.search_model_versions(f"name='{model.name}'") == []  # rolled back
    assert not (project / "data/latents/planted/_current").exists()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
