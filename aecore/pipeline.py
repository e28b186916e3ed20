"""The five stages by name: the one place that wires each stage to its files.

The Prefect flow, `aepipe stage` (dvc.yaml) and the tests all run stages through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aecore import evaluate, export, io, normalize, schema, train
from aecore.config import Params
from aecore.layout import UNREGISTERED, Layout

STAGES = ("ingest", "normalize", "train", "evaluate", "export")


def run_stage(
    name: str,
    params: Params,
    layout: Layout,
    on_epoch: train.OnEpoch | None = None,
    metadata: Mapping[str, str] | None = None,
    map_parts: schema.Mapper | None = None,
    resume: bool = False,
) -> Any:
    """Run stage ``name``: read its inputs and write its outputs under ``layout``.

    Args:
        name: one of ``STAGES``.
        params: the run's settings.
        layout: the dataset's files.
        on_epoch: the train stage's per-epoch callback.
        metadata: the export stage's extra ``aepipe.*`` metadata (model URI, run id, and
            ``model_version``, the partition's ``model=`` key).
        map_parts: runs the per-file work of ingest, normalize and export (the flow's
            Dask mapper); ``None``: one file after another, in this process.
        resume: the train stage continues from its checkpoint, when one fits.

    Returns:
        The stage function's result: a path, or the train or evaluate summary.
    """
    if name == "ingest":
        return schema.ingest(params.data, layout.raw, map_parts=map_parts)
    if name == "normalize":
        return normalize.normalize(
            layout.raw,
            layout.processed,
            layout.normalizer,
            params.normalize,
            map_parts or schema.serial_map,
        )
    if name == "train":
        return train.fit_autoencoder(
            layout.processed,
            layout.model,
            layout.history,
            params.model,
            params.train,
            on_epoch,
            layout.checkpoint,
            resume,
        )
    if name == "evaluate":
        return evaluate.evaluate(
            layout.processed,
            layout.model,
            layout.normalizer,
            layout.history,
            layout.reports,
            params.evaluate,
            params.data.image_shape,
        )
    if name == "export":
        version = (metadata or {}).get("model_version", UNREGISTERED)
        table = export.export(
            layout.processed,
            layout.model,
            layout.normalizer,
            layout.reference,
            layout.partition("train", version),
            params.export,
            metadata,
            f"md5:{io.data_digest(layout.raw)}",
            map_parts,
        )
        record = {
            "partition": table.relative_to(layout.data).as_posix(),
            "md5": io.file_digest(table),
            **export.read_metadata(table),
        }
        io.write_json({k: v for k, v in record.items() if k != "created_at"}, layout.export_record)
        return table
    message = f"unknown stage {name!r}; one of {', '.join(STAGES)}"
    raise ValueError(message)
