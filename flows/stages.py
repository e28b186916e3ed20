"""``aepipe stage <name>``: one stage as a plain call, for dvc.yaml (no Prefect server).

The export stage also tracks the run in MLflow, with the same calls as the flow, so that
`dvc repro` and `dvc exp run` leave a run, a model version and a latent table as
`aepipe run` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from aecore import evaluate, export, io, normalize, train
from aecore.config import Params
from aecore.layout import Layout

STAGES = ("ingest", "normalize", "train", "evaluate", "export")


def run_stage(name: str, params: Params, root: Path) -> None:
    """Run stage ``name`` with ``params``, reading and writing under ``root/data``."""
    layout = Layout(root, params.data.dataset)
    if name == "ingest":
        io.ingest(params.data, layout.raw)
    elif name == "normalize":
        normalize.normalize(layout.raw, layout.processed, layout.normalizer, params.normalize)
    elif name == "train":
        train.fit_autoencoder(
            layout.processed, layout.model, layout.history, params.model, params.train
        )
    elif name == "evaluate":
        evaluate.evaluate(
            layout.processed,
            layout.model,
            layout.normalizer,
            layout.history,
            layout.reports,
            params.evaluate,
            params.data.image_shape,
        )
    else:
        export_and_track(params, layout, root)


def export_and_track(params: Params, layout: Layout, root: Path) -> dict:
    """Write the latent table inside an MLflow run that holds the whole pipeline's results."""
    import mlflow

    from flows import tracking, versioning

    tracking.configure(root)
    history = json.loads(layout.history.read_text())
    metrics = json.loads(layout.metrics.read_text())
    data_version = f"md5:{io.file_digest(layout.raw)}"
    tags = {"aepipe.dataset": params.data.dataset, "aepipe.runner": "dvc"}
    with tracking.start_run(params.data.dataset, root, params.as_flat_dict(), tags) as run:
        tracking.log_history(run.info.run_id, history["epochs"])

        def write_table(metadata: dict[str, str]) -> Path:
            return export.export(
                layout.processed,
                layout.model,
                layout.normalizer,
                layout.metrics,
                layout.partition("train"),
                params.export,
                metadata,
                data_version,
            )

        seconds = {"train": history["summary"]["train_seconds"]}
        summary = tracking.publish(
            layout,
            params.data.dataset,
            history["summary"],
            metrics,
            run.info.run_id,
            write_table,
            seconds,
        )
        mlflow.set_tags(versioning.describe(root, layout).tags)  # dvc.lock holds the rest
    return summary
