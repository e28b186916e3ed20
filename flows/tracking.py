"""Every MLflow call of aepipe, shared by the Prefect flow and ``aepipe stage``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aecore.config import Params
from aecore.export import read_metadata
from aecore.io import redact_url
from aecore.layout import Layout, parse_model_uri, registered_name
from aecore.train import FitSummary

STORE = Path("mlflow") / "mlflow.db"
ARTIFACTS = Path("mlflow") / "artifacts"
CHAMPION = "champion"
MODEL_NAME = "model"  # the model's name inside its run
# the train stage's facts logged as metrics: what it trained on, and how
TRAIN_FACTS = (
    "train_rows",
    "train_rows_total",
    "train_sampled",
    "val_rows",
    "batch_size",
    "learning_rate",
    "steps",
)


def default_uri(root: Path) -> str:
    """The embedded store: SQLite under ``mlflow/``, artifacts in ``mlflow/artifacts``."""
    return f"sqlite:///{(root / STORE).resolve()}"


# MLflow exports the URI it is given to MLFLOW_TRACKING_URI; these are the ones we gave.
_EMBEDDED_URIS: set[str] = set()


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when the user set it, else the project's embedded store."""
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if user_uri and user_uri not in _EMBEDDED_URIS:
        return user_uri
    return default_uri(root)


def artifact_root(root: Path) -> str | None:
    """Where new experiments keep artifacts: mlflow/artifacts for the embedded store.

    ``None`` lets another tracking server decide.
    """
    if tracking_uri(root) != default_uri(root):
        return None
    return (root / ARTIFACTS).resolve().as_uri()


def configure(root: Path) -> str:
    """Point MLflow at the tracking store; return its URI with secrets hidden."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(root)
    if uri == default_uri(root):
        _EMBEDDED_URIS.add(uri)
        (root / STORE).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return redact_url(uri)


def warm_up(root: Path, dataset: str) -> None:
    """Open the tracking and registry stores now, while something else is waited for."""
    configure(root)
    mlflow.get_experiment_by_name(dataset)
    MlflowClient().search_registered_models(max_results=1)


def ensure_experiment(name: str, root: Path) -> str:
    """Return the id of experiment ``name``, creating it (artifacts under mlflow/artifacts)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_root(root))
    except MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


@contextmanager
def start_run(
    experiment: str, root: Path, params: Mapping[str, Any], tags: Mapping[str, str]
) -> Iterator[mlflow.ActiveRun]:
    """Open a run in ``experiment`` with the resolved config as params and the given tags.

    The run ends FAILED when the block raises, FINISHED otherwise.
    """
    experiment_id = ensure_experiment(experiment, root)
    all_tags = {k: v for k, v in tags.items() if v} | {PROCESS_TAG: this_process()}
    with mlflow.start_run(experiment_id=experiment_id, tags=all_tags) as run:
        safe = {k: redact_url(v) if isinstance(v, str) else v for k, v in params.items()}
        # an unset value is logged once resolved (model.latent_dim), never as "null"
        mlflow.log_params({k: v for k, v in safe.items() if v is not None})
        yield run


PROCESS_TAG = "aepipe.process"  # host:pid of the process that runs it, to find dead runs


def this_process() -> str:
    """``host:pid`` of this process."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def reap_dead_runs(experiment: str, layout: Layout) -> list[str]:
    """End the runs that a process of this machine left RUNNING when it died, as FAILED.

    A model version that such a run registered never got its table and results: it is
    deleted, with whatever partition it had started, so no half-registered model stays.

    Returns:
        The ids of the runs ended.
    """
    import shutil
    import socket

    from aecore.io import is_alive

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    client = MlflowClient()
    runs = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    reaped = []
    for run in runs:
        host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or is_alive(int(pid)):
            continue
        for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if not version.aliases:
                client.delete_model_version(version.name, version.version)
                shutil.rmtree(layout.model_folder(str(version.version)), ignore_errors=True)
        client.set_tag(run.info.run_id, "aepipe.failure", "the process running it died")
        client.set_terminated(run.info.run_id, "FAILED")
        reaped.append(run.info.run_id)
    return reaped


class EpochLogger:
    """Per-epoch step metrics, sent in batches at most once a second.

    One HTTP or SQLite round trip per epoch would cost more than the epoch itself.
    """

    def __init__(self, run_id: str, interval_s: float = 1.0) -> None:
        self.run_id = run_id
        self.interval_s = interval_s
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()
        self.client = MlflowClient()

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now_ms, epoch) for k, v in metrics.items()]
        if time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Send the pending metrics (MLflow takes at most 1000 per batch)."""
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
        self.last_flush = time.monotonic()


def log_outputs(layout: Layout, metrics: Mapping[str, float]) -> None:
    """Log final metrics and the evaluation's artifacts: report, plots, normalizer, history."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_artifacts(str(layout.reports), "evaluation")
    mlflow.log_artifact(str(layout.normalizer))
    mlflow.log_artifact(str(layout.history))


def log_history(run_id: str, history: list[dict[str, float]]) -> None:
    """Log per-epoch losses after the fact (``aepipe stage``, where training ran elsewhere)."""
    logger = EpochLogger(run_id, interval_s=float("inf"))
    for row in history:
        logger(int(row["epoch"]), {"train_loss": row["train_loss"], "val_loss": row["val_loss"]})
    logger.flush()


def input_example(layout: Layout, rows: int = 5) -> pd.DataFrame:
    """The first raw rows' feature columns: the registered model's input example."""
    import pyarrow.parquet as pq

    from aecore.io import parquet_files
    from aecore.schema import read_schema

    features = read_schema(layout.raw)["features"]
    first = parquet_files(layout.raw)[0]
    batches = pq.ParquetFile(first, pre_buffer=False).iter_batches(
        batch_size=rows, columns=features
    )
    return next(batches).to_pandas()


@dataclass(frozen=True)
class Registered:
    """A model version registered for a run, before its latent table exists."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def metadata(self) -> dict[str, str]:
        """The latent table's metadata that links it to this version and run."""
        return {"model_uri": self.uri, "model_version": self.version, "mlflow_run_id": self.run_id}


@dataclass(frozen=True)
class Published:
    """What a tracked pipeline run produced: final metrics, table, model and its status."""

    dataset: str
    metrics: dict[str, float]
    latent_table: str
    run_id: str
    model_uri: str
    model_version: str
    champion: bool
    champion_reason: str
    fit: FitSummary


def run_name(kind: str, latent_dim: int, dataset: str) -> str:
    """What tells runs apart in MLflow's lists, e.g. ``vae-k8-digits``."""
    return f"{kind}-k{latent_dim}-{dataset}"


def log_dataset(source: str, dataset: str, data_version: str) -> None:
    """Log the source as the run's input dataset, its DVC md5 as the digest."""
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    shown = redact_url(source)
    try:
        with warnings.catch_warnings():  # local paths match two source kinds: the same one
            warnings.simplefilter("ignore", UserWarning)
            found = resolve_dataset_source(shown)
    except MlflowException:  # sklearn:digits and other non-URI sources
        found = CodeDatasetSource({"source": shown})
    digest = data_version.removeprefix("md5:")[:36] or None
    mlflow.log_input(MetaDataset(found, name=dataset, digest=digest), context="training")


def describe_version(
    params: Params, fit: FitSummary, metrics: Mapping[str, Any], data_version: str
) -> tuple[dict[str, str], str]:
    """A model version's tags and description: what it is, what it was trained on."""
    tags = {
        "dataset": params.data.dataset,
        "kind": params.model.kind,
        "latent_dim": str(fit.latent_dim),
        "data_version": data_version,
    }
    quality = f"held-out recon_mse {metrics['recon_mse']:.4g}"
    if "auroc" in metrics:
        tags["auroc"] = f"{metrics['auroc']:.4f}"
        quality += f", AUROC {metrics['auroc']:.4f}"
    description = (
        f"{params.model.kind} autoencoder, k = {fit.latent_dim} (encoder {fit.hidden}), "
        f"trained on {fit.train_rows:,} rows of {params.data.dataset} "
        f"({redact_url(params.data.source)}, {data_version}); {quality}."
    )
    return tags, description


class PipelineRun:
    """One pipeline run in MLflow: ``register`` the model, export, then ``publish``.

    The version is registered before the export, because its number keys the table's
    partitions (``model=<version>``). ``track_pipeline`` deletes it again when the run
    fails before ``publish`` ends, so a failed run leaves no registered model.
    """

    def __init__(self, run_id: str, layout: Layout, params: Params) -> None:
        self.run_id, self.layout, self.params = run_id, layout, params
        self.dataset = params.data.dataset
        self.pending: Registered | None = None

    def register(self) -> Registered:
        """Log the pyfunc model and register it as a new version of the dataset's model."""
        logged_uri = log_model(self.layout, input_example(self.layout))
        name = registered_name(self.dataset)
        version = str(mlflow.register_model(logged_uri, name).version)
        self.pending = Registered(name, version, self.run_id)
        return self.pending

    def publish(
        self,
        fit: FitSummary,
        metrics: Mapping[str, Any],
        table: Path,
        seconds: Mapping[str, float],
    ) -> Published:
        """Log the results and artifacts; make the version champion when it wins.

        The ``champion`` alias, and with it the ``_current`` pointer that readers follow,
        move last.
        """
        registered = self.pending
        if registered is None:
            message = "PipelineRun.publish: register the model first"
            raise RuntimeError(message)
        table_bytes = table.stat().st_size
        final = {
            **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
            "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run,
            "train_rows_per_s": fit.train_rows_per_s,
            **{
                key if key.startswith(("train_", "val_")) else f"train_{key}": float(
                    getattr(fit, key)
                )
                for key in TRAIN_FACTS
            },
            "latent_bytes": table_bytes,
            "compression_ratio": folder_bytes(self.layout.raw) / table_bytes,
            **{f"seconds_{stage}": value for stage, value in seconds.items()},
        }
        log_outputs(self.layout, final)
        # the values params.yaml left to the code, resolved: never "null" in MLflow
        resolved: dict[str, Any] = {"device": fit.device}
        if self.params.model.latent_dim is None:
            resolved["model.latent_dim"] = fit.latent_dim
        if self.params.model.hidden is None:
            resolved["model.hidden"] = fit.hidden
        mlflow.log_params(resolved)
        data_version = read_metadata(table).get("data_version", "")
        log_dataset(self.params.data.source, self.dataset, data_version)
        report = self.layout.figures / "report.md"
        mlflow.set_tags(
            {
                "mlflow.runName": run_name(self.params.model.kind, fit.latent_dim, self.dataset),
                "mlflow.note.content": report.read_text() if report.exists() else "",
                "aepipe.train_stopped": fit.stopped,
                "aepipe.model_uri": registered.uri,
            }
        )
        tags, description = describe_version(self.params, fit, metrics, data_version)
        client = MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(registered.name, registered.version, key, value)
        client.update_model_version(registered.name, registered.version, description)
        champion, reason = promote(
            registered.name,
            registered.version,
            metrics["recon_mse"],
            self.layout,
            self.params.normalize.method,
        )
        mlflow.set_tag("aepipe.champion", reason)
        self.pending = None
        return Published(
            dataset=self.dataset,
            metrics=final,
            latent_table=str(table),
            run_id=self.run_id,
            model_uri=registered.uri,
            model_version=registered.version,
            champion=champion,
            champion_reason=reason,
            fit=fit,
        )


@contextmanager
def track_pipeline(
    params: Params, layout: Layout, root: Path, tags: Mapping[str, str]
) -> Iterator[PipelineRun]:
    """The MLflow run of a pipeline run, for the flow and for ``aepipe stage export``.

    Opens the run in the dataset's experiment with the resolved parameters and ``tags``;
    when the block raises, deletes a version registered but not yet published, and ends
    the run FAILED.
    """
    configure(root)
    with start_run(params.data.dataset, root, params.as_flat_dict(), tags) as run:
        tracked = PipelineRun(run.info.run_id, layout, params)
        try:
            yield tracked
        except BaseException:
            if tracked.pending is not None:
                MlflowClient().delete_model_version(tracked.pending.name, tracked.pending.version)
            raise


def promote(
    name: str, version: str, val_error: float, layout: Layout, method: str
) -> tuple[bool, str]:
    """Make ``version`` the champion when it beats the current one.

    Held-out errors compare only between models whose inputs are scaled alike
    (``normalize.method``, ``method`` here); when the champion's were scaled otherwise,
    the new version takes over, as the first model of a name does. The latent table's
    ``_current`` pointer follows the alias, so consumers who read the current view see
    the champion's latent space, never a model that lost.

    Returns:
        Whether it became champion, and why, in words.
    """
    client = MlflowClient()
    found = champion_val_error(client, name)
    ours = f"held-out recon_mse {val_error:.4g}"
    unlike = found is not None and found[2] not in (None, method)
    better = found is None or unlike or val_error < found[1]
    if found is None:
        reason = f"v{version} is champion: the first model of {name} ({ours})"
    elif unlike:
        reason = (
            f"v{version} is champion: its inputs are scaled by {method}, v{found[0]}'s by "
            f"{found[2]}, so their held-out errors do not compare ({ours})"
        )
    elif better:
        reason = f"v{version} is champion: {ours} < v{found[0]}'s {found[1]:.4g}"
    else:
        theirs = f"held-out recon_mse {found[1]:.4g}"
        reason = f"v{found[0]} stays champion: its {theirs} <= v{version}'s {val_error:.4g}"
    if better:
        client.set_registered_model_alias(name, CHAMPION, version)
        write_text_atomically(layout.current, f"model={version}\n")
    return better, reason


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` by a rename, so a reader sees the old or the new."""
    from aecore.io import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_text(text)


def folder_bytes(folder: Path) -> int:
    """The bytes of the files in ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def log_model(layout: Layout, example: pd.DataFrame) -> str:
    """Log the pyfunc model (weights, normalizer, reference, aecore code); return its URI."""
    from mlflow.models import infer_signature

    import aecore
    from aecore.pyfunc import AutoencoderModel

    python_model = AutoencoderModel()
    artifacts = {
        "model": str(layout.model),
        "normalizer": str(layout.normalizer),
        "scoring": str(layout.reference),
    }
    python_model.load_context(mlflow.pyfunc.PythonModelContext(artifacts, None))
    output = python_model.predict(None, example)
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=str(Path(aecore.__file__).parent / "pyfunc.py"),
        artifacts=artifacts,
        code_paths=[str(Path(aecore.__file__).parent)],
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=model_requirements(),
    )
    return info.model_uri


def model_requirements() -> list[str]:
    """What a consumer needs to load the model: no Prefect, no aepipe install."""
    from importlib.metadata import version

    packages = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pyyaml")
    return [f"{name}>={version(name).split('+')[0]}" for name in packages]


def champion_val_error(client: MlflowClient, name: str) -> tuple[str, float, str | None] | None:
    """The current champion's version, held-out ``recon_mse`` and ``normalize.method``.

    ``None``: no champion.
    """
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    run = client.get_run(champion.run_id).data
    if "recon_mse" not in run.metrics:
        return None
    return str(champion.version), run.metrics["recon_mse"], run.params.get("normalize.method")


def load_scoring_model(model_uri: str) -> tuple[Any, dict[str, str]]:
    """Load a registered model for scoring; return its wrapper and what identifies it.

    The URI names a registered version, ``models:/<name>/<version>`` or
    ``models:/<name>@<alias>``: its number keys the partitions it writes, and every
    partition names it as ``models:/<name>/<version>``.

    Raises:
        AepipeError: when the URI names no registered model version.
    """
    from aecore.errors import AepipeError

    found = parse_model_uri(model_uri)
    client = MlflowClient()
    try:
        if found["alias"]:
            version = client.get_model_version_by_alias(found["name"], found["alias"])
        else:
            version = client.get_model_version(found["name"], found["number"])
        loaded = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    except (MlflowException, OSError) as error:
        message = f"{model_uri}: cannot load the model ({str(error).splitlines()[0]}); train first"
        raise AepipeError(message) from error
    python_model = loaded.unwrap_python_model()
    return python_model, {
        "model_uri": f"models:/{version.name}/{version.version}",
        "run_id": loaded.metadata.run_id or "",
        "model_name": version.name,
        "model_version": str(version.version),
    }


def model_tags(info: Mapping[str, str]) -> dict[str, str]:
    """MLflow tags linking a scoring run to the model version that scored it."""
    names = {
        "model_uri": "aepipe.model_uri",
        "model_name": "aepipe.model_name",
        "model_version": "aepipe.model_version",
        "run_id": "aepipe.training_run_id",
    }
    return {names[key]: value for key, value in info.items() if value and key in names}
