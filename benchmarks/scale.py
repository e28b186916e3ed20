"""Scale: ``aepipe run`` with its defaults on 1M and 10M rows x 64, as whole processes.

Each size gets a fresh project folder (params.yaml, no git or DVC, so the run measures
the pipeline, not DVC's copies) and a synthetic table from ``aepipe make-data``, all made
and synced to disk before the first run, so that no run pays for another's writeback.
Each run is wrapped in a process of its own, whose children's peak RSS is the run's (the
largest of the aepipe process and Prefect's temporary server).

Stage seconds are those the run logged to MLflow. Targets: peak RSS <= 2 GiB for every
size and the largest size's <= 1.3x the smallest's; ingest, normalize, evaluate and
export grow at most linearly with the rows (each stage's seconds per row at the largest
size <= 1.25x those at the smallest, a margin for noise on a shared machine); the
training loop's time per epoch grows at most linearly with the rows it trains on (capped
by train.max_rows), and reading its samples at most linearly with the table. Prints a
table; exits 1 on a miss.

    .venv/bin/python benchmarks/scale.py [--rows 1000000 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from targets import verdict  # this folder: the one way a benchmark ends

REPO = Path(__file__).resolve().parents[1]
AEPIPE = Path(sys.executable).with_name("aepipe")
RSS_LIMIT_GIB, RSS_GROWTH, LINEAR_SLACK = 2.0, 1.3, 1.25
STAGES = ("ingest", "normalize", "train", "evaluate", "export")
WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": done.returncode, "peak": peak, "wall": time.perf_counter() - start,
                  "out": done.stdout[-6000:], "err": done.stderr[-3000:]}))
"""


def make_project(rows: int, cols: int, root: Path) -> Path:
    """A project folder with params.yaml and ``rows`` x ``cols`` synthetic rows in source/."""
    project = root / f"rows{rows}"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    subprocess.run(
        [str(AEPIPE), "make-data", "source", "--rows", str(rows), "--cols", str(cols)],
        cwd=project,
        check=True,
        capture_output=True,
    )
    return project


def run_size(rows: int, project: Path) -> dict:
    """Time ``aepipe run`` on a project's table, in a process of its own."""
    command = [str(AEPIPE), "run", "--source", "source", "--label-col", "label"]
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", **os.environ},
    )
    measured = json.loads(result.stdout)
    if measured["rc"] != 0:
        print(measured["out"], measured["err"], sep="\n")
        message = f"aepipe run on {rows:,} rows failed"
        raise SystemExit(message)
    history = json.loads((project / "data/models/source/history.json").read_text())["summary"]
    times = stage_seconds(project)
    shutil.rmtree(project / "data", ignore_errors=True)
    return {"rows": rows, **measured, "stages": times, "fit": history}


def stage_seconds(project: Path) -> dict[str, float]:
    """Each stage's seconds as the run logged them to its MLflow store (full precision)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("source").experiment_id])
    return {s: run.data.metrics[f"seconds_{s}"] for s in STAGES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--cols", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sizes = sorted(args.rows)
        projects = [make_project(rows, args.cols, Path(folder)) for rows in sizes]
        os.sync()  # every table on disk before the first run: no writeback under a run
        results = [run_size(rows, project) for rows, project in zip(sizes, projects, strict=True)]
    print(f"{'rows':>12} {'peak RSS':>10} {'wall s':>8} " + " ".join(f"{s:>9}" for s in STAGES))
    for r in results:
        stages = " ".join(f"{r['stages'].get(s, float('nan')):>9.1f}" for s in STAGES)
        print(f"{r['rows']:>12,} {r['peak'] / 2**30:>8.2f}Gi {r['wall']:>8.1f} {stages}")
    for r in results:
        fit = r["fit"]
        print(
            f"{r['rows']:>12,} rows: trained on {fit['train_rows']:,} of "
            f"{fit['train_rows_total']:,} training rows (sampled: {fit['train_sampled']}), "
            f"batch {fit['batch_size']}, "
            f"{fit['epochs_run']} epochs, stopped: {fit['stopped']}, "
            f"{fit['train_rows_per_s']:,.0f} rows/s"
        )
    missed = []
    small, large = results[0], results[-1]
    for r in results:
        if r["peak"] > RSS_LIMIT_GIB * 2**30:
            missed.append(f"{r['rows']:,} rows: peak RSS {r['peak'] / 2**30:.2f} GiB > 2 GiB")
    if len(results) > 1:
        if large["peak"] > RSS_GROWTH * small["peak"]:
            missed.append(f"peak RSS grew {large['peak'] / small['peak']:.2f}x > {RSS_GROWTH}x")
        scale = large["rows"] / small["rows"]
        for stage in ("ingest", "normalize", "evaluate", "export"):
            growth = large["stages"][stage] / max(small["stages"][stage], 1e-9)
            print(f"{stage:>10}: {growth:.2f}x the time for {scale:.0f}x the rows")
            if growth > LINEAR_SLACK * scale:
                missed.append(f"{stage} grew {growth:.1f}x for {scale:.0f}x the rows")
        loop = [r["fit"]["train_seconds"] for r in (small, large)]
        per_epoch = [s / r["fit"]["epochs_run"] for s, r in zip(loop, (small, large), strict=True)]
        rows_used = [r["fit"]["train_rows"] for r in (small, large)]
        growth, allowed = per_epoch[1] / per_epoch[0], rows_used[1] / rows_used[0]
        print(
            f"{'train':>10}: {growth:.2f}x the loop's time per epoch for {allowed:.2f}x "
            "the rows used"
        )
        if growth > LINEAR_SLACK * allowed:
            missed.append(f"train per epoch grew {growth:.1f}x for {allowed:.2f}x the rows used")
        reading = [r["stages"]["train"] - s for r, s in zip((small, large), loop, strict=True)]
        growth = reading[1] / max(reading[0], 1e-9)
        print(f"{'':>10}  {growth:.2f}x the time to read its samples for {scale:.0f}x the rows")
        if growth > LINEAR_SLACK * scale:
            missed.append(f"reading the training samples grew {growth:.1f}x for {scale:.0f}x")
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
