"""``aepipe stage <name>``: one stage as a plain call, for dvc.yaml (no Prefect server).

The export stage also tracks the run in MLflow, with the same calls as the flow, so that
`dvc repro` and `dvc exp run` leave a run, a model version and a latent table as
`aepipe run` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from aecore.config import Params
from aecore.layout import Layout
from aecore.pipeline import run_stage

if TYPE_CHECKING:
    from flows.tracking import Published


def run(name: str, params: Params, root: Path) -> None:
    """Run stage ``name`` with ``params`` under ``root/data``; export also tracks the run."""
    from flows.versioning import journal

    layout = Layout(root, params.data.dataset)
    if name == "export":
        export_and_track(params, layout, root)
    else:
        run_stage(name, params, layout)
    journal(layout)


def export_and_track(params: Params, layout: Layout, root: Path) -> Published:
    """Write the latent table inside an MLflow run that holds the whole pipeline's results."""
    import mlflow

    from aecore.train import FitSummary
    from flows import tracking, versioning

    fit = FitSummary.read(layout.history)
    metrics = json.loads(layout.metrics.read_text())
    tags = {"aepipe.dataset": params.data.dataset, "aepipe.runner": "dvc"}
    with tracking.track_pipeline(params, layout, root, tags) as tracked:
        tracking.log_history(tracked.run_id, json.loads(layout.history.read_text())["epochs"])
        registered = tracked.register()
        table = run_stage("export", params, layout, metadata=registered.metadata)
        summary = tracked.publish(fit, metrics, table, {"train": fit.train_seconds})
        mlflow.set_tags(versioning.describe(root, layout, table).tags)  # dvc.lock holds the rest
    return summary
