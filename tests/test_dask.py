"""Scale-out: the same flow on a 2-worker Dask cluster writes what the sequential run writes."""

import asyncio
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from distributed import LocalCluster

from aecore.config import OrchestrationConfig
from aecore.export import read_latents
from flows.runners import with_task_runner
from flows.score import score_batches
from flows.train import train_autoencoder
from tests.conftest import write_project

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local:
        yield local


def many_files(folder, files=3, rows=250):
    folder.mkdir()
    generator = np.random.default_rng(0)
    for number in range(files):
        x = generator.normal(size=(rows, 3)) @ generator.normal(size=(3, 6))
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
        frame["label"] = (generator.random(rows) < 0.05).astype(int)
        frame.to_csv(folder / f"day-{number}.csv", index=False)
    return folder


def run(root, source, orchestration):
    flow = with_task_runner(train_autoencoder, orchestration)
    overrides = {
        "orchestration.task_runner": orchestration.task_runner,
        "orchestration.dask_address": orchestration.dask_address,
    }
    return flow(source=str(source), label_col="label", overrides=overrides, root=str(root))


def test_dask_run_writes_what_the_sequential_run_writes(tmp_path, cluster):
    source = many_files(tmp_path / "source")
    roots = {}
    for name, orchestration in (
        ("local", OrchestrationConfig(task_runner="local", dask_address=None)),
        ("dask", OrchestrationConfig(task_runner="dask", dask_address=cluster.scheduler_address)),
    ):
        (tmp_path / name).mkdir()
        roots[name] = write_project(tmp_path / name, train__epochs=3)
        run(roots[name], source, orchestration)
    for stage in ("raw/source", "processed/source/features"):
        files = {
            name: sorted((root / "data" / stage).glob("*.parquet")) for name, root in roots.items()
        }
        assert [p.name for p in files["local"]] == [p.name for p in files["dask"]]
        assert len(files["local"]) == 3  # one per source file
        for local, dask in zip(files["local"], files["dask"], strict=True):
            assert pq.read_table(local).equals(pq.read_table(dask))
    tables = {
        name: pd.read_parquet(root / "data/latents/source/model=1/batch=train/part-0.parquet")
        for name, root in roots.items()
    }
    assert tables["local"]["row_id"].tolist() == list(range(750))
    pd.testing.assert_frame_equal(tables["local"], tables["dask"], rtol=1e-6)
    assert task_names_of_last_flow_run() >= {"ingest-file-0", "transform-file-2", "score-file-1"}
    check_scoring(roots, source, cluster)


def check_scoring(roots, source, cluster):
    """A many-file batch and an inbox, scored on Dask, as they are scored in order."""
    scored = {}
    for name, root in roots.items():
        (root / "data/inbox/source").mkdir(parents=True)
        for path in sorted(source.glob("*.csv"))[:2]:
            (root / "data/inbox/source" / path.name).write_bytes(path.read_bytes())
        orchestration = OrchestrationConfig(
            task_runner=name, dask_address=cluster.scheduler_address if name == "dask" else None
        )
        flow = with_task_runner(score_batches, orchestration)
        overrides = {
            "orchestration.task_runner": name,
            "orchestration.dask_address": orchestration.dask_address,
        }
        [batch] = flow(
            source=str(source),
            batch_id="all",
            overrides=overrides,
            root=str(root),
            dataset="source",
        )
        inbox = flow(overrides=overrides, root=str(root), dataset="source")
        assert [r["batch_id"] for r in inbox] == ["day-0", "day-1"]
        assert batch["metrics"]["rows"] == 750
        scored[name] = read_latents(root / "data/latents/source", ["all", "day-0", "day-1"])
        assert flow(overrides=overrides, root=str(root), dataset="source") == []  # scored once
    assert scored["local"].query("batch == 'all'")["row_id"].tolist() == list(range(750))
    pd.testing.assert_frame_equal(scored["local"], scored["dask"], rtol=1e-6)
    # a broken file among good ones: the good ones are scored and recorded, then it fails
    root, inbox = roots["dask"], roots["dask"] / "data/inbox/source"
    (inbox / "day-2.csv").write_bytes((source / "day-2.csv").read_bytes())
    pd.read_csv(source / "day-2.csv").drop(columns="f3").to_csv(inbox / "bad.csv", index=False)
    overrides = {
        "orchestration.task_runner": "dask",
        "orchestration.dask_address": cluster.scheduler_address,
    }
    flow = with_task_runner(
        score_batches,
        OrchestrationConfig(task_runner="dask", dask_address=cluster.scheduler_address),
    )
    state = flow(overrides=overrides, root=str(root), dataset="source", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="bad.csv: column 'f3' is missing"):
        state.result()
    ledger = json.loads((root / "data/scored/source.json").read_text())
    assert sorted(entry["batch_id"] for entry in ledger.values()) == ["day-0", "day-1", "day-2"]
    assert (root / "data/latents/source/model=1/batch=day-2/part-0.parquet").exists()


def task_names_of_last_flow_run() -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    async def names() -> set[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id]))
            )
            return {t.name for t in tasks}

    return asyncio.run(names())
