"""Reconstruction error, the PCA baseline, the anomaly threshold and the evaluate stage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from aecore.config import EvaluateConfig
from aecore.io import write_json
from aecore.models import load_model
from aecore.normalize import Normalizer
from aecore.train import EVAL_BATCH, load_features

QUANTILES = (0.5, 0.9, 0.95, 0.99)


@torch.no_grad()
def encode_and_reconstruct(
    model: nn.Module, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the latents ``(n, k)``, errors per source column ``(n, columns)`` and KL ``(n,)``.

    A numeric column's error is its squared error, a one-hot column's its cross-entropy.
    The KL divergence of each row's posterior from the prior is zero but for a VAE.

    Runs in float32 on the model's device, in large slices, so every caller (the
    export, the evaluation and the registered model) gets the same numbers.
    """
    model.eval()
    device = next(model.parameters()).device
    latents, errors, kls = [], [], []
    for rows in torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).split(EVAL_BATCH):
        rows = rows.to(device)
        z, kl = model.encode_with_kl(rows)
        latents.append(z.float().cpu().numpy())
        errors.append(model.column_errors(model.decoder(z), rows).float().cpu().numpy())
        kls.append(kl.float().cpu().numpy())
    if not latents:
        columns = model.column_errors.columns
        empty = np.zeros((0, model.k), np.float32), np.zeros((0, columns), np.float32)
        return *empty, np.zeros(0, np.float32)
    return np.concatenate(latents), np.concatenate(errors), np.concatenate(kls)


def row_errors(feature_errors: np.ndarray) -> np.ndarray:
    """Mean error per row ``(n,)`` from the errors per source column ``(n, columns)``."""
    return feature_errors.mean(axis=1, dtype=np.float64).astype(np.float32)


def fit_scorer(
    latents: np.ndarray,
    errors: np.ndarray,
    latent_weight: float,
    trim: float = 0.0,
    kl: np.ndarray | None = None,
    kl_weight: float = 0.0,
) -> dict[str, Any]:
    """Fit the anomaly score on the training rows: column error scales, latent density.

    The training rows hold the anomalies too. The score is fitted on all of them, then
    fitted again without the ``trim`` share that it ranks most anomalous, so that the
    anomalies neither inflate the column scales nor widen the latent covariance.

    Args:
        latents: the training rows' latents ``(n, k)`` (``encode_and_reconstruct``).
        errors: their errors per source column ``(n, columns)``.
        latent_weight: ``w``, the weight of the latent distance.
        trim: the share of training rows left out of the second fit.
        kl: the training rows' KL divergence, needed when ``kl_weight`` is not zero.
        kl_weight: ``v``, the weight of the KL divergence (a VAE's; zero for other kinds).

    Returns:
        ``column_scale`` (each column's mean error over the rows of the last fit, floored
        so that a constant column cannot blow up); ``latent_mean``, ``latent_std``,
        ``latent_precision`` (pseudo-inverse of the latent covariance); ``kl_scale`` (the
        mean KL); the weights.
    """
    if kl is None:
        if kl_weight:
            message = "fit_scorer: kl_weight is not zero; pass the training rows' kl"
            raise ValueError(message)
        kl = np.zeros(len(latents))
    scorer = score_moments(latents, errors, kl, latent_weight, kl_weight)
    n, k = latents.shape
    keep = n - int(n * trim)
    if keep < n and keep >= k + 2:  # enough rows left for a covariance
        scores = anomaly_scores(latents, errors, scorer_arrays(scorer), kl=kl)
        # the least typical rows out, a non-finite score (a NaN error) first of all
        order = np.argsort(np.where(np.isfinite(scores), scores, np.inf), kind="stable")
        typical = order[:keep]
        scorer = score_moments(
            latents[typical], errors[typical], kl[typical], latent_weight, kl_weight
        )
    return scorer


def score_moments(
    latents: np.ndarray,
    errors: np.ndarray,
    kl: np.ndarray,
    latent_weight: float,
    kl_weight: float,
) -> dict[str, Any]:
    """The column error scales and latent moments of ``fit_scorer``, over the finite rows."""
    finite = np.isfinite(errors).all(axis=1) & np.isfinite(latents).all(axis=1)
    finite &= np.isfinite(kl)
    if finite.any() and not finite.all():
        latents, errors, kl = latents[finite], errors[finite], kl[finite]
    scale = errors.astype(np.float64).mean(axis=0)
    scale = np.maximum(scale, 1e-3 * scale.mean() + 1e-12)
    kl_scale = float(kl.astype(np.float64).mean()) if len(kl) else 0.0
    z = latents.astype(np.float64)
    covariance = np.atleast_2d(np.cov(z, rowvar=False, ddof=0)) if len(z) > 1 else None
    k = z.shape[1]
    precision = np.eye(k) if covariance is None else np.linalg.pinv(covariance, hermitian=True)
    return {
        "column_scale": scale.tolist(),
        "latent_mean": z.mean(axis=0).tolist(),
        "latent_std": z.std(axis=0).tolist(),
        "latent_precision": precision.tolist(),
        "latent_weight": latent_weight,
        "kl_scale": max(kl_scale, 1e-12),
        "kl_weight": kl_weight,
    }


def scaled_errors(feature_errors: np.ndarray, scorer: Mapping[str, Any]) -> np.ndarray:
    """How unusual each column's error is: the error over its mean training error.

    ``(n, columns)``, about 1 on a typical training row, so that every column counts on
    the same footing and no noisy column drowns the rest.
    """
    return feature_errors / np.asarray(scorer["column_scale"], dtype=np.float32)


def scorer_arrays(scorer: Mapping[str, Any]) -> dict[str, Any]:
    """The scorer (or scoring reference) with its lists as arrays, converted once."""
    arrays = ("column_scale", "latent_mean", "latent_precision")
    return {**scorer, **{key: np.asarray(scorer[key], dtype=np.float64) for key in arrays}}


def anomaly_scores(
    latents: np.ndarray,
    feature_errors: np.ndarray,
    scorer: Mapping[str, Any],
    scaled: np.ndarray | None = None,
    kl: np.ndarray | None = None,
) -> np.ndarray:
    """The anomaly score of each row ``(n,)``: how unlike the training rows it is.

    ``(1 - w) * mean_j scaled_j + w * Mahalanobis² of z / k + v * KL / mean KL``: the
    reconstruction error with every column on the same footing (``scaled_errors``,
    computed here unless given), the density of the latent code and, for a VAE with
    ``v > 0``, the KL divergence of the row's posterior; each term is about 1 on a
    typical training row.
    """
    if scaled is None:
        scaled = scaled_errors(feature_errors, scorer)
    scaled = scaled.mean(axis=1, dtype=np.float64)
    offset = latents - np.asarray(scorer["latent_mean"])
    distance = ((offset @ np.asarray(scorer["latent_precision"])) * offset).sum(axis=1)
    weight = float(scorer["latent_weight"])
    score = (1 - weight) * scaled + weight * distance / max(latents.shape[1], 1)
    if scorer.get("kl_weight"):  # absent from the references of older models
        if kl is None:
            message = "anomaly_scores: the scorer weighs the KL divergence; pass kl"
            raise ValueError(message)
        score += float(scorer["kl_weight"]) * kl / float(scorer["kl_scale"])
    return score.astype(np.float32)


def pca_baseline_mse(x_train: np.ndarray, x_val: np.ndarray, k: int) -> float:
    """Held-out MSE of a rank-``k`` PCA fitted on ``x_train``: the linear baseline."""
    from sklearn.decomposition import PCA

    k = min(k, *x_train.shape)
    pca = PCA(n_components=k, svd_solver="full").fit(x_train.astype(np.float64))
    reconstruction = pca.inverse_transform(pca.transform(x_val.astype(np.float64)))
    return float(np.mean((reconstruction - x_val) ** 2))


def fit_threshold(errors: np.ndarray, quantile: float) -> float:
    """Return the reconstruction error above which a row is anomalous."""
    # a quantile, not mean + 3 std: reconstruction errors are heavy-tailed
    return float(np.quantile(errors, quantile))


def summarize_errors(errors: np.ndarray) -> dict[str, float]:
    """Mean, max and quantiles of per-row errors, as ``recon_error_p99``-style keys."""
    summary = {"recon_error_mean": float(errors.mean()), "recon_error_max": float(errors.max())}
    for q in QUANTILES:
        summary[f"recon_error_p{round(q * 100)}"] = float(np.quantile(errors, q))
    return summary


def binary_labels(labels: np.ndarray | None) -> np.ndarray | None:
    """Return labels as 0/1 ints when they are a binary anomaly label, else ``None``."""
    if labels is None or len(labels) == 0:
        return None
    try:
        values = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if np.isnan(values).any() or not set(np.unique(values)) <= {0.0, 1.0}:
        return None
    return values.astype(np.int64)


def anomaly_metrics(labels: np.ndarray | None, scores: np.ndarray) -> dict[str, float]:
    """AUROC and average precision of ``scores`` when ``labels`` are binary with both classes."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = binary_labels(labels)
    if y is None or len(np.unique(y)) < 2:
        return {}
    return {
        "auroc": float(roc_auc_score(y, scores)),
        "avg_precision": float(average_precision_score(y, scores)),
    }


def read_labels(path: Path, label_col: str | None) -> np.ndarray | None:
    """Return the label column of a Parquet file as NumPy, or ``None`` without one."""
    if not label_col:
        return None
    return pq.read_table(path, columns=[label_col]).column(0).to_numpy(zero_copy_only=False)


def evaluate(
    processed: Path,
    model_path: Path,
    normalizer_path: Path,
    history_path: Path,
    out_dir: Path,
    config: EvaluateConfig,
    image_shape: tuple[int, int] | None = None,
) -> dict[str, float]:
    """The evaluate stage: errors, PCA baseline, threshold, AUROC; metrics, report and plots.

    Everything is measured on the held-out split, except ``anomaly_rate`` (all rows).

    Returns:
        The metrics that are also written to ``out_dir/metrics.json``.
    """
    import json

    from aecore import plots

    x, is_val, schema = load_features(processed)
    features = schema["features"]
    label_col = schema["label_col"]
    labels = read_labels(processed, label_col)
    model = load_model(model_path)
    k = model.k
    latents, feature_errors, kl = encode_and_reconstruct(model, x)
    errors = row_errors(feature_errors)
    val_errors = errors[is_val]
    train = ~is_val
    scorer = fit_scorer(
        latents[train],
        feature_errors[train],
        config.latent_weight,
        config.score_trim,
        kl[train],
        config.kl_weight,
    )
    scores = anomaly_scores(latents, feature_errors, scorer, kl=kl)
    threshold = fit_threshold(scores[is_val], config.threshold_quantile)
    recon_mse = float(feature_errors[is_val].mean(dtype=np.float64))
    pca_mse = pca_baseline_mse(x[~is_val], x[is_val], k)
    val_labels = labels[is_val] if labels is not None else None
    plain = anomaly_metrics(val_labels, val_errors)
    metrics = {
        "rows": len(x),
        "features": len(features),
        "latent_dim": k,
        "recon_mse": recon_mse,
        "pca_recon_mse": pca_mse,
        "recon_mse_vs_pca": recon_mse / pca_mse if pca_mse > 0 else math.inf,
        "threshold": threshold,
        "anomaly_rate": float((scores > threshold).mean()),
        **summarize_errors(val_errors),
        **anomaly_metrics(val_labels, scores[is_val]),
        **{f"{name}_recon_error": value for name, value in plain.items()},
    }
    per_feature = dict(zip(features, feature_errors[is_val].mean(axis=0).tolist(), strict=True))
    history = json.loads(Path(history_path).read_text())["epochs"]
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plots.loss_curves(history, figures / "loss_curves.png")
    plots.error_histogram(scores[is_val], threshold, figures / "error_histogram.png")
    plots.latent_projection(latents, labels, scores, figures / "latent_projection.png")
    if image_shape and math.prod(image_shape) == x.shape[1]:
        sample = np.flatnonzero(is_val)[:10]
        with torch.no_grad():
            reconstructed = model(torch.from_numpy(x[sample])).numpy()
        normalizer = Normalizer.from_json(normalizer_path)
        plots.reconstruction_grid(
            normalizer.inverse_transform(x[sample]),
            normalizer.inverse_transform(reconstructed),
            image_shape,
            figures / "reconstructions.png",
        )
    write_json(
        {name: round(v, 6) for name, v in per_feature.items()}, figures / "feature_errors.json"
    )
    (figures / "report.md").write_text(report_markdown(metrics, per_feature))
    write_plot_data(history, errors[is_val], out_dir)
    reference = scoring_reference(schema, threshold, val_errors, scorer)
    write_json(reference, out_dir / "reference.json")
    write_json(metrics, out_dir / "metrics.json")
    return metrics


def scoring_reference(
    schema: dict, threshold: float, val_errors: np.ndarray, scorer: Mapping[str, Any]
) -> dict:
    """What scoring new rows needs besides the weights and the normalizer.

    The columns and their kinds, the anomaly score's parameters and threshold, and the
    held-out error quantiles and latent moments that a scored batch is compared with.
    """
    return {
        "threshold": threshold,
        "features": schema["features"],
        "types": schema["types"],
        "kinds": schema["kinds"],
        "id_col": schema["id_col"],
        "label_col": schema["label_col"],
        "error_quantiles": np.quantile(val_errors, np.linspace(0, 1, 201)).tolist(),
        **scorer,
    }


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
