"""``aepipe stage <name>``: one stage as a plain call, for dvc.yaml (no Prefect server).

The export stage also tracks the run in MLflow, with the same calls as the flow, so that
`dvc repro` and `dvc exp run` leave a run, a model version and a latent table as
`aepipe run` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from aecore.config import Params
from aecore.layout import Layout
from aecore.pipeline import run_stage


def run(name: str, params: Params, root: Path) -> None:
    """Run stage ``name`` with ``params`` under ``root/data``; export also tracks the run."""
    from flows.versioning import journal

    layout = Layout(root, params.data.dataset)
    if name == "export":
        export_and_track(params, layout, root)
    else:
        run_stage(name, params, layout)
    journal(layout)


def export_and_track(params: Params, layout: Layout, root: Path) -> dict:
    """Write the latent table inside an MLflow run that holds the whole pipeline's results."""
    import mlflow

    from flows import tracking, versioning

    tracking.configure(root)
    history = json.loads(layout.history.read_text())
    metrics = json.loads(layout.metrics.read_text())
    tags = {"aepipe.dataset": params.data.dataset, "aepipe.runner": "dvc"}
    with tracking.start_run(params.data.dataset, root, params.as_flat_dict(), tags) as run:
        tracking.log_history(run.info.run_id, history["epochs"])

        def write_table(metadata: dict[str, str]) -> Path:
            return run_stage("export", params, layout, metadata=metadata)

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
        table = Path(summary["latent_table"])
        mlflow.set_tags(versioning.describe(root, layout, table).tags)  # dvc.lock holds the rest
    return summary
