"""Scoring speed and memory: `aepipe score` against a bare loop of the same model.

Trains a 64-64-32-8 model on 100k synthetic rows x 64 features, then scores 1M and 4M
rows two ways, each as a whole process: `aepipe score`, and a bare loop (pyarrow.dataset
batches -> numpy -> torch forward -> one ParquetWriter), the practical upper bound. The
model is nested (params.yaml), so both rebuild each row from its three latent prefixes;
aepipe also computes the fused anomaly score's views, the tails and the surprises.

Measured on 2026-11-25 (2-core CPU, two runs): aepipe 364k and 324k rows/s marginal,
0.66x and 0.55x the bare loop. The earlier default (one latent width, the weighted
score) scored 606k rows/s, 0.74x.

Targets (printed as a table; exit 1 when one is missed):
- marginal throughput (4M - 1M) / (t4M - t1M): aepipe >= 0.5 x bare, and >= 300k rows/s;
- peak RSS at 4M <= 1.3 x peak RSS at 1M, for both.

    .venv/bin/python benchmarks/score_speed.py [--small]   # --small: 0.25M and 1M rows
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run a command under GNU time; return (wall seconds, peak RSS in MB)."""
    stats = cwd / "time.txt"
    subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *command],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
    )
    wall, rss_kb = stats.read_text().split()[-2:]
    return float(wall), float(rss_kb) / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="0.25M and 1M rows (a quick look)")
    sizes = (250_000, 1_000_000) if parser.parse_args().small else (1_000_000, 4_000_000)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env |= {"PREFECT_HOME": str(root / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        aepipe = str(BIN / "aepipe")
        subprocess.run(
            [
                aepipe,
                "make-data",
                "--rows",
                "100000",
                "--cols",
                "64",
                "--seed",
                "1",
                str(root / "synth"),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                aepipe,
                "run",
                "--source",
                "synth",
                "--latent-dim",
                "8",
                "--epochs",
                "5",
                "--set",
                "model.hidden=[64, 32]",
            ],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
        rows = {}
        for n in sizes:
            subprocess.run(
                [
                    aepipe,
                    "make-data",
                    "--rows",
                    str(n),
                    "--cols",
                    "64",
                    "--seed",
                    "2",
                    str(root / f"batch{n}"),
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            rows[n] = {
                "aepipe": timed(
                    [
                        aepipe,
                        "score",
                        "--source",
                        f"batch{n}",
                        "--dataset",
                        "synth",
                        "--batch-id",
                        f"b{n}",
                    ],
                    root,
                    env,
                ),
                "bare": timed(
                    [
                        sys.executable,
                        str(REPO / "benchmarks" / "bare_score.py"),
                        "data/models/synth/model.pt",
                        "data/processed/synth/normalizer.json",
                        f"batch{n}",
                        f"bare{n}.parquet",
                    ],
                    root,
                    env,
                ),
            }
            shutil.rmtree(root / f"batch{n}")
    small, large = sizes
    print(f"{'way':<8} {'rows':>9} {'wall s':>7} {'rows/s':>10} {'peak RSS MB':>12}")
    for n in sizes:
        for way in ("aepipe", "bare"):
            wall, rss = rows[n][way]
            print(f"{way:<8} {n:>9,} {wall:>7.1f} {n / wall:>10,.0f} {rss:>12.0f}")
    marginal = {
        w: (large - small) / (rows[large][w][0] - rows[small][w][0]) for w in ("aepipe", "bare")
    }
    growth = {w: rows[large][w][1] / rows[small][w][1] for w in ("aepipe", "bare")}
    checks = [
        (
            "aepipe marginal rows/s",
            f"{marginal['aepipe']:,.0f}",
            ">= 300,000",
            marginal["aepipe"] >= 300_000,
        ),
        ("bare marginal rows/s", f"{marginal['bare']:,.0f}", "", True),
        (
            "aepipe / bare throughput",
            f"{marginal['aepipe'] / marginal['bare']:.2f}",
            ">= 0.5",
            marginal["aepipe"] >= 0.5 * marginal["bare"],
        ),
        ("aepipe RSS large / small", f"{growth['aepipe']:.2f}", "<= 1.3", growth["aepipe"] <= 1.3),
        ("bare RSS large / small", f"{growth['bare']:.2f}", "<= 1.3", growth["bare"] <= 1.3),
    ]
    print()
    for name, value, target, ok in checks:
        print(f"{name:<26} {value:>10} {target:>12} {'ok' if ok else 'MISSED'}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
