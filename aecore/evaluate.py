"""The evaluate stage: the anomaly score and threshold fitted, metrics against the PCA baseline.

Every fit reads bounded samples of rows, so the stage costs the same on any table size.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from aecore.config import EvaluateConfig
from aecore.io import write_json
from aecore.models import EVAL_BATCH, load_model, model_outputs, row_errors
from aecore.normalize import Normalizer, load_samples
from aecore.schema import read_schema
from aecore.scorer import (
    AnomalyScorer,
    FusedScorer,
    Reference,
    blend_rows,
    training_constants,
)

QUANTILES = (0.5, 0.9, 0.95, 0.99)
PLOT_ROWS = 20_000  # points in the latent map: more only hides each other
TOP_EIGEN_INPUTS = 512  # wider inputs: the PCA baseline computes only its k top axes


def pca_baseline_mse(x_train: np.ndarray, x_val: np.ndarray, k: int) -> float:
    """Held-out MSE of a rank-``k`` PCA fitted on ``x_train``: the linear baseline.

    The principal axes are the top eigenvectors of the covariance, accumulated in slices,
    so memory stays ``d x d`` besides the inputs. On a wide table only the top ``k`` are
    computed (Lanczos): all ``d`` of them cost ``d³`` (4 s at 4000 inputs).
    """
    k = min(k, *x_train.shape)
    d = x_train.shape[1]
    mean = x_train.mean(axis=0, dtype=np.float64)
    covariance = np.zeros((d, d))
    for start in range(0, len(x_train), EVAL_BATCH):
        centred = x_train[start : start + EVAL_BATCH].astype(np.float64) - mean
        covariance += centred.T @ centred
    if d > TOP_EIGEN_INPUTS and k < d // 4:
        from scipy.sparse.linalg import eigsh

        basis = eigsh(covariance, k=k, which="LA", v0=np.ones(d))[1]  # v0: deterministic
    else:
        basis = np.linalg.eigh(covariance)[1][:, ::-1][:, :k]
    total = 0.0
    for start in range(0, len(x_val), EVAL_BATCH):
        centred = x_val[start : start + EVAL_BATCH].astype(np.float64) - mean
        total += float((((centred @ basis) @ basis.T - centred) ** 2).sum())
    return total / max(x_val.size, 1)


def fit_threshold(errors: np.ndarray, quantile: float) -> float:
    """Return the reconstruction error above which a row is anomalous."""
    # a quantile, not mean + 3 std: reconstruction errors are heavy-tailed
    return float(np.quantile(errors, quantile))


def anomaly_rate(
    val_scores: np.ndarray,
    train_scores: np.ndarray,
    threshold: float,
    val_rows: int,
    train_rows: int,
) -> float:
    """The share of all rows above the threshold, from samples of each split.

    Each split's rate counts by its rows in the table, so that capped samples of a large
    table do not tilt it (the exact share when the samples hold every row).
    """
    rates = [float((s > threshold).mean()) if len(s) else 0.0 for s in (val_scores, train_scores)]
    return (rates[0] * val_rows + rates[1] * train_rows) / max(val_rows + train_rows, 1)


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


def label_classes(labels: np.ndarray | None) -> bool:
    """Whether labels are classes to colour by: 0/1, or numbers of at most 20 values."""
    if labels is None:
        return False
    numeric = np.issubdtype(np.asarray(labels).dtype, np.number)
    return (numeric and len(np.unique(labels)) <= 20) or binary_labels(labels) is not None


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

    Reads a uniform sample of at most ``evaluate.sample_rows`` training rows (they fit the
    anomaly score and the PCA baseline) and as many held-out rows (they set the
    threshold and give every held-out metric); every row when they fit, as on the tables
    the anomaly benchmark uses. ``evaluate_sampled`` says when they did not.

    Returns:
        The metrics that are also written to ``out_dir/metrics.json``.
    """
    import json

    from aecore.report import Report, write_report

    schema = read_schema(processed)
    features = schema["features"]
    samples = load_samples(processed, {"train": config.sample_rows, "val": config.sample_rows})
    train, val = samples["train"], samples["val"]
    model = load_model(model_path)
    k = model.k
    scorer = make_scorer(config)
    outputs = model_outputs(model, train.x, scorer.every_prefix)  # one split at a time
    if isinstance(scorer, FusedScorer):
        blends = blend_rows(train.x)
        scorer.fit_rows(outputs, train.x, (model_outputs(model, blends), blends))
    else:
        scorer.fit_rows(outputs, train.x)
    train_scores = scorer.score_rows(outputs, train.x)
    train_latents = outputs.embedding.copy()
    outputs = model_outputs(model, val.x, scorer.every_prefix)
    scores = scorer.score_rows(outputs, val.x)
    latents, feature_errors = outputs.embedding.copy(), outputs.errors[0]
    del outputs  # the wider prefixes' errors
    threshold = fit_threshold(scores, config.threshold_quantile)
    val_errors = row_errors(feature_errors)
    recon_mse = float(feature_errors.mean(dtype=np.float64))
    pca_mse = pca_baseline_mse(train.x, val.x, k)
    plain = anomaly_metrics(val.labels, val_errors)
    sampled = len(train.x) < train.total or len(val.x) < val.total
    metrics = {
        "rows": train.total + val.total,
        "features": len(features),
        "latent_dim": k,
        "recon_mse": recon_mse,
        "pca_recon_mse": pca_mse,
        "recon_mse_vs_pca": recon_mse / pca_mse if pca_mse > 0 else math.inf,
        "threshold": threshold,
        "anomaly_rate": anomaly_rate(scores, train_scores, threshold, val.total, train.total),
        "evaluate_train_rows": len(train.x),
        "evaluate_val_rows": len(val.x),
        "evaluate_sampled": int(sampled),
        **summarize_errors(val_errors),
        **anomaly_metrics(val.labels, scores),
        **{f"{name}_recon_error": value for name, value in plain.items()},
    }
    per_feature = dict(zip(features, feature_errors.mean(axis=0).tolist(), strict=True))
    step = max(1, (len(train_latents) + len(latents)) // PLOT_ROWS)  # a uniform subsample
    labels = None
    if train.labels is not None and val.labels is not None:
        labels = np.concatenate([train.labels[::step], val.labels[::step]])
    originals = reconstructions = None
    if image_shape and math.prod(image_shape) == val.x.shape[1]:
        sample = val.x[:10]
        with torch.no_grad():
            output = model(torch.from_numpy(sample)).numpy()
        normalizer = Normalizer.from_json(normalizer_path)
        originals = normalizer.inverse_transform(sample)
        reconstructions = normalizer.inverse_transform(output)
    report = Report(
        metrics=metrics,
        per_feature=per_feature,
        history=json.loads(Path(history_path).read_text())["epochs"],
        scores=scores,
        threshold=threshold,
        errors=val_errors,
        latents=np.concatenate([train_latents[::step], latents[::step]]),
        labels=labels,
        latent_scores=np.concatenate([train_scores[::step], scores[::step]]),
        rows=train.total + val.total,
        classes=label_classes(labels),
        originals=originals,
        reconstructions=reconstructions,
        image_shape=image_shape,
    )
    write_report(report, out_dir)
    constants = training_constants(train.x, features, schema["blocks"])
    reference = scoring_reference(schema, threshold, val_errors, scorer, constants)
    reference.write(out_dir / "reference.json")
    write_json(metrics, out_dir / "metrics.json")
    return metrics


def make_scorer(config: EvaluateConfig) -> AnomalyScorer | FusedScorer:
    """The unfitted anomaly score that ``evaluate.score`` names."""
    if config.score == "fused":
        return FusedScorer(
            config.score_trim,
            kl=config.kl_weight > 0,
            margin=config.view_margin,
            cluster_weight=config.cluster_weight,
            min_agreement=config.cluster_agreement,
        )
    return AnomalyScorer(config.latent_weight, config.kl_weight, config.score_trim)


def scoring_reference(
    schema: dict,
    threshold: float,
    val_errors: np.ndarray,
    scorer: AnomalyScorer | FusedScorer,
    constants: dict[str, dict[str, list]] | None = None,
) -> Reference:
    """What scoring new rows needs besides the weights and the normalizer.

    The columns and their kinds, the anomaly score's parameters and threshold, the
    held-out error quantiles and latent moments that a scored batch is compared with, and
    the columns constant in training (``training_constants``).
    """
    return Reference(
        features=list(schema["features"]),
        types=dict(schema["types"]),
        kinds=dict(schema["kinds"]),
        id_col=schema["id_col"],
        label_col=schema["label_col"],
        threshold=float(threshold),
        error_quantiles=np.quantile(val_errors, np.linspace(0, 1, 201)).tolist(),
        scorer=scorer,
        constants=constants or {},
    )
