"""The evaluate stage's report: PNG plots, report.md and the CSVs for ``dvc plots``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np

from aecore.io import atomic_path, write_json


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    return path


def loss_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Train and validation loss per epoch, log scale."""
    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    axis.plot(epochs, [row["train_loss"] for row in history], label="train_loss")
    axis.plot(epochs, [row["val_loss"] for row in history], label="val_loss")
    best = min(history, key=lambda row: row["val_loss"])
    axis.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}")
    axis.set(xlabel="epoch", ylabel="reconstruction MSE", yscale="log", title="Loss curves")
    axis.legend()
    return _save(figure, path)


def error_histogram(errors: np.ndarray, threshold: float, path: Path) -> Path:
    """Histogram of held-out reconstruction errors with the anomaly threshold marked."""
    figure, axis = plt.subplots(figsize=(6, 4))
    positive = errors[errors > 0]
    low, high = (positive.min(), positive.max()) if len(positive) else (1e-6, 1.0)
    bins = np.geomspace(low, max(high, low * 1.01), 60)  # errors are heavy-tailed: log bins
    axis.hist(np.clip(errors, low, None), bins=bins, color="tab:blue", alpha=0.8)
    axis.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g}")
    axis.set(xscale="log", xlabel="anomaly score", ylabel="rows")
    axis.set_title("Held-out anomaly scores")
    axis.legend()
    return _save(figure, path)


def latent_projection(
    latents: np.ndarray,
    labels: np.ndarray | None,
    errors: np.ndarray,
    path: Path,
    total: int | None = None,
    classes: bool = False,
) -> Path:
    """The latents projected on their first two principal axes, coloured by label or score.

    ``total``: the table's rows, when ``latents`` are a sample of them (said in the title).
    ``classes``: the labels are classes (a colour each), not a value to shade by.
    """
    centred = latents.astype(np.float64) - latents.mean(axis=0)
    if latents.shape[1] > 2:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points = centred @ vt[:2].T
    else:
        points = np.column_stack([centred, np.zeros((len(centred), 2 - latents.shape[1]))])
    figure, axis = plt.subplots(figsize=(6, 5))
    if labels is not None and classes:
        for value in np.unique(labels):
            rows = labels == value
            axis.scatter(points[rows, 0], points[rows, 1], s=6, label=str(value))
        axis.legend(markerscale=3, fontsize="small", title="label", ncols=2)
    else:
        scatter = axis.scatter(points[:, 0], points[:, 1], s=6, c=np.log10(errors + 1e-12))
        figure.colorbar(scatter, label="log10 anomaly score")
    low, high = np.percentile(points, [0.5, 99.5], axis=0)
    margin = 0.05 * (high - low) + 1e-9
    axis.set(
        xlim=(low[0] - margin[0], high[0] + margin[0]),
        ylim=(low[1] - margin[1], high[1] + margin[1]),
    )
    axis.set(
        xlabel="latent PC 1",
        ylabel="latent PC 2",
        title="Latent space (2-D projection, 99% of rows)"
        if not total or total <= len(latents)
        else f"Latent space (2-D projection, a sample of {len(latents):,} of {total:,} rows)",
    )
    return _save(figure, path)


def reconstruction_grid(
    originals: np.ndarray, reconstructed: np.ndarray, shape: tuple[int, int], path: Path
) -> Path:
    """Originals (top row) against reconstructions (bottom row), in the source's units."""
    n = len(originals)
    figure, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8), squeeze=False)
    low, high = float(originals.min()), float(originals.max())  # one scale for both rows
    for i in range(n):
        for row, images in enumerate((originals, reconstructed)):
            axes[row, i].imshow(images[i].reshape(shape), cmap="gray_r", vmin=low, vmax=high)
            axes[row, i].axis("off")
    axes[0, 0].set_title("original", fontsize="small", loc="left")
    axes[1, 0].set_title("reconstructed", fontsize="small", loc="left")
    return _save(figure, path)


def write_plot_data(history: list[dict[str, float]], errors: np.ndarray, out_dir: Path) -> None:
    """Write the loss curves and the error histogram as CSV, for ``dvc plots``."""
    import pandas as pd

    losses = pd.DataFrame(history)[["epoch", "train_loss", "val_loss"]]
    losses.to_csv(out_dir / "loss.csv", index=False)
    positive = errors[errors > 0]
    edges = np.geomspace(positive.min(), positive.max() * 1.0001, 41) if len(positive) else [0, 1]
    counts, edges = np.histogram(np.clip(errors, edges[0], None), bins=edges)
    centres = np.sqrt(edges[:-1] * edges[1:]) if len(positive) else edges[:-1]
    histogram = pd.DataFrame({"recon_error": centres, "rows": counts})
    histogram.to_csv(out_dir / "error_histogram.csv", index=False)


def report_markdown(metrics: dict[str, float], per_feature: dict[str, float]) -> str:
    """Render the evaluation summary as Markdown (the MLflow and Prefect artifact)."""
    lines = ["# Evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.6g} |" for name, value in metrics.items()]
    worst = sorted(per_feature.items(), key=lambda item: -item[1])[:10]
    lines += [
        "",
        "## Features with the highest held-out error",
        "",
        "| feature | MSE |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:.4g} |" for name, value in worst]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Report:
    """What the evaluate stage shows: its metrics, the curves, and the rows it measured.

    ``latents``, ``labels`` and ``latent_scores`` are a uniform subsample of the training
    and held-out rows for the latent map, drawn from ``rows`` in all; ``originals`` and
    ``reconstructions`` are a few held-out rows in source units, drawn as images of
    ``image_shape`` when it is given.
    """

    metrics: dict[str, float]
    per_feature: dict[str, float]
    history: list[dict[str, float]]
    scores: np.ndarray
    threshold: float
    errors: np.ndarray
    latents: np.ndarray
    labels: np.ndarray | None
    latent_scores: np.ndarray
    rows: int
    classes: bool
    originals: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    image_shape: tuple[int, int] | None = None


def write_report(report: Report, out_dir: Path) -> None:
    """Write ``figures/`` (plots, report.md, feature_errors.json) and the plot CSVs."""
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    loss_curves(report.history, figures / "loss_curves.png")
    error_histogram(report.scores, report.threshold, figures / "error_histogram.png")
    latent_projection(
        report.latents,
        report.labels,
        report.latent_scores,
        figures / "latent_projection.png",
        report.rows,
        report.classes,
    )
    shape, originals = report.image_shape, report.originals
    if shape and originals is not None and math.prod(shape) == originals.shape[1]:
        reconstruction_grid(
            originals, report.reconstructions, shape, figures / "reconstructions.png"
        )
    rounded = {name: round(value, 6) for name, value in report.per_feature.items()}
    write_json(rounded, figures / "feature_errors.json")
    (figures / "report.md").write_text(report_markdown(report.metrics, report.per_feature))
    write_plot_data(report.history, report.errors, out_dir)


def error_drift(
    edges: np.ndarray, counts: np.ndarray, reference: np.ndarray, batch: str, path: Path
) -> Path:
    """A scored batch's reconstruction errors against training's, as two distributions.

    ``counts`` are the batch's rows per bin of ``edges``; ``reference`` the held-out
    training errors' quantiles at evenly spaced levels (reference.json). The largest
    vertical gap between the two curves is the batch's ``drift_ks``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(6, 4))
    levels = np.linspace(0, 1, len(reference))
    axis.step(reference, levels, where="post", label="training (held-out rows)")
    if counts.sum() > 0:
        used = np.flatnonzero(counts)
        span = slice(max(used[0] - 1, 0), min(used[-1] + 2, len(counts)))
        cumulative = np.cumsum(counts) / counts.sum()
        axis.step(edges[1:][span], cumulative[span], where="post", label=f"batch {batch}")
    positive = reference[reference > 0]
    if len(positive):
        axis.set_xscale("log")
    axis.set_xlabel("reconstruction error per row")
    axis.set_ylabel("share of rows at or below")
    axis.set_title(f"Batch {batch} against training")
    axis.legend()
    return _save(figure, path)
