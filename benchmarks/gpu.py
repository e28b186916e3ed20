"""GPU training throughput: aepipe's train loop against a bare PyTorch loop, same run.

The benchmark model: d=128, hidden 512-256, k=16 (a dense autoencoder), rows resident on
the device, bf16 autocast. For each batch size (``--batches``), in one process:

1. aepipe's ``train`` (eager, then with ``train.compile``);
2. a bare loop: the same model, random batches gathered from the same tensor, plain MSE,
   fused Adam; nothing else per step (no loss bookkeeping, no budgets);
3. the bare loop's step captured once as a CUDA graph and replayed: the ceiling once
   Python's per-kernel launch cost is gone (for reference, no target).

Prints rows/s and TFLOP/s (3x the forward's 2 * in * out per Linear layer), with the share
of the measured bf16 matmul peak and of the spec sheet's, for known cards. Each loop runs
``--repeats`` times, the loops taking turns, and keeps its best. Target: aepipe eager
>= 0.8x the bare eager loop at every batch size. Exits 1 on a miss; without CUDA
it says so and exits 0, unless ``--device cpu`` asks for a smoke run (no target, no graph).

    benchmarks/gpu.sh            # or: .venv/bin/python benchmarks/gpu.py [--batches 8192]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from train_speed import flops_per_row  # this folder

from aecore.config import load_params
from aecore.models import DenseAutoencoder
from aecore.train import autocast, train

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.8  # aepipe eager / bare eager, rows/s
SPEC_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def matmul_peak(device: torch.device, size: int = 8192) -> float:
    """Measured TFLOP/s of bf16 (float32 on CPU) square matrix products."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = size if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    sync(device)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        for _ in range(10):
            torch.mm(a, b)
        count += 10
        sync(device)
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark_model(device: torch.device) -> DenseAutoencoder:
    torch.manual_seed(0)
    return DenseAutoencoder(128, 16, (512, 256)).to(device)


def aepipe_rows_per_s(x: torch.Tensor, batch: int, steps: int, compile: bool) -> float:
    """Rows per second of ``aecore.train.train`` after a warm-up (and compilation)."""
    params = load_params(REPO / "params.yaml")
    config = dataclasses.replace(
        params.train,
        device=str(x.device),
        batch_size=batch,
        max_batch_size=batch,
        learning_rate=1e-3,
        epochs=10**6,
        patience=10**6,
        max_steps=steps,
        compile=compile,
    )
    model = benchmark_model(x.device)
    train(model, x[: batch * 4], x[:batch], dataclasses.replace(config, max_steps=20))
    sync(x.device)
    result = train(model, x, x[:batch], config)
    return result.steps * batch / result.seconds


def bare_rows_per_s(x: torch.Tensor, batch: int, steps: int, graph: bool) -> float:
    """Rows per second of a bare loop, its step replayed as a CUDA graph when ``graph``."""
    device = x.device
    model = benchmark_model(device)
    fused = device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused, capturable=graph)
    static = x[:batch].clone()

    def step() -> None:
        with autocast(device):
            loss = ((model(static) - static) ** 2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=not graph)

    run: Callable[[], None] = step
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            step()
        run = captured.replay
    order = torch.randperm(len(x), device=device)
    starts = torch.randint(len(x) - batch, (steps + 10,)).tolist()
    for i in range(10):
        static.copy_(x[order[starts[i] : starts[i] + batch]])
        run()
    sync(device)
    start = time.perf_counter()
    for i in range(10, steps + 10):
        static.copy_(x[order[starts[i] : starts[i] + batch]])
        run()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def best_of(loops: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each loop's best rows/s over ``repeats`` rounds, the loops taking turns in each.

    One run of a few hundred steps lasts under a second, and the same loop's speed moves
    by a fifth from one run to the next on a GPU (clocks, the allocator): taking turns and
    keeping each loop's best compares the loops, not the moments they ran at.
    """
    best = dict.fromkeys(loops, 0.0)
    for _ in range(repeats):
        for name, measure in loops.items():
            best[name] = max(best[name], measure())
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=2_097_152)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batches", default="8192,65536", help="comma-separated sizes")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each loop's best")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --device cpu for a smoke run)")
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    x = torch.randn(args.rows, 128, device=device)
    flops = flops_per_row(benchmark_model(device))
    measured = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name), None)
    spec_text = f"{spec:.0f}" if spec else "unknown"
    print(f"device {name}; matmul peak {measured:.1f} TFLOP/s measured, spec {spec_text}")
    print(f"{'batch':>7} {'loop':<22} {'rows/s':>13} {'TFLOP/s':>8} {'of matmul':>10} ", end="")
    print(f"{'of spec':>8} {'/ bare':>7}")
    missed = []
    for batch in (int(b) for b in args.batches.split(",")):
        batch = min(batch, args.rows // 4)
        loops = {
            "aepipe train": partial(aepipe_rows_per_s, x, batch, args.steps, compile=False),
            "aepipe train, compile": partial(aepipe_rows_per_s, x, batch, args.steps, True),
            "bare loop": partial(bare_rows_per_s, x, batch, args.steps, graph=False),
        }
        if cuda:
            loops["bare loop, CUDA graph"] = partial(bare_rows_per_s, x, batch, args.steps, True)
        rows = best_of(loops, args.repeats)
        for loop, speed in rows.items():
            tflops = speed * flops / 1e12
            of_spec = f"{tflops / spec:>8.1%}" if spec else f"{'-':>8}"
            print(
                f"{batch:>7} {loop:<22} {speed:>13,.0f} {tflops:>8.2f} {tflops / measured:>10.1%} "
                f"{of_spec} {speed / rows['bare loop']:>7.2f}"
            )
        ratio = rows["aepipe train"] / rows["bare loop"]
        if ratio < TARGET:
            missed.append(f"batch {batch}: aepipe {ratio:.2f}x the bare loop < {TARGET}x")
    if not cuda:
        print("CPU smoke run: no target")
        return 0
    for line in missed:
        print(f"MISSED: {line}")
    print("target met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
