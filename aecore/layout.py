"""Where each stage reads and writes: the one place that knows the paths under data/."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aecore.config import check_name, dataset_name
from aecore.errors import AepipeError


def trained_last(root: Path) -> str | None:
    """The dataset whose model was trained last under ``root/data``, or ``None``."""
    models = [
        p for p in (root / "data" / "models").glob("*/model.pt") if not check_name(p.parent.name)
    ]
    return max(models, key=lambda p: p.stat().st_mtime).parent.name if models else None


@dataclass(frozen=True)
class Layout:
    """The files of one dataset under ``<root>/data``; dvc.yaml names the same paths."""

    root: Path
    dataset: str

    def __post_init__(self) -> None:
        problem = check_name(self.dataset)
        if problem:
            message = f"dataset: {problem}"
            raise AepipeError(message)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        """The ingested rows, untouched but for an added ``row_id``: a folder of Parquet files."""
        return self.data / "raw" / self.dataset

    @property
    def processed(self) -> Path:
        """Normalized float32 features with id, label and split columns: a folder of files."""
        return self.data / "processed" / self.dataset / "features"

    @property
    def normalizer(self) -> Path:
        return self.data / "processed" / self.dataset / "normalizer.json"

    @property
    def model(self) -> Path:
        """The best weights seen so far; written during training as the checkpoint."""
        return self.data / "models" / self.dataset / "model.pt"

    @property
    def history(self) -> Path:
        return self.data / "models" / self.dataset / "history.json"

    @property
    def reports(self) -> Path:
        """Evaluation outputs: metrics.json, report.md and the plots."""
        return self.data / "reports" / self.dataset

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def reference(self) -> Path:
        """What scoring needs: columns, threshold, and the training baseline for drift."""
        return self.reports / "reference.json"

    @property
    def figures(self) -> Path:
        """The evaluation's PNG plots, report.md and feature_errors.json."""
        return self.reports / "figures"

    @property
    def checkpoint(self) -> Path:
        """Training's resume point, written during training and removed when it ends."""
        return self.data / "models" / self.dataset / "checkpoint.pt"

    @property
    def latents(self) -> Path:
        """The latent table of this dataset: ``model=<version>/batch=<id>/`` partitions."""
        return self.data / "latents" / self.dataset

    @property
    def current(self) -> Path:
        """The pointer to the champion's latent space: one line, e.g. ``model=3``."""
        return self.latents / CURRENT

    def model_folder(self, version: str) -> Path:
        """The partitions of one registered model version: one latent space."""
        if not version.isdigit():
            message = f"model version {version!r}: expected a registered version number"
            raise AepipeError(message)
        return self.latents / f"model={version}"

    def partition(self, batch_id: str, version: str) -> Path:
        """Return the one Parquet file of partition ``model=<version>/batch=<batch_id>``."""
        problem = check_name(batch_id)
        if problem:
            message = f"batch id: {problem}"
            raise AepipeError(message)
        return self.model_folder(version) / f"batch={batch_id}" / "part-0.parquet"

    @property
    def export_record(self) -> Path:
        """The export stage's DVC output: which partition it wrote, and its md5."""
        return self.reports / "export.json"

    @property
    def journal(self) -> Path:
        """What the pipeline wrote last: tells its own leftovers from a hand edit."""
        return self.data / ".journal" / f"{self.dataset}.json"

    def folders(self) -> list[Path]:
        """Every folder that holds this dataset's files (where a crash leaves leftovers)."""
        stages = ("raw", "processed", "models", "reports", "latents")
        return [self.data / stage / self.dataset for stage in stages]

    def stage_files(self) -> list[Path]:
        """Every file the stages wrote that DVC caches (metrics and plot data go to git)."""
        folders = [self.raw, self.processed, self.figures]
        files = [p for folder in folders for p in sorted(folder.glob("*")) if p.is_file()]
        fixed = [self.normalizer, self.model, self.history, self.reference, self.export_record]
        return [p for p in (*files, *fixed) if p.exists()]


CURRENT = "_current"  # readers skip names that start with "_" (pyarrow, Spark)
UNREGISTERED = "0"  # the model version of a table exported outside the registry


def current_version(latents: Path) -> str | None:
    """The model version whose partitions consumers read (``_current``), or ``None``."""
    pointer = latents / CURRENT
    if not pointer.exists():
        return None
    return pointer.read_text().strip().removeprefix("model=")


RESERVED_BATCHES = ("train",)  # batch=train is the training run's table
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<number>\d+)|@(?P<alias>[\w-]+))")


def registered_name(dataset: str) -> str:
    """The registry name of a dataset's model."""
    return f"{dataset}-autoencoder"


def parse_model_uri(model_uri: str) -> re.Match:
    """Split ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.

    Raises:
        AepipeError: for any other form: scoring needs a registered version, whose
            number keys the partitions it writes.
    """
    found = MODEL_URI.fullmatch(model_uri)
    if not found:
        message = (
            f"{model_uri}: scoring takes a registered model, models:/<name>/<version> "
            "or models:/<name>@<alias>"
        )
        raise AepipeError(message)
    return found


@dataclass(frozen=True)
class ScoringTarget:
    """Where a scoring writes and with which model: checked before anything runs."""

    layout: Layout
    model_uri: str
    batch: str | None  # None: the inbox, one batch per file


def scoring_target(
    root: Path,
    default_dataset: str,
    source: str | None,
    model: str | None,
    batch_id: str | None,
    dataset: str | None,
) -> ScoringTarget:
    """Check a scoring's model, dataset and batch id; return where it will write.

    A registered aepipe model names its dataset (``models:/<dataset>-autoencoder…``); a
    ``dataset`` that differs is refused. The batch id defaults to the source's file name;
    ``train`` is reserved, and an empty or blank id is refused.

    Raises:
        AepipeError: naming what is wrong.
    """
    trained_on = None
    if model is not None:
        name = parse_model_uri(model)["name"]
        trained_on = name.removesuffix("-autoencoder") if name.endswith("-autoencoder") else None
    if dataset and trained_on and dataset != trained_on:
        message = f"{model} is the model of dataset {trained_on!r}, not of {dataset!r}"
        raise AepipeError(message)
    layout = Layout(root, dataset or trained_on or default_dataset)
    model_uri = model or f"models:/{registered_name(layout.dataset)}@champion"
    if source is None:
        if batch_id is not None:
            message = "--batch-id names one batch: give --source too (the inbox has one per file)"
            raise AepipeError(message)
        return ScoringTarget(layout, model_uri, None)
    batch = dataset_name(source) if batch_id is None else batch_id.strip()
    if batch in RESERVED_BATCHES:
        message = f"batch id {batch!r} is reserved for the training table; choose another"
        raise AepipeError(message)
    problem = check_name(batch)
    if problem:
        message = f"batch id: {problem}"
        raise AepipeError(message)
    return ScoringTarget(layout, model_uri, batch)
