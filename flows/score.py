"""The ``score-batch`` Prefect flow: new rows scored with the registered model, never retrained."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from aecore import config as cfg
from aecore.errors import AepipeError
from aecore.io import file_digest, list_source_files, redact_url, write_json
from aecore.layout import Layout
from aecore.score import score_batch
from flows import tracking
from flows.train import artifact_key, retry_unless_user_error


def ledger_path(layout: Layout) -> Path:
    """The record of the inbox files already scored for a dataset."""
    return layout.data / "scored" / f"{layout.dataset}.json"


def read_ledger(layout: Layout) -> dict[str, dict]:
    """Return ``{md5: entry}`` of every inbox file scored so far."""
    path = ledger_path(layout)
    return json.loads(path.read_text()) if path.exists() else {}


def pending_files(inbox: Path, ledger: dict[str, dict]) -> list[Path]:
    """Files in ``inbox`` whose content has not been scored yet, oldest name first."""
    if not inbox.is_dir():
        return []
    _, files = list_source_files(str(inbox))
    return [Path(f) for f in files if file_digest(Path(f)) not in ledger]


@task(
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def score_task(
    source: str, model_uri: str, layout: Layout, batch_id: str, config: cfg.ScoreConfig
) -> dict[str, Any]:
    """Load the registered model and score one batch into its partition."""
    python_model, info = tracking.load_scoring_model(model_uri)
    summary = score_batch(
        source,
        python_model.model,
        python_model.normalizer,
        python_model.reference,
        layout.partition(batch_id),
        {"model_uri": info["model_uri"], "mlflow_run_id": info["run_id"], "batch_id": batch_id},
        batch_rows=config.batch_rows,
    )
    metrics = summary.metrics(python_model.reference)
    return {"metrics": metrics, "warnings": summary.warnings, "model": info}


def score_one(
    source: str, batch_id: str, model_uri: str, layout: Layout, params: cfg.Params, root: Path
) -> dict[str, Any]:
    """Score ``source`` as batch ``batch_id`` inside its own MLflow run."""
    tags = {"aepipe.dataset": layout.dataset, "aepipe.batch_id": batch_id}
    run_params = {"source": redact_url(source), "batch_id": batch_id, "model_uri": model_uri}
    with tracking.start_run(f"{layout.dataset}-scoring", root, run_params, tags) as run:
        result = score_task(source, model_uri, layout, batch_id, params.score)
        metrics, warnings = result["metrics"], list(result["warnings"])
        if metrics.get("drift_ks", 0) > params.score.drift_limit:
            warnings.append(
                f"drift: recon_error's KS distance from training is {metrics['drift_ks']:.3f} "
                f"(limit {params.score.drift_limit}); consider retraining"
            )
            mlflow.set_tag("aepipe.drift_warning", warnings[-1])
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tracking.model_tags(result["model"]))
    for warning in warnings:
        get_run_logger().warning(warning)
    table = "\n".join(f"| {k} | {v:.6g} |" for k, v in metrics.items())
    notes = "".join(f"\n> **warning:** {w}\n" for w in warnings)
    create_markdown_artifact(
        markdown=f"# Scored batch `{batch_id}`\n\n| metric | value |\n|---|---|\n{table}\n{notes}\n"
        f"MLflow run `{run.info.run_id}`, model `{result['model']['model_uri']}`.\n",
        key=artifact_key(f"{layout.dataset}-{batch_id}", "scoring"),
        description=f"Scoring of {layout.dataset} batch {batch_id}",
    )
    return {
        "batch_id": batch_id,
        "partition": str(layout.partition(batch_id)),
        "metrics": metrics,
        "warnings": warnings,
        "run_id": run.info.run_id,
    }


@flow(name="score-batch", log_prints=True)
def score_batches(
    source: str | None = None,
    model: str | None = None,
    batch_id: str | None = None,
    dataset: str | None = None,
    params_path: str = "params.yaml",
    root: str = ".",
) -> list[dict[str, Any]]:
    """Score new rows with the registered model, one latent-table partition per batch.

    Args:
        source: a file, folder, glob or URL, scored as one batch. Without it, every file
            of the inbox ``<score.inbox>/<dataset>`` not scored yet, one batch per file.
        model: the model URI; default ``models:/<dataset>-autoencoder@champion``.
        batch_id: the partition ``batch=<id>`` (one batch only); default: the file's name.
        dataset: the dataset; default params.yaml's.
        params_path: the parameters file, relative to ``root``.
        root: the project folder.

    Returns:
        One summary per scored batch: partition, metrics, warnings, MLflow run id.
    """
    base = Path(root).resolve()
    params = cfg.load_params(base / params_path)
    layout = Layout(base, dataset or params.data.dataset)
    model_uri = model or f"models:/{tracking.registered_name(layout.dataset)}@champion"
    tracking.configure(base)
    if source is not None:
        batch = batch_id or cfg.dataset_name(source)
        return [score_one(source, batch, model_uri, layout, params, base)]
    if batch_id:
        message = "--batch-id names one batch: give --source too (the inbox has one per file)"
        raise AepipeError(message)
    folder = base / params.score.inbox / layout.dataset
    results = []
    ledger = read_ledger(layout)
    for path in pending_files(folder, ledger):
        result = score_one(str(path), cfg.dataset_name(str(path)), model_uri, layout, params, base)
        ledger[file_digest(path)] = {
            "file": str(path),
            "batch_id": result["batch_id"],
            "run_id": result["run_id"],
            "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json(ledger, ledger_path(layout))
        results.append(result)
    if not results:
        get_run_logger().info("%s: no new files to score", folder)
    return results
