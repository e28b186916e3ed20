import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from aecore import io
from aecore.config import DataConfig, NormalizeConfig
from aecore.errors import AepipeError
from aecore.normalize import Normalizer, normalize, split_rows

COLUMNS = ["a", "b", "c", "d", "constant"]


@pytest.mark.parametrize(
    ("method", "scaler"),
    [("zscore", StandardScaler()), ("minmax", MinMaxScaler()), ("robust", RobustScaler())],
)
def test_matches_scikit_learn(frame, method, scaler):
    ours = Normalizer(COLUMNS, method).fit(frame).transform(frame)
    theirs = scaler.fit_transform(frame[COLUMNS])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.dtype == np.float32


def test_constant_column_maps_to_zero(frame):
    normalizer = Normalizer(COLUMNS).fit(frame)
    assert normalizer.scale_[COLUMNS.index("constant")] == 1.0
    assert np.all(normalizer.transform(frame)[:, -1] == 0)


def test_missing_values_take_the_train_median(frame):
    holes = frame.copy()
    holes.loc[::3, "a"] = np.nan
    normalizer = Normalizer(COLUMNS).fit(holes)
    assert normalizer.median_[0] == pytest.approx(np.nanmedian(holes["a"]))
    x = normalizer.transform(holes)
    assert np.isfinite(x).all()
    expected = (normalizer.median_[0] - normalizer.center_[0]) / normalizer.scale_[0]
    assert x[0, 0] == pytest.approx(expected, rel=1e-6)


def test_json_round_trip_is_exact(frame, tmp_path):
    normalizer = Normalizer(COLUMNS, "robust").fit(frame.iloc[:150])
    again = Normalizer.from_json(normalizer.to_json(tmp_path / "n.json"))
    np.testing.assert_array_equal(again.transform(frame), normalizer.transform(frame))
    assert json.loads((tmp_path / "n.json").read_text())["method"] == "robust"
    np.testing.assert_allclose(
        again.inverse_transform(again.transform(frame)), frame[COLUMNS], atol=1e-4
    )


def test_missing_column_is_named(frame):
    normalizer = Normalizer(COLUMNS).fit(frame)
    with pytest.raises(AepipeError, match=r"new.csv: column 'c' not found"):
        normalizer.transform(frame.drop(columns="c"), source="new.csv")


def test_split_is_seeded_and_sized():
    first, again = split_rows(1000, 0.2, 7), split_rows(1000, 0.2, 7)
    np.testing.assert_array_equal(first, again)
    assert first.sum() == 200
    assert not np.array_equal(first, split_rows(1000, 0.2, 8))


def test_normalize_stage_fits_on_train_split_only(frame, tmp_path):
    source = tmp_path / "t.parquet"
    frame.to_parquet(source)
    config = DataConfig("t", str(source), "id", "label", None, None)
    raw = io.ingest(config, tmp_path / "raw.parquet")
    out = normalize(
        raw,
        tmp_path / "p.parquet",
        tmp_path / "n.json",
        NormalizeConfig("zscore", 0.25, 3, 20, 16, True),
    )
    table = pq.read_table(out).to_pandas()
    is_val = (table["split"] == "val").to_numpy()
    assert is_val.sum() == 50
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
