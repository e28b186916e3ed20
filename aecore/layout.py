"""Where each stage reads and writes: the one place that knows the paths under data/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aecore.config import check_name
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
    def latents(self) -> Path:
        """The hive-partitioned latent table of this dataset."""
        return self.data / "latents" / self.dataset

    def partition(self, batch_id: str) -> Path:
        """Return the one Parquet file of partition ``batch=<batch_id>``."""
        problem = check_name(batch_id)
        if problem:
            message = f"batch id: {problem}"
            raise AepipeError(message)
        return self.latents / f"batch={batch_id}" / "part-0.parquet"

    def stage_files(self) -> list[Path]:
        """Every file the stages wrote that DVC caches (metrics and plot data go to git)."""
        folders = [self.raw, self.processed, self.figures]
        files = [p for folder in folders for p in sorted(folder.glob("*")) if p.is_file()]
        fixed = [self.normalizer, self.model, self.history, self.reference]
        return [p for p in (*files, *fixed, self.partition("train")) if p.exists()]
