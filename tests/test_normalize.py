import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from aecore import schema
from aecore.errors import AepipeError
from aecore.normalize import (
    BottomK,
    Normalizer,
    NormalizerFit,
    load_features,
    normalize,
    split_keys,
)
from tests.conftest import data_config, make_normalizer, normalize_config

COLUMNS = ["a", "b", "c", "d", "constant"]


@pytest.mark.parametrize(
    ("method", "scaler"),
    [("zscore", StandardScaler()), ("minmax", MinMaxScaler()), ("robust", RobustScaler())],
)
def test_matches_scikit_learn(frame, method, scaler):
    ours = make_normalizer(COLUMNS, method).fit(frame).transform(frame)
    theirs = scaler.fit_transform(frame[COLUMNS])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.dtype == np.float32


def test_iqr_is_the_spread_of_the_bulk_not_of_the_outliers():
    generator = np.random.default_rng(0)
    bulk = generator.normal(5.0, 2.0, size=2000)
    wild = np.concatenate([bulk, generator.normal(500.0, 50.0, size=100)])  # 5 % outliers
    sparse = np.where(generator.random(2100) < 0.1, 1.0, 0.0)  # IQR 0: the std instead
    frame = pd.DataFrame({"wild": wild, "sparse": sparse})
    iqr = make_normalizer(["wild", "sparse"], "iqr").fit(frame)
    q25, q75 = np.percentile(wild, [25, 75])
    np.testing.assert_allclose(iqr.center_, [wild.mean(), sparse.mean()], rtol=1e-12)
    np.testing.assert_allclose(iqr.scale_, [(q75 - q25) / 1.349, sparse.std()], rtol=1e-12)
    assert iqr.scale_[0] == pytest.approx(2.0, rel=0.1)  # the bulk's standard deviation
    zscore = make_normalizer(["wild"], "zscore").fit(frame)
    assert zscore.scale_[0] > 40  # inflated by the outliers: the bulk squeezed towards 0
    bulk_scaled = iqr.transform(frame)[:2000, 0]
    assert bulk_scaled.std() == pytest.approx(1.0, rel=0.1)


def test_constant_column_maps_to_zero(frame):
    normalizer = make_normalizer(COLUMNS).fit(frame)
    assert normalizer.scale_[COLUMNS.index("constant")] == 1.0
    assert np.all(normalizer.transform(frame)[:, -1] == 0)


def test_missing_values_take_the_train_median(frame):
    holes = frame.copy()
    holes.loc[::3, "a"] = np.nan
    normalizer = make_normalizer(COLUMNS).fit(holes)
    assert normalizer.median_[0] == pytest.approx(np.nanmedian(holes["a"]))
    x = normalizer.transform(holes)
    assert np.isfinite(x).all()
    expected = (normalizer.median_[0] - normalizer.center_[0]) / normalizer.scale_[0]
    assert x[0, 0] == pytest.approx(expected, rel=1e-6)


def test_json_round_trip_is_exact(frame, tmp_path):
    normalizer = make_normalizer(COLUMNS, "robust").fit(frame.iloc[:150])
    again = Normalizer.from_json(normalizer.to_json(tmp_path / "n.json"))
    np.testing.assert_array_equal(again.transform(frame), normalizer.transform(frame))
    assert json.loads((tmp_path / "n.json").read_text())["method"] == "robust"
    np.testing.assert_allclose(
        again.inverse_transform(again.transform(frame)), frame[COLUMNS], atol=1e-4
    )


def test_missing_column_is_named(frame):
    normalizer = make_normalizer(COLUMNS).fit(frame)
    with pytest.raises(AepipeError, match=r"new.csv: column 'c' not found"):
        normalizer.transform(frame.drop(columns="c"), source="new.csv")


def test_split_keys_are_a_seeded_function_of_the_id():
    ids = pa.array(np.arange(100_000))
    keys = split_keys(ids, 7)
    np.testing.assert_array_equal(keys, split_keys(ids, 7))
    np.testing.assert_array_equal(keys[500:600], split_keys(ids[500:600], 7))  # per row
    assert not np.array_equal(keys, split_keys(ids, 8))
    assert abs((keys < 0.2).mean() - 0.2) < 0.005  # uniform
    text = split_keys(pa.array([f"id-{i}" for i in range(1000)]), 0)
    assert text.min() >= 0 and text.max() < 1 and len(np.unique(text)) == 1000


def test_bottom_k_is_the_same_sample_whatever_the_order():
    generator = np.random.default_rng(0)
    keys = generator.random(10_000)
    rows = np.arange(10_000)
    whole, shuffled = BottomK(300), BottomK(300)
    whole.add(keys, rows)
    order = generator.permutation(10_000)
    for part in np.array_split(order, 37):
        shuffled.add(keys[part], rows[part])
    expected = np.sort(np.argsort(keys)[:300])
    np.testing.assert_array_equal(whole.result()[0], expected)
    np.testing.assert_array_equal(shuffled.result()[0], expected)
    assert not shuffled.complete and BottomK(10_001).complete is True


@pytest.mark.parametrize("method", ["zscore", "minmax", "robust", "iqr"])
def test_fit_in_batches_equals_the_fit_in_one_piece(frame, method):
    holes = frame.copy()
    holes.loc[::7, "a"] = np.nan
    holes["kind"] = np.where(np.arange(200) % 3 == 0, "x", "y")
    columns = [*COLUMNS, "kind"]
    kinds = {"kind": "categorical"}
    whole = make_normalizer(columns, method, kinds).fit(holes)
    streamed = make_normalizer(columns, method, kinds)
    fitting = NormalizerFit(streamed, sample_rows=1000)
    table = pa.Table.from_pandas(holes, preserve_index=False)
    for start in range(0, 200, 23):
        batch = table.slice(start, 23)
        fitting.add(batch, np.arange(start, start + batch.num_rows) / 200)
    fitting.finish()
    assert streamed.codes == whole.codes
    for name in ("median_", "center_", "scale_"):
        np.testing.assert_allclose(getattr(streamed, name), getattr(whole, name), rtol=1e-12)


def test_medians_from_a_sample_are_close():
    generator = np.random.default_rng(1)
    frame = pd.DataFrame({"a": generator.lognormal(size=50_000)})
    exact = make_normalizer(["a"], "robust").fit(frame)
    sampled = make_normalizer(["a"], "robust")
    fitting = NormalizerFit(sampled, sample_rows=5000)
    fitting.add(pa.Table.from_pandas(frame), generator.random(50_000))
    fitting.finish()
    assert not fitting.sample.complete
    assert sampled.median_[0] == pytest.approx(exact.median_[0], rel=0.05)
    assert sampled.scale_[0] == pytest.approx(exact.scale_[0], rel=0.1)


def test_normalize_stage_fits_on_train_split_only(frame, tmp_path):
    source = tmp_path / "t.parquet"
    frame.to_parquet(source)
    config = data_config(str(source), dataset="t", id_col="id", label_col="label")
    raw = schema.ingest(config, tmp_path / "raw", rows_per_file=64)  # four raw files
    assert len(list(raw.glob("part-*.parquet"))) == 4
    out = tmp_path / "p"
    summary = normalize(
        raw,
        out,
        tmp_path / "n.json",
        normalize_config(method="zscore", val_fraction=0.25, seed=3),
    )
    table = pq.read_table(out).to_pandas()
    is_val = (table["split"] == "val").to_numpy()
    assert is_val.sum() == summary.val_rows and 30 <= is_val.sum() <= 70
    keys = split_keys(pa.array(frame["id"]), 3)
    np.testing.assert_array_equal(is_val, keys < 0.25)  # a function of the row id
    train_rows = frame[~is_val]
    normalizer = Normalizer.from_json(tmp_path / "n.json")
    np.testing.assert_allclose(
        normalizer.center_, train_rows[list(normalizer.columns)].mean(), rtol=1e-9
    )
    np.testing.assert_allclose(
        table["a"], StandardScaler().fit(train_rows[["a"]]).transform(frame[["a"]])[:, 0], atol=1e-5
    )
    assert table["id"].tolist() == frame["id"].tolist()
    assert table["label"].tolist() == frame["label"].tolist()


def test_split_is_stable_when_rows_are_added(frame, tmp_path):
    """Rows keep their side of the split when the table grows: it depends on the id only."""
    config = normalize_config(method="zscore", val_fraction=0.25, seed=3)
    sides = []
    for rows in (120, 200):
        source = tmp_path / f"t{rows}.parquet"
        frame.iloc[:rows].to_parquet(source)
        raw = schema.ingest(
            data_config(str(source), dataset="t", id_col="id", label_col="label"),
            tmp_path / f"raw{rows}",
        )
        normalize(raw, tmp_path / f"p{rows}", tmp_path / f"n{rows}.json", config)
        sides.append(pq.read_table(tmp_path / f"p{rows}").column("split").to_pylist())
    assert sides[1][:120] == sides[0]


def test_sampled_features_are_uniform_and_fixed(frame, tmp_path):
    source = tmp_path / "t.parquet"
    frame.to_parquet(source)
    raw = schema.ingest(
        data_config(str(source), dataset="t", id_col="id", label_col="label"),
        tmp_path / "r",
    )
    out = tmp_path / "p"
    normalize(
        raw,
        out,
        tmp_path / "n.json",
        normalize_config(method="zscore", sample_rows=9),
    )
    everything = load_features(out, "train")
    sample = load_features(out, "train", max_rows=50)
    assert (everything.total, len(everything.x)) == (sample.total, sample.total)
    assert len(sample.x) == 50 and not sample.is_val.any()
    again = load_features(out, "train", max_rows=50)
    np.testing.assert_array_equal(sample.x, again.x)
    rows = {tuple(row) for row in everything.x.round(5)}
    assert all(tuple(row) in rows for row in sample.x.round(5))  # real training rows


def test_a_file_of_held_out_rows_only_and_tiny_samples(tmp_path):
    """A raw file whose rows are all held out; a sample of one row on a tiny table."""
    frame = pd.DataFrame({"id": np.arange(60), "a": np.arange(60.0), "b": np.arange(60.0) % 7})
    keys = split_keys(pa.array(frame["id"]), 0)
    held = frame[keys < 0.2]
    (tmp_path / "src").mkdir()
    frame[keys >= 0.2].to_csv(tmp_path / "src/a.csv", index=False)
    held.iloc[:1].to_csv(tmp_path / "src/b.csv", index=False)  # one row, held out
    raw = schema.ingest(
        data_config(str(tmp_path / "src"), dataset="t", id_col="id"),
        tmp_path / "r",
    )
    config = normalize_config(method="robust", sample_rows=1)
    summary = normalize(raw, tmp_path / "p", tmp_path / "n.json", config)
    assert summary.val_rows == 1 and summary.sampled
    tiny = pd.DataFrame({"id": np.arange(5), "a": np.arange(5.0)})
    tiny.to_csv(tmp_path / "tiny.csv", index=False)
    raw = schema.ingest(
        data_config(str(tmp_path / "tiny.csv"), dataset="t", id_col="id"),
        tmp_path / "t",
    )
    for seed in range(4):
        config = normalize_config(method="zscore", val_fraction=1e-6, seed=seed, sample_rows=1)
        summary = normalize(raw, tmp_path / f"q{seed}", tmp_path / "m.json", config)
        assert (summary.train_rows, summary.val_rows) == (4, 1)


def test_training_refuses_infinite_values_by_column(frame, tmp_path):
    source = tmp_path / "t.csv"
    frame.assign(b=np.where(np.arange(200) % 50 == 0, np.inf, frame["b"])).to_csv(
        source, index=False
    )
    config = data_config(str(source), dataset="t", id_col="id", label_col="label")
    with pytest.raises(AepipeError, match=r"t.csv: column 'b' holds 4 infinite values .* first"):
        schema.ingest(config, tmp_path / "r")  # seen in the first rows: refused at once
    generator = np.random.default_rng(0)
    late = pd.DataFrame(generator.normal(size=(150_000, 2)), columns=["a", "b"])
    late.loc[[149_000, 149_500], "b"] = [np.inf, -np.inf]  # beyond the rows ingest looks at
    late.to_parquet(tmp_path / "late.parquet")
    raw = schema.ingest(
        data_config(str(tmp_path / "late.parquet"), dataset="late"),
        tmp_path / "r",
    )
    config = normalize_config(method="zscore")
    with pytest.raises(AepipeError, match=r"late.parquet: column 'b' holds \d infinite values"):
        normalize(raw, tmp_path / "p", tmp_path / "n.json", config)
    assert not (tmp_path / "p").exists() and not (tmp_path / "n.json").exists()
