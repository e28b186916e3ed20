import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from aecore.evaluate import (
    anomaly_metrics,
    binary_labels,
    fit_threshold,
    pca_baseline_mse,
    row_errors,
)
from aecore.models import (
    DenseAutoencoder,
    VariationalAutoencoder,
    encode_and_reconstruct,
    kl_divergence,
    load_model,
)
from aecore.scorer import AnomalyScorer
from aecore.train import train
from tests.conftest import data_config


def fit_scorer(latents, errors, latent_weight, trim=0.0, kl=None, kl_weight=0.0):
    return AnomalyScorer(latent_weight, kl_weight, trim).fit(latents, errors, kl)


def anomaly_scores(latents, errors, scorer, kl=None):
    return scorer.score(latents, errors, kl)


def test_pca_baseline_matches_a_direct_svd():
    generator = np.random.default_rng(0)
    x = generator.normal(size=(300, 8)) @ generator.normal(size=(8, 8))
    train_rows, val_rows = x[:240], x[240:]
    mean = train_rows.mean(axis=0)
    _, _, vt = np.linalg.svd(train_rows - mean, full_matrices=False)
    basis = vt[:3]
    reconstruction = (val_rows - mean) @ basis.T @ basis + mean
    expected = np.mean((reconstruction - val_rows) ** 2)
    assert pca_baseline_mse(train_rows, val_rows, 3) == pytest.approx(expected, rel=1e-9)


def test_threshold_is_a_quantile():
    errors = np.arange(1, 101, dtype=float)
    assert fit_threshold(errors, 0.9) == pytest.approx(np.quantile(errors, 0.9))


def test_binary_labels_only():
    assert binary_labels(np.array([0, 1, 1])).tolist() == [0, 1, 1]
    assert binary_labels(np.array([0.0, 1.0])) is not None
    assert binary_labels(np.arange(10)) is None  # digit classes are not anomaly labels
    assert binary_labels(np.array(["a", "b"], dtype=object)) is None
    assert anomaly_metrics(np.zeros(5), np.arange(5.0)) == {}  # one class: undefined


def test_errors_per_row_and_feature():
    model = DenseAutoencoder(4, 2, (8,))
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    latents, feature_errors, _ = encode_and_reconstruct(model, x)
    with torch.no_grad():
        expected = (model(torch.from_numpy(x)) - torch.from_numpy(x)) ** 2
    np.testing.assert_allclose(feature_errors, expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(row_errors(feature_errors), expected.mean(dim=1).numpy(), rtol=1e-6)
    assert latents.shape == (10, 2)


def test_planted_outliers_are_found(params):
    """Low-rank rows with 3% planted outliers: reconstruction error must rank them high."""
    generator = np.random.default_rng(2)
    x = generator.normal(size=(800, 3)) @ generator.normal(size=(3, 12))
    labels = np.zeros(800, dtype=int)
    rows = generator.choice(800, 24, replace=False)
    x[rows] += generator.normal(0, 3, (24, 12))
    labels[rows] = 1
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    torch.manual_seed(0)
    model = DenseAutoencoder(12, 3, (32, 16))
    config = params.train.__class__(**{**params.train.__dict__, "epochs": 60, "device": "cpu"})
    train(model, torch.from_numpy(x[:640]), torch.from_numpy(x[640:]), config)
    errors = row_errors(encode_and_reconstruct(model, x)[1])
    metrics = anomaly_metrics(labels, errors)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, errors))
    assert metrics["avg_precision"] == pytest.approx(average_precision_score(labels, errors))
    assert metrics["auroc"] > 0.95


def test_anomaly_score_stays_finite_on_constant_and_near_constant_columns():
    generator = np.random.default_rng(4)
    errors = np.abs(generator.normal(size=(500, 4))).astype(np.float32)
    errors[:, 1] = 0.0  # a constant column: reconstructed exactly in training
    errors[:, 2] = 1e-30  # a near-constant one
    latents = generator.normal(size=(500, 2)).astype(np.float32)
    latents[:, 1] = 3.0  # a collapsed latent: singular covariance
    scorer = fit_scorer(latents, errors, latent_weight=0.4)
    new = errors[:5].copy()
    new[:, 1] = [0.0, 1e-6, 1.0, 1e6, 0.0]  # the constant column moves
    scores = anomaly_scores(latents[:5], new, scorer)
    assert np.isfinite(scores).all()
    assert scores[3] > scores[2] > scores[0]  # and it counts, in order
    assert np.isfinite(anomaly_scores(latents, errors, scorer)).all()


def test_latent_distance_flags_rows_that_reconstruct_well():
    """Rows reconstructed as well as any, but far from every training latent."""
    generator = np.random.default_rng(5)
    latents = generator.normal(size=(1000, 3))
    errors = np.abs(generator.normal(size=(1000, 6)))
    scorer = fit_scorer(latents, errors, latent_weight=0.4)
    typical = anomaly_scores(latents, errors, scorer)
    assert typical.mean() == pytest.approx(1.0, abs=0.1)  # each term about 1 on training rows
    far = latents[:10] + np.array([8.0, 0.0, 0.0])
    assert (
        anomaly_scores(far, errors[:10], scorer) > anomaly_scores(latents, errors, scorer).max()
    ).all()
    blind = fit_scorer(latents, errors, latent_weight=0.0)
    np.testing.assert_allclose(
        anomaly_scores(far, errors[:10], blind), anomaly_scores(latents[:10], errors[:10], blind)
    )


def test_score_fit_leaves_the_anomalies_in_the_training_rows_out():
    """A fifth of the training rows are anomalies: trimmed, the score is fitted on the rest."""
    generator = np.random.default_rng(6)
    latents = generator.normal(size=(1000, 2))
    errors = np.abs(generator.normal(size=(1000, 4)))
    latents[:150] += 6.0  # contamination, far in the latent space and badly reconstructed
    errors[:150] *= 10.0
    clean = fit_scorer(latents[150:], errors[150:], latent_weight=0.5)
    plain = fit_scorer(latents, errors, latent_weight=0.5)
    trimmed = fit_scorer(latents, errors, latent_weight=0.5, trim=0.2)
    # untrimmed, the anomalies inflate the column scales and widen the latent covariance
    assert np.min(np.divide(plain.column_scale_, clean.column_scale_)) > 2
    np.testing.assert_allclose(trimmed.column_scale_, clean.column_scale_, rtol=0.2)
    np.testing.assert_allclose(trimmed.latent_mean_, clean.latent_mean_, atol=0.2)
    # so the anomalies score far higher against the inliers than without trimming
    normal, anomalous = slice(150, None), slice(None, 150)

    def margin(scorer: AnomalyScorer) -> float:
        scores = anomaly_scores(latents, errors, scorer)
        return float(np.median(scores[anomalous]) / np.median(scores[normal]))

    assert margin(trimmed) > 3 * margin(plain)


def test_score_fit_survives_broken_rows_and_tiny_tables():
    generator = np.random.default_rng(8)
    latents = generator.normal(size=(200, 2))
    errors = np.abs(generator.normal(size=(200, 3)))
    errors[7, 1] = np.nan  # one broken row: trimmed first, not spread to every moment
    scorer = fit_scorer(latents, errors, latent_weight=0.5, trim=0.2)
    for key in ("column_scale", "latent_mean", "latent_precision"):
        assert np.isfinite(getattr(scorer, f"{key}_")).all(), key
    for n in (1, 2, 3):  # too few rows to refit a covariance: the first fit stands
        tiny = fit_scorer(latents[:n], errors[:n], latent_weight=0.5, trim=0.2)
        assert tiny.to_dict() == fit_scorer(latents[:n], errors[:n], latent_weight=0.5).to_dict()
    with pytest.raises(ValueError, match="pass the training rows' kl"):
        fit_scorer(latents, errors, latent_weight=0.5, kl_weight=0.3)


def test_vae_score_adds_its_kl_divergence_when_asked():
    torch.manual_seed(0)
    vae = VariationalAutoencoder(6, 2, (16,), beta=1.0, kl_warmup_epochs=10)
    x = np.random.default_rng(7).normal(size=(300, 6)).astype(np.float32)
    latents, errors, kl = encode_and_reconstruct(vae, x)
    with torch.no_grad():
        expected = kl_divergence(*vae.moments(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(kl, expected, rtol=1e-6)
    assert (kl > 0).all()
    again = encode_and_reconstruct(vae, x)  # the posterior mean, never a sample
    for first, second in zip((latents, errors, kl), again, strict=True):
        np.testing.assert_array_equal(first, second)
    assert not encode_and_reconstruct(DenseAutoencoder(6, 2, (16,)), x)[2].any()

    without = fit_scorer(latents, errors, latent_weight=0.5)
    with_kl = fit_scorer(latents, errors, latent_weight=0.5, kl=kl, kl_weight=0.3)
    assert with_kl.kl_scale_ == pytest.approx(kl.mean(), rel=1e-6)
    np.testing.assert_allclose(
        anomaly_scores(latents, errors, with_kl, kl=kl),
        anomaly_scores(latents, errors, without) + 0.3 * kl / kl.mean(),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="pass kl"):
        anomaly_scores(latents, errors, with_kl)


def test_evaluate_is_exact_on_tables_that_fit_its_samples(params, planted, tmp_path):
    """Streamed in 128-row files, sampled below the limits: the same numbers as all rows."""
    import dataclasses

    from sklearn.decomposition import PCA

    from aecore.evaluate import make_scorer
    from aecore.layout import Layout
    from aecore.models import model_outputs
    from aecore.normalize import load_features, normalize
    from aecore.pipeline import run_stage
    from aecore.schema import ingest
    from aecore.scorer import Reference, blend_rows
    from aecore.train import fit_autoencoder

    layout = Layout(tmp_path, "planted")
    config = data_config(str(planted), dataset="planted", label_col="is_anomaly_label")
    ingest(config, layout.raw, rows_per_file=128)
    normalize(layout.raw, layout.processed, layout.normalizer, params.normalize)
    fit_autoencoder(
        layout.processed,
        layout.model,
        layout.history,
        params.model,
        dataclasses.replace(params.train, epochs=3, device="cpu"),
    )
    metrics = run_stage("evaluate", params, layout)
    assert metrics["rows"] == 600 and metrics["evaluate_sampled"] == 0
    # independently, from every row at once
    every = load_features(layout.processed)
    x, is_val = every.x, every.is_val
    model = load_model(layout.model)
    e = params.evaluate
    outputs = model_outputs(model, x[~is_val])
    blends = blend_rows(x[~is_val])  # they choose the views that count
    scorer = make_scorer(e).fit_rows(outputs, x[~is_val], (model_outputs(model, blends), blends))
    reference = Reference.read(layout.reference)
    assert reference.scorer.kept_ == scorer.kept_ and any(reference.scorer.kept_)
    assert len(reference.scorer.sensitivity_) == len(scorer.kept_) - 1
    # the cluster distance: its centres go with the reference, and it chose the same views
    assert reference.scorer.cluster_weight == e.cluster_weight > 0
    assert reference.scorer.clusters_ is not None and scorer.clusters_ is not None
    np.testing.assert_allclose(reference.scorer.clusters_.centres_, scorer.clusters_.centres_)
    assert reference.scorer.agreement_ == pytest.approx(scorer.agreement_)
    val_outputs = model_outputs(model, x[is_val])
    scores = scorer.score_rows(val_outputs, x[is_val])
    np.testing.assert_allclose(reference.scorer.score_rows(val_outputs, x[is_val]), scores)
    assert metrics["threshold"] == pytest.approx(
        np.quantile(scores, e.threshold_quantile), rel=1e-6
    )
    pca = PCA(n_components=model.k).fit(x[~is_val].astype(np.float64))
    expected = np.mean((pca.inverse_transform(pca.transform(x[is_val])) - x[is_val]) ** 2)
    assert metrics["pca_recon_mse"] == pytest.approx(expected, rel=1e-6)


def test_anomaly_rate_weighs_each_split_by_its_rows():
    from aecore.evaluate import anomaly_rate

    val, train = np.array([0.0, 2.0]), np.array([0.0, 0.0, 0.0, 2.0])  # 50% and 25% flagged
    assert anomaly_rate(val, train, 1.0, 2, 4) == pytest.approx(2 / 6)  # every row: exact
    assert anomaly_rate(val, train, 1.0, 2_000_000, 8_000_000) == pytest.approx(0.3)


def test_the_pca_baseline_of_a_wide_table_takes_only_its_top_axes(monkeypatch):
    """Past 512 inputs the top k axes come from Lanczos, not all d: the same error."""
    from aecore import evaluate

    generator = np.random.default_rng(0)
    basis = generator.normal(size=(6, 700))
    x = generator.normal(size=(500, 6)) @ basis + 0.1 * generator.normal(size=(500, 700))
    train, val = x[:400].astype(np.float32), x[400:].astype(np.float32)
    top = evaluate.pca_baseline_mse(train, val, 8)
    monkeypatch.setattr(evaluate, "TOP_EIGEN_INPUTS", 10**9)  # every axis, as below 512
    assert top == pytest.approx(evaluate.pca_baseline_mse(train, val, 8), rel=1e-9)
    assert top < 0.02  # six axes hold the rows: the rest is the noise's 0.01
