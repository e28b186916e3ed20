import dataclasses
import json

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from aecore import io
from aecore.config import ExportConfig
from aecore.errors import AepipeError
from aecore.evaluate import scoring_reference
from aecore.export import export, read_metadata
from aecore.layout import Layout
from aecore.models import encode_and_reconstruct, load_model, row_errors
from aecore.normalize import Normalizer, load_features, normalize
from aecore.schema import ingest, read_schema
from aecore.scorer import AnomalyScorer, Reference, training_constants
from aecore.train import fit_autoencoder
from tests.conftest import data_config, normalize_config


@pytest.fixture
def trained(tmp_path, frame, params):
    """A dataset taken through ingest, normalize and train, with a threshold."""
    layout = Layout(tmp_path, "t")
    source = tmp_path / "t.parquet"
    frame.to_parquet(source)
    ingest(
        data_config(str(source), dataset="t", id_col="id", label_col="label"),
        layout.raw,
    )
    normalize(
        layout.raw,
        layout.processed,
        layout.normalizer,
        normalize_config(method="zscore"),
    )
    model = dataclasses.replace(params.model, latent_dim=3)
    fit_autoencoder(
        layout.processed,
        layout.model,
        layout.history,
        model,
        dataclasses.replace(params.train, epochs=5, device="cpu"),
    )
    features = load_features(layout.processed)
    x, is_val, schema = features.x, features.is_val, read_schema(layout.processed)
    latents, errors, _ = encode_and_reconstruct(load_model(layout.model), x)
    scorer = AnomalyScorer(latent_weight=0.5).fit(latents[~is_val], errors[~is_val])
    constants = training_constants(x[~is_val], schema["features"], schema["blocks"])
    reference = scoring_reference(schema, 0.5, row_errors(errors[is_val]), scorer, constants)
    reference.write(layout.reference)
    return layout


def run_export(layout, quantize=False, metadata=None):
    return export(
        layout.processed,
        layout.model,
        layout.normalizer,
        layout.reference,
        layout.partition("train", "1"),
        ExportConfig(row_group_size=128, quantize=quantize),
        metadata,
        "md5:abc",
    )


def test_latent_table_contract(trained, frame):
    metadata = {"model_uri": "models:/t-autoencoder/1", "model_version": "1", "mlflow_run_id": "r1"}
    path = run_export(trained, metadata=metadata)
    assert path == trained.data / "latents" / "t" / "model=1" / "batch=train" / "part-0.parquet"
    table = pq.read_table(path)
    assert table.column_names == [
        "id",
        "label",
        "z0",
        "z1",
        "z2",
        "recon_error",
        "anomaly_score",
        "is_anomaly",
        "top_features",
    ]
    assert pa.types.is_list(table.schema.field("top_features").type)
    scored = ("z0", "recon_error", "anomaly_score", "is_anomaly")
    assert [str(table.schema.field(c).type) for c in scored] == ["float", "float", "float", "bool"]
    file = pq.ParquetFile(path)
    assert file.metadata.row_group(0).column(0).compression == "ZSTD"
    assert file.metadata.num_row_groups == 2  # 200 rows in groups of 128
    group = file.metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(9)}
    dictionary = {path for path, used in encodings.items() if "RLE_DICTIONARY" in used}
    assert dictionary == {"top_features.list.element"}  # the names repeat, numbers do not
    meta = read_metadata(path)
    assert meta["latent_dim"] == "3" and meta["threshold"] == "0.5"
    assert meta["model_uri"] == "models:/t-autoencoder/1" and meta["mlflow_run_id"] == "r1"
    assert meta["normalizer_sha256"] == io.file_digest(trained.normalizer, "sha256")
    assert meta["data_version"] == "md5:abc" and meta["schema_version"] == "1"
    assert meta["created_at"].endswith("+00:00")
    back = table.to_pandas()
    assert back["id"].tolist() == frame["id"].tolist()
    assert back["is_anomaly"].tolist() == (back["anomaly_score"] > 0.5).tolist()


def test_scores_match_an_independent_recomputation(trained, frame):
    table = pq.read_table(run_export(trained)).to_pandas()
    normalizer = Normalizer.from_json(trained.normalizer)
    model = load_model(trained.model)
    latents, feature_errors, _ = encode_and_reconstruct(model, normalizer.transform(frame))
    np.testing.assert_allclose(table[["z0", "z1", "z2"]].to_numpy(), latents, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["recon_error"], row_errors(feature_errors), rtol=1e-5)
    features = load_features(trained.processed)
    x, is_val = features.x, features.is_val
    np.testing.assert_allclose(x, normalizer.transform(frame))
    # the anomaly score, from its definition: scaled errors and latent Mahalanobis distance
    train_errors, train_z = feature_errors[~is_val], latents[~is_val].astype(np.float64)
    typical = train_errors.mean(axis=0, dtype=np.float64)
    ratio = feature_errors / np.maximum(typical, 1e-3 * typical.mean())  # constant column
    offset = latents - train_z.mean(axis=0)
    distance = np.einsum("ij,jk,ik->i", offset, np.linalg.inv(np.cov(train_z.T, ddof=0)), offset)
    expected = 0.5 * ratio.mean(axis=1) + 0.5 * distance / 3
    np.testing.assert_allclose(table["anomaly_score"], expected, rtol=1e-3)


def test_every_reader_reads_it_and_reruns_replace_the_partition(trained):
    run_export(trained)
    run_export(trained)  # a second training run replaces batch=train
    root = trained.latents / "model=1"
    assert len(pd.read_parquet(root)) == 200
    assert ds.dataset(root, partitioning="hive").to_table().num_rows == 200
    glob = f"{root}/**/*.parquet"
    count, batch = duckdb.sql(
        f"select count(*), min(batch) from read_parquet('{glob}', hive_partitioning=true)"
    ).fetchall()[0]
    assert (count, batch) == (200, "train")
    assert pl.read_parquet(glob, hive_partitioning=True).height == 200


def test_quantized_latents_are_float16(trained):
    table = pq.read_table(run_export(trained, quantize=True))
    assert str(table.schema.field("z0").type) == "halffloat"
    assert str(table.schema.field("recon_error").type) == "float"


def test_failed_export_leaves_the_old_partition(trained):
    path = run_export(trained)
    before = path.read_bytes()
    for broken, reason in (
        (json.dumps({"no": "threshold"}), r"\(no 'features'\)"),
        ("{not json", r"\(Expecting property name"),
    ):
        trained.reference.write_text(broken)
        with pytest.raises(AepipeError, match=f"reference.json: not a scoring reference {reason}"):
            run_export(trained)
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["part-0.parquet"]


def test_top_features_name_the_corrupted_column(trained, frame, tmp_path):
    """Rows with one column pushed far off must name that column first."""
    from aecore.export import top_features

    normalizer = Normalizer.from_json(trained.normalizer)
    model = load_model(trained.model)
    broken = frame.copy()
    broken.loc[:9, "c"] += 40.0
    _, feature_errors, _ = encode_and_reconstruct(model, normalizer.transform(broken))
    names = top_features(feature_errors, normalizer.columns).to_pylist()
    assert all(row[0] == "c" and len(row) == 3 and len(set(row)) == 3 for row in names[:10])
    expected = [
        sorted(normalizer.columns, key=lambda c: -e[normalizer.columns.index(c)])[:3]
        for e in feature_errors[10:20]
    ]
    assert names[10:20] == expected  # the three largest errors, largest first


def test_top_features_name_a_column_constant_in_training_only_when_it_changes(trained, frame):
    """A column the model rebuilds almost exactly is not blamed for the model's drift."""
    from aecore.export import latent_columns

    normalizer = Normalizer.from_json(trained.normalizer)
    reference = Reference.read(trained.reference)
    broken = frame.copy()
    broken.loc[:99, "c"] += np.linspace(-30.0, 30.0, 100)  # off in c: constant unchanged
    broken.loc[100:109, "constant"] = 5.0  # the training constant was 1.0
    columns, _ = latent_columns(load_model(trained.model), normalizer.transform(broken), reference)
    names = columns["top_features"].to_pylist()
    blamed = [i for i, row in enumerate(names) if "constant" in row]
    assert blamed == list(range(100, 110)), f"'constant' blamed in rows {blamed}"
    assert all(row[0] == "constant" for row in names[100:110])


def test_partitions_get_the_users_umask(trained):
    import os

    old = os.umask(0o022)
    try:
        path = run_export(trained)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by other users, as batch=train is
