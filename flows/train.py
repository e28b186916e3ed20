"""The ``train-autoencoder`` Prefect flow: one task per stage, tracked in MLflow."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from aecore import config as cfg
from aecore import schema, train
from aecore.io import sweep_leftovers
from aecore.layout import Layout, registered_name
from aecore.pipeline import run_stage
from flows import tracking, versioning
from flows.runners import mapper, retry_unless_user_error

T = TypeVar("T")


def timed(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """Call ``function`` and return its result with the seconds it took."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


@task(cache_policy=NO_CACHE)
def stage_task(
    name: str,
    params: cfg.Params,
    layout: Layout,
    on_epoch: train.OnEpoch | None = None,
    metadata: dict[str, str] | None = None,
    resume: bool = False,
) -> tuple[Any, float]:
    """Run one stage; return its result and the seconds it took."""
    parts = mapper(params.orchestration)
    try:
        return timed(run_stage, name, params, layout, on_epoch, metadata, parts, resume)
    finally:
        if isinstance(on_epoch, EpochReporter):
            on_epoch.finish()  # the bar ends before Prefect logs the task's end below it


def run_in_task(
    name: str,
    params: cfg.Params,
    layout: Layout,
    on_epoch: train.OnEpoch | None = None,
    metadata: dict[str, str] | None = None,
    resume: bool = False,
) -> tuple[Any, float]:
    """Run a stage as a task named after it; ingest retries I/O faults (a remote source)."""
    retries = {"retries": 2, "retry_delay_seconds": [2, 10]} if name == "ingest" else {}
    task_ = stage_task.with_options(
        name=name, task_run_name=name, retry_condition_fn=retry_unless_user_error, **retries
    )
    result = task_(name, params, layout, on_epoch, metadata, resume)
    versioning.journal(layout)  # its outputs are the pipeline's own, should a crash follow
    return result


@task(cache_policy=NO_CACHE, task_run_name="version")
def version_task(
    root: Path, layout: Layout, table: Path, pipeline_matches: bool
) -> versioning.Record:
    """Cache the input and latent table in DVC, commit the pipeline, push to the remote."""
    return versioning.record(root, layout, table, pipeline_matches)


class EpochReporter:
    """Sends each epoch's losses to MLflow and shows them on a progress bar or in the log."""

    def __init__(self, logger: tracking.EpochLogger, epochs: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.logger = logger
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} epochs"),
            TextColumn("{task.fields[losses]}"),
            TimeElapsedColumn(),
            disable=not sys.stderr.isatty(),
            transient=False,  # the last state stays, above the lines that follow
            redirect_stdout=False,
        )
        self.bar = self.progress.add_task("train", total=epochs, losses="")

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.logger(epoch, metrics)
        losses = f"train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}"
        self.progress.update(self.bar, completed=epoch + 1, losses=losses)
        if self.progress.disable and (epoch + 1) % max(self.epochs // 10, 1) == 0:
            get_run_logger().info("epoch %d/%d  %s", epoch + 1, self.epochs, losses)

    def __enter__(self) -> EpochReporter:
        self.progress.start()
        return self

    def finish(self) -> None:
        """Draw the bar's last state and end it (again: a no-op)."""
        self.progress.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.finish()
        self.logger.flush()


def training_outcome(fit: train.FitSummary, config: cfg.TrainConfig) -> str:
    """One line on how training ended: early, on a budget, or after every epoch."""
    best = f"best epoch {fit.best_epoch + 1} (val_loss {fit.best_val_loss:.4g})"
    if fit.stopped == "early_stopping":
        return (
            f"training stopped early at epoch {fit.epochs_run} of {config.epochs}: no better "
            f"val_loss for {config.patience} epochs (train.patience); {best}"
        )
    if fit.stopped == "max_steps":
        return f"training stopped at its step budget, {fit.steps} steps (train.max_steps); {best}"
    if fit.stopped == "max_minutes":
        budget = f"{config.max_minutes:g} minutes (train.max_minutes)"
        return f"training stopped at its time budget, {budget}, epoch {fit.epochs_run}; {best}"
    return f"training ran all {fit.epochs_run} epochs (train.epochs); {best}"


def artifact_key(name: str, kind: str = "evaluation") -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes), e.g. ``digits-evaluation``."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{name.lower()}-{kind}")


@flow(name="train-autoencoder", log_prints=True)
def train_autoencoder(
    source: str | None = None,
    dataset: str | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    kind: str | None = None,
    latent_dim: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    params_path: str = "params.yaml",
    root: str = ".",
    resume: bool = False,
    preset: str | None = None,
) -> dict[str, Any]:
    """Ingest, normalize, train, evaluate and export; track the run in MLflow.

    Args:
        source: CSV, Parquet or JSONL file, folder, glob or fsspec URL; default params.yaml's.
        dataset: the dataset's name; default: derived from the source.
        id_col: the id column; default: an added ``row_id``.
        label_col: a label column passed through (AUROC when it is a 0/1 anomaly label).
        kind: the autoencoder: dense, denoising, sparse or vae.
        latent_dim: the bottleneck size k.
        epochs: the most epochs to train.
        device: auto, cpu, cuda or mps.
        overrides: any other parameter as dotted keys, e.g. ``{"train.learning_rate": 0.001}``.
        params_path: the parameters file, relative to ``root``.
        root: the project folder that holds data/ and mlflow/.
        resume: training continues from the checkpoint that an interrupted run of the
            same settings and data left (``train.checkpoint_seconds``).
        preset: a preset of params.yaml's ``presets`` (``compress``), under ``overrides``.

    Returns:
        A summary: metrics, the latent table's path, the MLflow run id and model version.
    """
    base = Path(root).resolve()
    params = cfg.resolve_params(
        base / params_path,
        source,
        dataset,
        id_col,
        label_col,
        {
            "model.kind": kind,
            "model.latent_dim": latent_dim,
            "train.epochs": epochs,
            "train.device": device,
            **(overrides or {}),
        },
        preset,
    )
    layout = Layout(base, params.data.dataset)
    schema.check_source(params.data)  # bad input fails here: no MLflow run, nothing written
    versioning.check_outputs(base, layout)
    tracking.configure(base)
    sweep_leftovers(*layout.folders())
    for run_id in tracking.reap_dead_runs(params.data.dataset, layout):
        get_run_logger().warning("MLflow run %s: its process died; marked FAILED", run_id)
    context = get_run_context()
    flow_run_id = str(context.flow_run.id) if getattr(context, "flow_run", None) else ""
    tags = {"prefect.flow_run_id": flow_run_id, "aepipe.dataset": params.data.dataset}
    seconds: dict[str, float] = {}
    with tracking.track_pipeline(params, layout, base, tags) as tracked:
        _, seconds["ingest"] = run_in_task("ingest", params, layout)
        warnings = schema.unused_warnings(schema.read_schema(layout.raw))
        for warning in warnings:
            get_run_logger().warning(warning)
        _, seconds["normalize"] = run_in_task("normalize", params, layout)
        with EpochReporter(tracking.EpochLogger(tracked.run_id), params.train.epochs) as reporter:
            fit, seconds["train"] = run_in_task("train", params, layout, reporter, resume=resume)
        get_run_logger().info(training_outcome(fit, params.train))
        metrics, seconds["evaluate"] = run_in_task("evaluate", params, layout)
        registered = tracked.register()
        table, seconds["export"] = run_in_task(
            "export", params, layout, metadata=registered.metadata
        )
        summary = tracked.publish(fit, metrics, table, seconds)
        get_run_logger().info(summary.champion_reason)
        versions = version_task(base, layout, table, params == cfg.load_params(base / params_path))
        mlflow.set_tags(versions.tags)
        for warning in versions.warnings:
            get_run_logger().warning(warning)
        warnings += versions.warnings
    report = (layout.figures / "report.md").read_text()
    model_name = registered_name(params.data.dataset)
    status = " (champion)" if summary.champion else ""
    footer = (
        f"MLflow run `{summary.run_id}`, model `{model_name}` "
        f"version {summary.model_version}{status}."
    )
    create_markdown_artifact(
        markdown=f"{report}\n{footer}\n",
        key=artifact_key(params.data.dataset),
        description=f"Evaluation of {params.data.dataset}",
    )
    return {**dataclasses.asdict(summary), "stage_seconds": seconds, "warnings": warnings}
