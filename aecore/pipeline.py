"""The five stages by name: a typed table that wires each stage to its files.

The Prefect flow, `aepipe stage` (dvc.yaml) and the tests all run stages through here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aecore import evaluate, export, io, normalize, schema, train
from aecore.config import Params
from aecore.layout import UNREGISTERED, Layout


@dataclass(frozen=True)
class StageCall:
    """Everything a stage may read besides its files.

    ``on_epoch`` is the train stage's per-epoch callback; ``metadata`` the export stage's
    extra ``aepipe.*`` metadata (model URI, run id, and ``model_version``, the partition's
    ``model=`` key); ``map_parts`` runs the per-file work of ingest, normalize and export
    (the flow's Dask mapper; ``None``: one file after another, in this process);
    ``resume`` lets the train stage continue from its checkpoint.
    """

    params: Params
    layout: Layout
    on_epoch: train.OnEpoch | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    map_parts: schema.Mapper | None = None
    resume: bool = False


def ingest(call: StageCall) -> Path:
    """Read the source into ``data/raw/<dataset>``."""
    return schema.ingest(call.params.data, call.layout.raw, map_parts=call.map_parts)


def normalize_stage(call: StageCall) -> normalize.NormalizeSummary:
    """Fit the normalizer and encode every row into ``data/processed/<dataset>``."""
    layout = call.layout
    mapper = call.map_parts or schema.serial_map
    return normalize.normalize(
        layout.raw, layout.processed, layout.normalizer, call.params.normalize, mapper
    )


def train_stage(call: StageCall) -> train.FitSummary:
    """Train the autoencoder into ``data/models/<dataset>``."""
    layout, params = call.layout, call.params
    return train.fit_autoencoder(
        layout.processed,
        layout.model,
        layout.history,
        params.model,
        params.train,
        call.on_epoch,
        layout.checkpoint,
        call.resume,
    )


def evaluate_stage(call: StageCall) -> dict[str, float]:
    """Fit the anomaly score; write metrics, the scoring reference and the report."""
    layout, params = call.layout, call.params
    return evaluate.evaluate(
        layout.processed,
        layout.model,
        layout.normalizer,
        layout.history,
        layout.reports,
        params.evaluate,
        params.data.image_shape,
    )


def export_stage(call: StageCall) -> Path:
    """Write the latent table's training partition, and export.json that records it."""
    layout = call.layout
    version = call.metadata.get("model_version", UNREGISTERED)
    table = export.export(
        layout.processed,
        layout.model,
        layout.normalizer,
        layout.reference,
        layout.partition("train", version),
        call.params.export,
        call.metadata,
        f"md5:{io.data_digest(layout.raw)}",
        call.map_parts,
    )
    record = {
        "partition": table.relative_to(layout.data).as_posix(),
        "md5": io.file_digest(table),
        **export.read_metadata(table),
    }
    io.write_json({k: v for k, v in record.items() if k != "created_at"}, layout.export_record)
    return table


STAGES: dict[str, Callable[[StageCall], object]] = {
    "ingest": ingest,
    "normalize": normalize_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "export": export_stage,
}


def run_stage(
    name: str,
    params: Params,
    layout: Layout,
    on_epoch: train.OnEpoch | None = None,
    metadata: Mapping[str, str] | None = None,
    map_parts: schema.Mapper | None = None,
    resume: bool = False,
) -> object:
    """Run stage ``name``: read its inputs and write its outputs under ``layout``.

    The arguments are those of ``StageCall``; the result is the stage function's.

    Raises:
        ValueError: ``name`` is not one of ``STAGES``.
    """
    if name not in STAGES:
        message = f"unknown stage {name!r}; one of {', '.join(STAGES)}"
        raise ValueError(message)
    call = StageCall(params, layout, on_epoch, metadata or {}, map_parts, resume)
    return STAGES[name](call)
