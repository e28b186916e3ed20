"""Each benchmark runs at a tiny size, so that none of them rots between real runs."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_train_speed_prints_its_table():
    done = bench("benchmarks/train_speed.py", "--rows", "3000", "--epochs", "1")
    assert done.returncode in (0, 1), done.stderr  # tiny tables may miss the targets
    for line in ("matmul peak", "bare loop", "aepipe train stage"):
        assert line in done.stdout
    assert "target" in done.stdout.splitlines()[-1]


@pytest.mark.slow
def test_scale_runs_aepipe():
    done = bench("benchmarks/scale.py", "--rows", "3000", "--cols", "8")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert "peak RSS" in done.stdout and "3,000 rows: trained on" in done.stdout


def test_gpu_benchmark_runs_on_cpu_at_a_tiny_size():
    done = bench(
        "benchmarks/gpu.py",
        "--device",
        "cpu",
        "--rows",
        "4096",
        "--steps",
        "3",
        "--batches",
        "512",
        "--repeats",
        "2",
    )
    assert done.returncode in (0, 1), done.stderr
    assert "rows/s" in done.stdout and "TFLOP/s" in done.stdout


def two_halves(folder: Path) -> None:
    """One tiny set per half (the half is the parity of the number), anomalies far out."""
    import numpy as np

    rng = np.random.default_rng(0)
    for name in ("2_even", "3_odd"):
        x = rng.normal(size=(400, 6))
        y = np.zeros(400, int)
        y[:20] = 1
        x[:20] += 4  # every view should find some of them
        np.savez(folder / f"{name}.npz", X=x, y=y)


def test_score_local_probe_reports_both_halves(tmp_path):
    two_halves(tmp_path)
    cache = tmp_path / "views.npz"
    done = bench("benchmarks/score_local.py", str(tmp_path), "--seeds", "1", "--cache", str(cache))
    assert done.returncode == 0, done.stdout + done.stderr
    means = done.stdout.split("\n\n")[0]
    default = next(line for line in means.splitlines() if line.startswith("default "))
    even, odd = (float(value) for value in default.split()[1:])
    assert even > 0.9 and odd > 0.9, default
    assert "an oracle" in done.stdout
    assert all(f"{name} " in means for name in ("stack.maha", "stack.iforest", "+stack.maha"))
    assert "knn.in anchor<0.15 " in means and "+gm8d.in " in means
    frontier = done.stdout.split("fixed fusions (90)")[1]
    best_even = next(line for line in frontier.splitlines() if line.startswith("best even"))
    assert float(best_even.split()[7]) >= even  # the grid holds the default
    again = bench("benchmarks/score_local.py", "--report", "--cache", str(cache))
    assert again.returncode == 0 and default in again.stdout


def test_score_pair_probe_reads_both_fits_alone_and_together(tmp_path):
    two_halves(tmp_path)
    cache = tmp_path / "pair.npz"
    b = "train.batch_size=64,train.epochs=3"
    args = ("--seeds", "1", "--cache", str(cache), "--a", "train.epochs=3", "--b", b)
    done = bench("benchmarks/score_pair.py", str(tmp_path), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    means = done.stdout.split("\n\n")[-1].splitlines()
    assert means[0].split() == ["a", "b", "max", "mean", "rank", "fit_a", "fit_b"]
    for line in means[2:]:  # even, odd: every score finds the far-out rows
        half, *aurocs = line.split()[:6]
        assert half in ("even", "odd") and min(map(float, aurocs)) > 0.9, line
    again = bench("benchmarks/score_pair.py", "--report", "--cache", str(cache))
    assert (
        again.returncode == 0 and again.stdout.strip() == done.stdout.split("seed 0\n")[-1].strip()
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "wide",
            {
                "1_lowrank1555": (2000, 1555, 40),
                "2_digits1024": (1655, 1024, 36),
                "3_lowrank4000": (2000, 4000, 40),
            },
        ),
        ("small", {"1_wdbc": (367, 30, 10), "2_wine": (129, 13, 10), "3_wdbc77": (77, 30, 7)}),
    ],
)
def test_shapes_writes_labelled_sets_of_its_kind(tmp_path, kind, expected):
    import numpy as np

    done = bench("benchmarks/shapes.py", kind, str(tmp_path))
    assert done.returncode == 0, done.stderr
    found = {}
    for path in sorted(tmp_path.glob("*.npz")):
        data = np.load(path)
        found[path.stem] = (*data["X"].shape, int(data["y"].sum()))
    assert found == expected
