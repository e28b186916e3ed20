"""The ``score-batch`` Prefect flow: new rows scored with the registered model, never retrained."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from aecore import config as cfg
from aecore.errors import AepipeError
from aecore.io import file_digest, list_source_files, redact_url, sweep_leftovers, write_json
from aecore.layout import Layout, scoring_target
from aecore.score import HISTOGRAM_EDGES, score_batch
from flows import tracking
from flows.runners import mapper, retry_unless_user_error, submit_parts
from flows.train import artifact_key


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


def enter(ledger: dict[str, dict], path: Path, result: dict[str, Any]) -> None:
    """Record in ``ledger`` that the file at ``path`` was scored."""
    ledger[file_digest(path)] = {
        "file": str(path),
        "batch_id": result["batch_id"],
        "run_id": result["run_id"],
        "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@task(
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    task_run_name="score-{batch_id}",
)
def score_task(
    source: str,
    model_uri: str,
    layout: Layout,
    batch_id: str,
    params: cfg.Params,
) -> dict[str, Any]:
    """Load the registered model and score one batch into its partition."""
    python_model, info = tracking.load_scoring_model(model_uri)
    info = {**info, "normalizer_sha256": getattr(python_model, "normalizer_sha256", "")}
    return score_into(
        source,
        (python_model.model, python_model.normalizer, python_model.reference),
        info,
        layout.partition(batch_id, info["model_version"]),
        batch_id,
        params.score,
        params.export.row_group_size,
        mapper(params.orchestration),
    )


def score_into(
    source: str,
    scoring: tuple[Any, Any, dict[str, Any]],
    info: dict[str, str],
    out: Path,
    batch_id: str,
    config: cfg.ScoreConfig,
    row_group_size: int,
    map_parts: Any = None,
) -> dict[str, Any]:
    """Score ``source`` into the partition ``out``; return its metrics and warnings.

    ``scoring`` is the registered model's ``(model, normalizer, reference)``: aecore
    objects, which a Dask worker can unpickle (the pyfunc wrapper's class it cannot).
    """
    model, normalizer, reference = scoring
    summary = score_batch(
        source,
        model,
        normalizer,
        reference,
        out,
        {
            "model_uri": info["model_uri"],
            "model_version": info["model_version"],
            "mlflow_run_id": info["run_id"],
            "batch_id": batch_id,
            "normalizer_sha256": info.get("normalizer_sha256", ""),
        },
        batch_rows=config.batch_rows,
        row_group_size=row_group_size,
        map_parts=map_parts,
    )
    metrics = summary.metrics(reference)
    histogram = {"counts": summary.histogram.tolist(), "reference": reference.error_quantiles}
    return {"metrics": metrics, "warnings": summary.warnings, "model": info, "errors": histogram}


def score_one(
    source: str, batch_id: str, model_uri: str, layout: Layout, params: cfg.Params, root: Path
) -> dict[str, Any]:
    """Score ``source`` as batch ``batch_id`` inside its own MLflow run."""
    with scoring_run(source, batch_id, model_uri, layout, root) as run:
        result = score_task(source, model_uri, layout, batch_id, params)
        return record(result, batch_id, layout, params, run)


@contextmanager
def scoring_run(
    source: str, batch_id: str, model_uri: str, layout: Layout, root: Path
) -> Iterator[mlflow.ActiveRun]:
    """The MLflow run of one scored batch, in the ``<dataset>-scoring`` experiment."""
    tags = {
        "aepipe.dataset": layout.dataset,
        "aepipe.batch_id": batch_id,
        "mlflow.runName": f"score-{batch_id}-{layout.dataset}",
    }
    run_params = {"source": redact_url(source), "batch_id": batch_id, "model_uri": model_uri}
    with tracking.start_run(f"{layout.dataset}-scoring", root, run_params, tags) as run:
        yield run


def record(
    result: dict[str, Any], batch_id: str, layout: Layout, params: cfg.Params, run: Any
) -> dict[str, Any]:
    """Log a scored batch's metrics, tags, warnings and Prefect artifact; return its summary."""
    metrics, warnings = result["metrics"], list(result["warnings"])
    drifted = metrics.get("drift_ks", 0) > params.score.drift_limit
    if drifted:
        warnings.append(
            f"drift: recon_error's KS distance from training is {metrics['drift_ks']:.3f} "
            f"(limit {params.score.drift_limit}); consider retraining"
        )
        mlflow.set_tag("aepipe.drift_warning", warnings[-1])
    mlflow.log_metrics(metrics)
    mlflow.set_tags(tracking.model_tags(result["model"]))
    partition = layout.partition(batch_id, result["model"]["model_version"])
    from aecore.report import error_drift  # matplotlib: only once a batch is scored

    with tempfile.TemporaryDirectory() as folder:
        plot = Path(folder) / "error_drift.png"
        errors = result["errors"]
        error_drift(HISTOGRAM_EDGES, errors["counts"], errors["reference"], batch_id, plot)
        mlflow.log_artifact(str(plot), "scoring")
    get_run_logger().info(
        "scored %s rows of batch %s: %s anomalies (%.2f%%); wrote %s",
        f"{metrics.get('rows', 0):,}",
        batch_id,
        f"{round(metrics.get('anomaly_rate', 0) * metrics.get('rows', 0)):,}",
        100 * metrics.get("anomaly_rate", 0),
        partition.relative_to(layout.root),
    )
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
        "partition": str(partition),
        "metrics": metrics,
        "warnings": warnings,
        "run_id": run.info.run_id,
        "drifted": drifted,
    }


def score_inbox_in_parallel(
    files: list[Path], model_uri: str, layout: Layout, params: cfg.Params, root: Path
) -> tuple[list[tuple[Path, dict[str, Any]]], list[BaseException]]:
    """Score inbox files on the task runner's workers at once, then track each in MLflow.

    The model is loaded once, here, and sent to the workers. Returns the files scored with
    their summaries, and the failures: the caller records the first before raising one.
    """
    python_model, info = tracking.load_scoring_model(model_uri)
    info = {**info, "normalizer_sha256": getattr(python_model, "normalizer_sha256", "")}
    scoring = (python_model.model, python_model.normalizer, python_model.reference)
    batches = [cfg.dataset_name(str(path)) for path in files]
    items = [
        (
            str(path),
            scoring,
            info,
            layout.partition(batch_id, info["model_version"]),
            batch_id,
            params.score,
            params.export.row_group_size,
        )
        for path, batch_id in zip(files, batches, strict=True)
    ]
    results = submit_parts(score_into, items, return_exceptions=True)
    recorded, failures = [], []
    for path, batch_id, result in zip(files, batches, results, strict=True):
        if isinstance(result, BaseException):
            failures.append(result)
            continue
        with scoring_run(str(path), batch_id, model_uri, layout, root) as run:
            recorded.append((path, record(result, batch_id, layout, params, run)))
    return recorded, failures


@flow(name="score-batch", log_prints=True)
def score_batches(
    source: str | None = None,
    model: str | None = None,
    batch_id: str | None = None,
    dataset: str | None = None,
    overrides: dict[str, Any] | None = None,
    params_path: str = "params.yaml",
    root: str = ".",
) -> list[dict[str, Any]]:
    """Score new rows with the registered model, one latent-table partition per batch.

    Args:
        source: a file, folder, glob or URL, scored as one batch. Without it, every file
            of the inbox ``<score.inbox>/<dataset>`` not scored yet, one batch per file.
        model: the model URI; default ``models:/<dataset>-autoencoder@champion``. A
            registered aepipe model names its dataset, which then need not be given.
        batch_id: the partition ``batch=<id>`` (one batch only); default: the file's name.
        dataset: the dataset; default params.yaml's.
        overrides: parameters as dotted keys, e.g. ``{"orchestration.task_runner": "dask"}``.
        params_path: the parameters file, relative to ``root``.
        root: the project folder.

    Returns:
        One summary per scored batch: partition, metrics, warnings, MLflow run id.
    """
    base = Path(root).resolve()
    params = cfg.load_params(base / params_path).with_overrides(overrides or {})
    target = scoring_target(base, params.data.dataset, source, model, batch_id, dataset)
    layout, model_uri = target.layout, target.model_uri
    tracking.configure(base)
    sweep_leftovers(layout.latents)
    for run_id in tracking.reap_dead_runs(f"{layout.dataset}-scoring", layout):
        get_run_logger().warning("MLflow run %s: its process died; marked FAILED", run_id)
    if source is not None and target.batch is not None:
        results = [score_one(source, target.batch, model_uri, layout, params, base)]
    else:
        with inbox_lock(layout):  # one inbox scoring of a dataset at a time: no file twice
            folder = base / params.score.inbox / layout.dataset
            results = score_inbox(folder, model_uri, layout, params)
    drifted = [result["batch_id"] for result in results if result["drifted"]]
    if drifted and params.score.fail_on_drift:
        message = (
            f"{layout.dataset}: batch {', '.join(drifted)} drifted from training "
            f"(score.drift_limit {params.score.drift_limit}); scored and kept, and the run "
            "fails because score.fail_on_drift is true"
        )
        raise AepipeError(message)
    return results


@contextmanager
def inbox_lock(layout: Layout) -> Iterator[None]:
    """Hold the dataset's inbox lock (an OS lock: a dead holder releases it)."""
    from filelock import FileLock, Timeout

    path = ledger_path(layout).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        get_run_logger().info("%s: another inbox scoring runs; waiting for it", layout.dataset)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def score_inbox(
    folder: Path, model_uri: str, layout: Layout, params: cfg.Params
) -> list[dict[str, Any]]:
    """Score every file of the inbox ``folder`` not in the ledger; one batch per file."""
    base = layout.root
    ledger = read_ledger(layout)
    files = pending_files(folder, ledger)
    if mapper(params.orchestration) and len(files) > 1:
        scored, failures = score_inbox_in_parallel(files, model_uri, layout, params, base)
        for path, result in scored:
            enter(ledger, path, result)
        write_json(ledger, ledger_path(layout))  # what succeeded is kept, then failures raise
        if failures:
            raise failures[0]
        return [result for _, result in scored]
    results = []
    for path in files:  # the ledger is written after each file: a failure loses no progress
        results.append(
            score_one(str(path), cfg.dataset_name(str(path)), model_uri, layout, params, base)
        )
        enter(ledger, path, results[-1])
        write_json(ledger, ledger_path(layout))
    if not results:
        get_run_logger().info("%s: no new files to score", folder)
    return results
