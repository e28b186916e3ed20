import mlflow
from mlflow.tracking import MlflowClient

from flows import tracking


def test_embedded_store_and_redacted_params(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.configure(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    params = {"data.source": "s3://key:secret@bucket/x.csv?token=abc", "model.latent_dim": 8}
    with tracking.start_run("t", tmp_path, params, {"prefect.flow_run_id": "f1"}) as run:
        logger = tracking.EpochLogger(run.info.run_id, interval_s=3600)
        for epoch in range(3):
            logger(epoch, {"train_loss": 1.0 / (epoch + 1), "val_loss": 2.0})
        logger.flush()
    client = MlflowClient(tracking.default_uri(tmp_path))
    logged = client.get_run(run.info.run_id)
    assert logged.data.params["data.source"] == "s3://***@bucket/x.csv?***"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1, 2]
    experiment = client.get_experiment_by_name("t")
    assert experiment.artifact_location == (tmp_path / "mlflow/artifacts").resolve().as_uri()
    # a second project in the same process gets its own store, not the first one's
    other = tmp_path / "other"
    other.mkdir()
    tracking.configure(other)
    assert mlflow.get_tracking_uri() == tracking.default_uri(other)


def test_user_tracking_uri_wins(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/team.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.tracking_uri(tmp_path) == uri
    assert tracking.artifact_root(tmp_path) is None
