"""Configuration: frozen sections loaded from params.yaml, the one home of every default."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aecore.errors import AepipeError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NORMALIZE_METHODS = ("zscore", "minmax", "robust", "iqr")
DEVICES = ("auto", "cpu", "cuda", "mps")
TASK_RUNNERS = ("local", "dask")
SCORES = ("fused", "weighted")  # evaluate.score: aecore.scorer's two anomaly scores
KIND_NAMES = ("dense", "denoising", "sparse", "vae")  # aecore.models.MODEL_KINDS' keys


@dataclass(frozen=True)
class DataConfig:
    """Where the rows come from and which columns play which role."""

    dataset: str
    source: str
    id_col: str | None
    label_col: str | None
    features: tuple[str, ...] | None
    image_shape: tuple[int, int] | None


@dataclass(frozen=True)
class NormalizeConfig:
    """How features are scaled, and the train/validation split."""

    method: str
    val_fraction: float
    seed: int
    max_onehot: int
    hash_buckets: int
    missing_indicator: bool
    sample_rows: int


@dataclass(frozen=True)
class ModelConfig:
    """The autoencoder's kind and shape."""

    kind: str
    latent_dim: int | None
    hidden: tuple[int, ...] | None
    noise_std: float
    mask_rate: float
    sparsity_weight: float
    beta: float
    kl_warmup_epochs: int
    nested: bool


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    trim_fraction: float
    patience: int
    lr_schedule: str
    grad_clip: float
    device: str
    seed: int
    max_rows: int
    max_val_rows: int
    max_batch_size: int
    max_steps: int
    max_minutes: float
    compile: bool
    checkpoint_seconds: float


@dataclass(frozen=True)
class EvaluateConfig:
    """How the anomaly score and its threshold are fitted."""

    threshold_quantile: float
    score: str
    latent_weight: float
    kl_weight: float
    score_trim: float
    view_margin: float
    cluster_weight: float
    cluster_agreement: float
    sample_rows: int


@dataclass(frozen=True)
class ExportConfig:
    """How the latent table is written."""

    row_group_size: int
    quantize: bool


@dataclass(frozen=True)
class ScoreConfig:
    """How new batches are scored."""

    inbox: str
    batch_rows: int
    drift_limit: float
    fail_on_drift: bool


@dataclass(frozen=True)
class OrchestrationConfig:
    """Where the per-file and per-partition work runs."""

    task_runner: str
    dask_address: str | None


@dataclass(frozen=True)
class ScheduleConfig:
    """Cron schedules of the served deployments."""

    train_cron: str
    score_cron: str


@dataclass(frozen=True)
class Params:
    """Every setting of a run, one frozen section per stage."""

    data: DataConfig
    normalize: NormalizeConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    score: ScoreConfig
    orchestration: OrchestrationConfig
    schedule: ScheduleConfig

    def as_flat_dict(self) -> dict[str, Any]:
        """Return the settings as dotted keys, e.g. ``{"model.latent_dim": 8}``."""
        flat: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            for key, value in dataclasses.asdict(getattr(self, section.name)).items():
                flat[f"{section.name}.{key}"] = list(value) if isinstance(value, tuple) else value
        return flat

    def with_overrides(self, overrides: Mapping[str, Any], origin: str = "override") -> Params:
        """Return a copy with dotted keys replaced; ``None`` values are skipped."""
        sections = {
            f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
        }
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            if section not in sections or key not in sections[section]:
                message = f"{origin}: unknown parameter {dotted!r}"
                raise AepipeError(message)
            sections[section][key] = value
        return params_from_dict(sections, origin)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or CLI value to the field's declared type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, list | tuple):
            message = f"{where}: expected a list, got {value!r}"
            raise AepipeError(message)
        return tuple(_coerce(item, args[0], where) for item in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        message = f"{where}: expected true or false, got {value!r}"
        raise AepipeError(message)
    try:
        return annotation(value)
    except (TypeError, ValueError) as error:
        message = f"{where}: expected {annotation.__name__}, got {value!r}"
        raise AepipeError(message) from error


def params_from_dict(raw: Mapping[str, Any], origin: str = "params.yaml") -> Params:
    """Build and validate ``Params`` from a nested mapping (the parsed params.yaml)."""
    hints = typing.get_type_hints(Params)
    sections: dict[str, Any] = {}
    for name, section_type in hints.items():
        values = raw.get(name)
        if not isinstance(values, Mapping):
            message = f"{origin}: section {name!r} is missing"
            raise AepipeError(message)
        field_hints = typing.get_type_hints(section_type)
        unknown = set(values) - set(field_hints)
        if unknown:
            message = f"{origin}: unknown parameter {name}.{sorted(unknown)[0]}"
            raise AepipeError(message)
        kwargs = {}
        for key, annotation in field_hints.items():
            if key not in values:
                message = f"{origin}: parameter {name}.{key} is missing"
                raise AepipeError(message)
            kwargs[key] = _coerce(values[key], annotation, f"{origin}: {name}.{key}")
        sections[name] = section_type(**kwargs)
    params = Params(**sections)
    validate(params, origin)
    return params


def validate(params: Params, origin: str = "params.yaml") -> None:
    """Raise ``AepipeError`` naming the first parameter that is out of range."""
    checks = [
        (
            "data.dataset",
            check_name(params.data.dataset) is None,
            "a name of letters, digits, _ . -",
        ),
        ("normalize.method", params.normalize.method in NORMALIZE_METHODS, str(NORMALIZE_METHODS)),
        ("normalize.val_fraction", 0 < params.normalize.val_fraction < 1, "between 0 and 1"),
        ("model.kind", params.model.kind in KIND_NAMES, str(KIND_NAMES)),
        ("normalize.max_onehot", params.normalize.max_onehot >= 1, "at least 1"),
        ("normalize.hash_buckets", params.normalize.hash_buckets >= 2, "at least 2"),
        (
            "model.latent_dim",
            params.model.latent_dim is None or params.model.latent_dim >= 1,
            "null (auto) or at least 1",
        ),
        ("train.trim_fraction", 0 <= params.train.trim_fraction < 1, "in [0, 1)"),
        ("evaluate.score", params.evaluate.score in SCORES, str(SCORES)),
        ("evaluate.latent_weight", 0 <= params.evaluate.latent_weight <= 1, "in [0, 1]"),
        ("evaluate.kl_weight", params.evaluate.kl_weight >= 0, "0 or more"),
        ("evaluate.score_trim", 0 <= params.evaluate.score_trim < 1, "in [0, 1)"),
        ("evaluate.view_margin", 0 <= params.evaluate.view_margin <= 1, "in [0, 1]"),
        ("evaluate.cluster_weight", params.evaluate.cluster_weight >= 0, "0 or more"),
        ("evaluate.cluster_agreement", -1 <= params.evaluate.cluster_agreement <= 1, "in [-1, 1]"),
        ("train.epochs", params.train.epochs >= 1, "at least 1"),
        ("train.batch_size", params.train.batch_size >= 1, "at least 1"),
        (
            "train.max_batch_size",
            params.train.max_batch_size >= params.train.batch_size,
            "at least train.batch_size",
        ),
        ("train.max_rows", params.train.max_rows >= 1, "at least 1"),
        ("train.max_val_rows", params.train.max_val_rows >= 1, "at least 1"),
        ("train.max_steps", params.train.max_steps >= 0, "0 (no limit) or more"),
        ("train.max_minutes", params.train.max_minutes >= 0, "0 (no limit) or more"),
        ("train.checkpoint_seconds", params.train.checkpoint_seconds > 0, "above 0"),
        ("normalize.sample_rows", params.normalize.sample_rows >= 1, "at least 1"),
        ("evaluate.sample_rows", params.evaluate.sample_rows >= 1, "at least 1"),
        (
            "orchestration.task_runner",
            params.orchestration.task_runner in TASK_RUNNERS,
            str(TASK_RUNNERS),
        ),
        ("train.learning_rate", params.train.learning_rate > 0, "positive"),
        ("train.patience", params.train.patience >= 1, "at least 1"),
        ("train.lr_schedule", params.train.lr_schedule in ("none", "cosine"), "none or cosine"),
        ("train.grad_clip", params.train.grad_clip >= 0, "0 (off) or more"),
        ("model.mask_rate", 0 <= params.model.mask_rate < 1, "in [0, 1)"),
        ("model.beta", params.model.beta >= 0, "0 or more"),
        ("train.device", params.train.device.split(":")[0] in DEVICES, str(DEVICES)),
        ("evaluate.threshold_quantile", 0 < params.evaluate.threshold_quantile < 1, "in (0, 1)"),
        ("export.row_group_size", params.export.row_group_size >= 1, "at least 1"),
        ("score.batch_rows", params.score.batch_rows >= 1, "at least 1"),
        ("score.drift_limit", 0 < params.score.drift_limit <= 1, "in (0, 1]"),
    ]
    if written_secret(params.data.source):
        message = (
            f"{origin}: data.source holds a password or a signed query string; write "
            "${NAME} in its place and set environment variable NAME, so that no file, "
            "run or log keeps it"
        )
        raise AepipeError(message)
    for key, ok, expected in checks:
        if not ok:
            section, _, field = key.partition(".")
            value = getattr(getattr(params, section), field)
            message = f"{origin}: {key} = {value!r} is invalid; expected {expected}"
            raise AepipeError(message)


def written_secret(source: str) -> bool:
    """Whether a URL holds credentials or a query string written out (not ``${NAME}``)."""
    if "://" not in source:
        return False
    bare = re.sub(r"\$\{\w+\}", "", source)
    password = re.search(r"://[^/\s:@]*:([^/\s]*)@", bare)  # user:password@
    return bool(password and password[1]) or bool(re.search(r"\?(?!\*\*\*$).", bare))


def check_name(name: str) -> str | None:
    """Return why ``name`` cannot name a dataset or batch, or ``None`` when it can.

    Names become folder names under ``data/``, so separators and ``..`` are refused.
    """
    if not NAME_PATTERN.match(name) or ".." in name:
        return f"{name!r} is not a valid name: use letters, digits, '_', '.', '-' (at most 64)"
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    """The parsed parameters file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as error:
        message = f"{path}: parameters file not found; run from the project root or pass --params"
        raise AepipeError(message) from error
    except yaml.YAMLError as error:
        message = f"{path}: not valid YAML: {str(error).splitlines()[0]}"
        raise AepipeError(message) from error
    return raw or {}


def preset(path: Path, name: str) -> dict[str, Any]:
    """The dotted keys of preset ``name`` in the parameters file's ``presets`` section."""
    presets = read_yaml(path).get("presets") or {}
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none"
        message = f"{path}: no preset {name!r} (presets: {known})"
        raise AepipeError(message)
    return dict(presets[name])


def load_params(path: Path, overrides: Mapping[str, Any] | None = None) -> Params:
    """Load params.yaml, then apply dotted-key overrides (``None`` keeps the file's value)."""
    params = params_from_dict(read_yaml(path), str(path))
    return params.with_overrides(overrides or {}, str(path)) if overrides else params


def dataset_name(source: str) -> str:
    """Derive a dataset name from a source: the file's stem, or the folder's name for a glob."""
    path = re.sub(r"\?.*$", "", source).split("://")[-1]
    parts = [p for p in path.split("/") if p and not any(c in p for c in "*?[")]
    stem = parts[-1].split(".")[0] if parts else ""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64]
    return name or "dataset"


def resolve_params(
    path: Path,
    source: str | None = None,
    dataset: str | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset_name: str | None = None,
) -> Params:
    """Load params.yaml and apply a run's options.

    A ``source`` other than the file's resets the keys that describe the file's source
    (dataset name, id and label columns, feature list, image shape), so that the demo's
    settings never leak onto the user's data. A preset's keys come before ``overrides``.
    """
    params = load_params(path)
    if preset_name:
        params = params.with_overrides(preset(path, preset_name), f"{path}: preset {preset_name}")
    data = params.data
    if source is not None and source != data.source:
        data = dataclasses.replace(
            data,
            source=source,
            dataset=dataset_name(source),
            id_col=None,
            label_col=None,
            features=None,
            image_shape=None,
        )
    data = dataclasses.replace(
        data,
        dataset=dataset or data.dataset,
        id_col=id_col or data.id_col,
        label_col=label_col or data.label_col,
    )
    return dataclasses.replace(params, data=data).with_overrides(overrides or {}, str(path))
