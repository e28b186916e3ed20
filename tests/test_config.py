from pathlib import Path

import pytest

from aecore.config import check_name, dataset_name, load_params, preset, resolve_params
from aecore.errors import AepipeError
from aecore.layout import Layout
from tests.conftest import REPO, write_project


def test_defaults_load_and_flatten(params):
    flat = params.as_flat_dict()
    assert flat["model.latent_dim"] == params.model.latent_dim
    assert flat["data.image_shape"] == [8, 8]
    assert set(k.split(".")[0] for k in flat) == {
        "data",
        "normalize",
        "model",
        "train",
        "evaluate",
        "export",
        "score",
        "orchestration",
        "schedule",
    }


def test_overrides_replace_single_keys(params):
    changed = params.with_overrides({"train.epochs": 7, "model.hidden": [16, 8], "x.y": None})
    assert changed.train.epochs == 7
    assert changed.model.hidden == (16, 8)
    assert changed.train.batch_size == params.train.batch_size


def test_unknown_and_invalid_parameters_are_named(params):
    with pytest.raises(AepipeError, match="unknown parameter 'train.epoch'"):
        params.with_overrides({"train.epoch": 3})
    with pytest.raises(AepipeError, match="normalize.method"):
        params.with_overrides({"normalize.method": "whiten"})
    with pytest.raises(AepipeError, match="train.epochs: expected int"):
        params.with_overrides({"train.epochs": "many"})


def test_missing_params_file_says_where(tmp_path):
    with pytest.raises(AepipeError, match="params.yaml: parameters file not found"):
        load_params(tmp_path / "params.yaml")


def test_missing_key_is_named(tmp_path):
    lines = (REPO / "params.yaml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("  patience:"))
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(AepipeError, match="train.patience is missing"):
        load_params(tmp_path / "params.yaml")


def test_new_source_resets_the_demo_settings(tmp_path):
    write_project(tmp_path)
    params = resolve_params(tmp_path / "params.yaml", source="in/sales 2024.csv")
    assert params.data.dataset == "sales-2024"
    assert params.data.label_col is None and params.data.image_shape is None
    same = resolve_params(tmp_path / "params.yaml", label_col="y", dataset="mine")
    assert same.data.source == "sklearn:digits" and same.data.label_col == "y"
    assert same.data.dataset == "mine"


@pytest.mark.parametrize(
    ("source", "name"),
    [("data/inbox/*.csv", "inbox"), ("s3://k:s@bucket/x.parquet?t=1", "x"), ("./", "dataset")],
)
def test_dataset_name_from_source(source, name):
    assert dataset_name(source) == name


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", "", "x" * 65, "a\\b"])
def test_names_cannot_leave_data(name, tmp_path):
    assert check_name(name) is not None
    with pytest.raises(AepipeError):
        Layout(tmp_path, name)


def test_batch_ids_cannot_leave_the_dataset(tmp_path):
    layout = Layout(tmp_path, "digits")
    partition = layout.partition("2026-11-24", "3")
    assert partition.parent.relative_to(layout.latents).as_posix() == "model=3/batch=2026-11-24"
    with pytest.raises(AepipeError, match="batch id"):
        layout.partition("../../x", "3")
    with pytest.raises(AepipeError, match="model version"):
        layout.partition("x", "../3")


def test_layout_stays_under_data(tmp_path):
    layout = Layout(tmp_path, "d")
    for path in (layout.raw, layout.processed, layout.model, layout.metrics, layout.latents):
        assert Path(path).is_relative_to(tmp_path / "data")


def test_latent_dim_zero_is_refused_not_taken_as_auto(params):
    with pytest.raises(AepipeError, match=r"model.latent_dim = 0 is invalid; expected null"):
        params.with_overrides({"model.latent_dim": 0})


def test_a_preset_sets_its_keys_under_the_runs_own(tmp_path):
    path = REPO / "params.yaml"
    compress = resolve_params(path, preset_name="compress", overrides={"train.epochs": 5})
    expected = preset(path, "compress")
    assert compress.model.kind == expected["model.kind"] == "dense"
    assert list(compress.model.hidden) == expected["model.hidden"]
    assert compress.train.learning_rate == expected["train.learning_rate"]
    assert compress.train.epochs == 5  # an option or --set wins over the preset
    assert resolve_params(path).model.kind == "denoising"  # no preset: the defaults
    with pytest.raises(AepipeError, match=r"no preset 'fast' \(presets: compress\)"):
        resolve_params(path, preset_name="fast")
    broken = tmp_path / "params.yaml"
    broken.write_text(path.read_text().replace("train.patience: 50", "train.patiense: 50"))
    with pytest.raises(AepipeError, match="preset compress: unknown parameter 'train.patiense'"):
        resolve_params(broken, preset_name="compress")
