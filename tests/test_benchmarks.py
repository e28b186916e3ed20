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
    done = bench("benchmarks/gpu.py", "--device", "cpu", "--rows", "4096", "--steps", "3")
    assert done.returncode in (0, 1), done.stderr
    assert "rows/s" in done.stdout and "TFLOP/s" in done.stdout
