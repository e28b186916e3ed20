"""Mixed-type tables: strings, booleans, datetimes and missing values, end to end."""

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from aecore.errors import AepipeError
from aecore.export import read_latents
from aecore.models import ColumnErrors
from aecore.normalize import OTHER, Normalizer, load_features, normalize
from aecore.schema import ingest, read_schema
from flows.score import score_batches
from flows.train import train_autoencoder
from tests.conftest import data_config, make_normalizer, normalize_config

SEGMENTS = ["retail", "online", "wholesale", "b2b"]
COLUMNS = ["amount", "qty", "segment", "country", "member", "signup"]


def orders(n: int, seed: int = 0) -> pd.DataFrame:
    """Orders whose amount, quantity and segment go together; some values missing."""
    generator = np.random.default_rng(seed)
    segment = generator.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    qty = generator.integers(1, 5, n) * (1 + 9 * (segment >= 2))
    amount = qty * np.array([10.0, 12.0, 8.0, 7.0])[segment] + generator.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "amount": amount,
            "qty": qty,
            "segment": np.array(SEGMENTS)[segment],
            "country": [f"c{i:02d}" for i in generator.integers(0, 30, n)],
            "member": segment == 1,
            "signup": pd.Timestamp("2026-01-01")
            + pd.to_timedelta(generator.integers(0, 300 * 24, n), unit="h"),
        }
    )
    frame.loc[generator.choice(n, n // 20, replace=False), "amount"] = np.nan
    frame.loc[generator.choice(n, n // 20, replace=False), "segment"] = None
    return frame


def test_columns_get_their_kinds_and_encoders_round_trip(tmp_path):
    source = tmp_path / "orders.csv"
    orders(400).to_csv(source, index=False)
    raw = ingest(
        data_config(str(source), dataset="orders"),
        tmp_path / "r",
    )
    schema = read_schema(raw)
    assert schema["features"] == COLUMNS
    assert schema["kinds"] == {
        "amount": "numeric",
        "qty": "numeric",
        "segment": "categorical",
        "country": "categorical",
        "member": "boolean",
        "signup": "datetime",
    }
    config = normalize_config(method="zscore")
    processed = tmp_path / "p"
    normalize(raw, processed, tmp_path / "n.json", config)
    normalizer = Normalizer.from_json(tmp_path / "n.json")
    names = normalizer.encoded
    assert names[:3] == ["amount", "amount__missing", "qty"]
    assert [n for n in names if n.startswith("segment=")] == [
        *(f"segment={s}" for s in SEGMENTS),
        f"segment={OTHER}",
    ]  # by frequency, then the slot for missing and unseen values
    assert [n for n in names if n.startswith("country")] == [f"country#{i}" for i in range(16)]
    assert "member=True" in names or "member=true" in names
    assert [n for n in names if n.startswith("signup")][:2] == ["signup__t", "signup__dow_sin"]
    assert normalizer.blocks == [
        ("num", 2),
        ("num", 1),
        ("cat", 5),
        ("cat", 16),
        ("cat", 3),
        ("num", 5),
    ]
    x, saved = load_features(processed).x, read_schema(processed)
    assert saved["encoded"] == names and x.shape == (400, len(names))
    frame = pd.read_parquet(raw)
    np.testing.assert_array_equal(normalizer.transform(frame), x)  # the saved encoders
    one_hot = x[:, [i for i, n in enumerate(names) if n.startswith("segment=")]]
    assert (one_hot.sum(axis=1) == 1).all()
    missing = frame["segment"].isna().to_numpy()
    assert (one_hot[missing, -1] == 1).all() and (one_hot[~missing, -1] == 0).all()
    holes = frame["amount"].isna().to_numpy()
    assert (x[holes, 1] == 1).all() and (x[~holes, 1] == 0).all()  # the missing indicator
    assert len(np.unique(x[holes, 0])) == 1  # imputed with the train median
    new = frame.head(3).assign(segment=["retail", "never seen", None], country="zz")
    encoded = normalizer.transform(new)
    assert encoded[1, names.index(f"segment={OTHER}")] == 1
    assert encoded[:, [i for i, n in enumerate(names) if n.startswith("country#")]].sum() == 3


def test_wrong_types_name_the_file_and_the_column():
    frame = orders(100)
    normalizer = make_normalizer(COLUMNS, kinds=dict.fromkeys(COLUMNS[2:5], "categorical")).fit(
        frame.assign(signup=frame["signup"].astype("int64"))
    )
    with pytest.raises(
        AepipeError, match=r"day2.csv: column 'amount' is (large_)?string, the model"
    ):
        normalizer.transform(frame.assign(amount="lots"), source="day2.csv")
    dated = make_normalizer(["signup"], kinds={"signup": "datetime"}).fit(frame)
    assert np.isfinite(dated.transform(frame.assign(signup=frame["signup"].astype(str)))).all()
    with pytest.raises(
        AepipeError, match=r"day2.csv: column 'signup' is (large_)?string, the model"
    ):
        dated.transform(frame.assign(signup="not a date"), source="day2.csv")


def test_a_categorical_column_error_is_its_cross_entropy():
    errors = ColumnErrors([("num", 2), ("cat", 3), ("num", 1)])
    generator = torch.Generator().manual_seed(0)
    output = torch.randn(8, 6, generator=generator)
    x = torch.randn(8, 6, generator=generator)
    category = torch.randint(0, 3, (8,), generator=generator)
    x[:, 2:5] = F.one_hot(category, 3).float()
    got = errors(output, x)
    assert got.shape == (8, 3)  # one error per source column, however wide its encoding
    expected = F.cross_entropy(output[:, 2:5], category, reduction="none")
    torch.testing.assert_close(got[:, 1], expected)
    torch.testing.assert_close(got[:, 0], ((output[:, :2] - x[:, :2]) ** 2).mean(dim=1))
    torch.testing.assert_close(got[:, 2], (output[:, 5] - x[:, 5]) ** 2)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_mixed_csv_through_the_flows_and_the_registered_model(project):
    orders(1500).to_csv(project / "orders.csv", index=False)
    summary = train_autoencoder(source=str(project / "orders.csv"), epochs=40, root=str(project))
    table = read_latents(project / "data/latents/orders")
    assert len(table) == 1500 and table["anomaly_score"].notna().all()
    assert set(np.concatenate(table["top_features"].to_numpy())) <= set(COLUMNS)
    reference = json.loads((project / "data/reports/orders/reference.json").read_text())
    assert reference["kinds"]["signup"] == "datetime"

    day = orders(200, seed=5)
    day = day[day["segment"].isin(["retail", "wholesale"])].reset_index(drop=True)
    day.loc[:9, "member"] = True  # only online orders are members
    day.loc[10:14, "country"] = "new country"  # unseen values are not errors
    day.to_csv(project / "day1.csv", index=False)
    [result] = score_batches(source=str(project / "day1.csv"), dataset="orders", root=str(project))
    scored = read_latents(project / "data/latents/orders", ["day1"])
    assert result["metrics"]["rows"] == len(day) == len(scored)
    flagged = scored["top_features"].head(10).map(lambda names: names[0])
    assert (flagged == "member").mean() >= 0.8
    assert scored["anomaly_score"].head(10).min() > scored["anomaly_score"].iloc[10:].median()

    model = mlflow.pyfunc.load_model(summary["model_uri"])  # raw rows, as a consumer has them
    predicted = model.predict(day.head(20))
    np.testing.assert_allclose(
        predicted["anomaly_score"], scored["anomaly_score"].head(20), rtol=1e-4
    )
    with pytest.raises(Exception, match="column '?qty"):  # MLflow's schema check names it
        model.predict(day.head(5).assign(qty="many"))


def test_mixed_kinds_accept_arrow_tables():
    frame = orders(50)
    normalizer = make_normalizer(
        COLUMNS,
        kinds={
            "segment": "categorical",
            "country": "categorical",
            "member": "boolean",
            "signup": "datetime",
            "amount": "numeric",
            "qty": "numeric",
        },
    ).fit(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    np.testing.assert_array_equal(normalizer.transform(table), normalizer.transform(frame))
