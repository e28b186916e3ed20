"""Scoring new batches with aecore alone: partitions, schema checks, drift, synthetic data."""

import dataclasses

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from aecore.errors import AepipeError
from aecore.export import read_latents, read_metadata
from aecore.layout import Layout
from aecore.models import load_model
from aecore.normalize import Normalizer
from aecore.pipeline import STAGES, run_stage
from aecore.score import score_batch
from aecore.scorer import Reference
from aecore.synthetic import make_data
from tests.conftest import data_config


def train_all_stages(root):
    """Every stage on ``root/train.parquet``: 3 latents, 30 epochs on the CPU."""
    from aecore.config import load_params
    from tests.conftest import REPO

    params = dataclasses.replace(
        load_params(REPO / "params.yaml").with_overrides(
            {
                "model.latent_dim": 3,
                "train.epochs": 30,
                "train.device": "cpu",
                "export.row_group_size": 1000,
            }
        ),
        data=data_config(
            str(root / "train.parquet"), dataset="syn", id_col="key", label_col="label"
        ),
    )
    layout = Layout(root, "syn")
    for stage in STAGES:
        run_stage(stage, params, layout)
    return layout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on synthetic rows with an id column, through the real stages."""
    root = tmp_path_factory.mktemp("score")
    make_data(root / "source", rows=3000, cols=8, anomaly_rate=0.02, seed=5)
    frame = pd.read_parquet(root / "source")
    frame.insert(0, "key", np.arange(10_000, 13_000))
    frame.to_parquet(root / "train.parquet")
    return train_all_stages(root), frame


def run(layout, source, batch_id, batch_rows=700, row_group_size=2048):
    return score_batch(
        str(source),
        load_model(layout.model),
        Normalizer.from_json(layout.normalizer),
        Reference.read(layout.reference),
        layout.partition(batch_id, "0"),
        {"model_uri": "models:/syn-autoencoder/1", "batch_id": batch_id},
        batch_rows=batch_rows,
        row_group_size=row_group_size,
    )


def test_training_rows_score_as_in_the_training_table(trained):
    layout, _ = trained
    summary = run(layout, layout.root / "train.parquet", "again")
    assert summary.rows == 3000
    scored = read_latents(layout.latents, ["again"], "0").set_index("key")
    table = read_latents(layout.latents, ["train"], "0").set_index("key").loc[scored.index]
    z = [c for c in table if c.startswith("z")]
    np.testing.assert_allclose(scored[z], table[z], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scored["recon_error"], table["recon_error"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scored["anomaly_score"], table["anomaly_score"], rtol=1e-3)
    assert (scored["is_anomaly"] == table["is_anomaly"]).mean() > 0.999
    file = pq.ParquetFile(layout.partition("again", "0"))
    groups = [file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)]
    assert groups == [2048, 952]  # batches of 700 rows regrouped into row groups
    assert read_metadata(layout.partition("again", "0"))["batch_id"] == "again"


def test_batches_partition_and_rescoring_replaces(trained, tmp_path):
    layout, frame = trained
    frame.iloc[:1000].to_csv(tmp_path / "a.csv", index=False)
    frame.iloc[1000:1600].to_parquet(tmp_path / "b.parquet")
    run(layout, tmp_path / "a.csv", "a")
    run(layout, tmp_path / "b.parquet", "b")
    run(layout, tmp_path / "a.csv", "a")  # again: replaces, never duplicates
    both = read_latents(layout.latents, ["a", "b"], "0")
    assert both.groupby("batch").size().to_dict() == {"a": 1000, "b": 600}
    assert both["key"].is_unique
    assert set(read_latents(layout.latents, version="0")["batch"]) >= {"train", "a", "b"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="f3"), r"bad.parquet: column 'f3' is missing"),
        (
            lambda f: f.assign(f2=f["f2"].astype(str)),
            r"bad.parquet: column 'f2' is (large_)?string, the model was trained on float",
        ),
        (lambda f: f.drop(columns="key"), r"bad.parquet: id column 'key' is missing"),
    ],
)
def test_schema_drift_fails_and_writes_nothing(trained, tmp_path, change, message):
    layout, frame = trained
    change(frame.head(50)).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(AepipeError, match=message):
        run(layout, tmp_path / "bad.parquet", "bad")
    assert not layout.partition("bad", "0").parent.exists()


def test_extra_columns_are_ignored_with_a_warning(trained, tmp_path):
    layout, frame = trained
    frame.head(50).assign(note="x", score=1.0).to_parquet(tmp_path / "extra.parquet")
    summary = run(layout, tmp_path / "extra.parquet", "extra")
    assert summary.warnings == [
        f"{tmp_path / 'extra.parquet'}: 2 columns not used, the model was not trained on "
        "them: note, score"
    ]
    assert "note" not in pq.read_schema(layout.partition("extra", "0")).names


def test_drift_metrics_see_a_shift(trained, tmp_path):
    layout, frame = trained
    reference = Reference.read(layout.reference)
    frame.iloc[2000:].to_parquet(tmp_path / "same.parquet")
    shifted = frame.iloc[2000:].copy()
    features = [f"f{i}" for i in range(8)]
    shifted[features] = shifted[features] * 1.5 + 1.0
    shifted.to_parquet(tmp_path / "shifted.parquet")
    same = run(layout, tmp_path / "same.parquet", "same").metrics(reference)
    moved = run(layout, tmp_path / "shifted.parquet", "shifted").metrics(reference)
    assert same["rows"] == 1000 and moved["rows"] == 1000
    assert same["drift_ks"] < 0.15 < moved["drift_ks"]
    assert moved["latent_mean_shift"] > same["latent_mean_shift"]
    errors = read_latents(layout.latents, ["same"], "0")["recon_error"]
    assert same["recon_error_mean"] == pytest.approx(errors.mean(), rel=1e-5)
    assert same["recon_error_p99"] == pytest.approx(np.quantile(errors, 0.99), rel=0.03)
    assert same["anomaly_rate"] == pytest.approx(
        read_latents(layout.latents, ["same"], "0")["is_anomaly"].mean()
    )


def test_make_data_streams_files_with_planted_anomalies(tmp_path):
    files = make_data(
        tmp_path / "d", rows=300_000, cols=6, anomaly_rate=0.05, seed=1, rows_per_file=200_000
    )
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert [pq.read_metadata(f).num_rows for f in files] == [200_000, 100_000]
    assert pq.read_metadata(files[0]).num_row_groups == 2  # chunks of 131,072 rows
    frame = pd.read_parquet(tmp_path / "d")
    assert list(frame.columns) == [*(f"f{i}" for i in range(6)), "label"]
    assert frame["label"].mean() == pytest.approx(0.05, abs=0.003)
    make_data(
        tmp_path / "e", rows=300_000, cols=6, anomaly_rate=0.05, seed=1, rows_per_file=200_000
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "e"), frame)  # seeded


def test_rows_with_infinite_values_are_flagged_and_named(trained):
    layout, frame = trained
    batch = frame.iloc[:500].copy()
    batch.loc[[3, 7], "f2"] = np.inf
    batch.loc[9, "f5"] = -np.inf
    batch.to_parquet(layout.root / "inf.parquet")
    summary = run(layout, layout.root / "inf.parquet", "inf")
    scored = read_latents(layout.latents, ["inf"], "0").set_index("key")
    bad = scored.loc[batch["key"].iloc[[3, 7, 9]]]
    assert bad["is_anomaly"].all() and bad["anomaly_score"].isna().all()  # never passed
    assert scored.drop(bad.index)["anomaly_score"].notna().all()
    [warning] = summary.warnings
    assert "3 rows could not be scored (infinite values in 'f2' (2), 'f5' (1))" in warning
    metrics = summary.metrics(Reference.read(layout.reference))
    assert metrics["unscored_rows"] == 3 and np.isfinite(metrics["recon_error_mean"])


def test_same_data_config_and_seed_give_identical_latents(trained, tmp_path):
    """Determinism on CPU: the whole pipeline again, elsewhere, gives the same bytes of z."""
    import shutil

    layout, _ = trained
    shutil.copy(layout.root / "train.parquet", tmp_path / "train.parquet")
    again = train_all_stages(tmp_path)
    first = read_latents(layout.latents, ["train"], "0")
    second = read_latents(again.latents, ["train"], "0")
    z = [c for c in first if c.startswith("z")] + ["recon_error", "anomaly_score", "is_anomaly"]
    pd.testing.assert_frame_equal(first[["key", *z]], second[["key", *z]], check_exact=True)
