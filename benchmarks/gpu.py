"""GPU training throughput of aepipe's loop against the card's bf16 peak.

The benchmark model: d=128, hidden 512-256, k=16 (a dense autoencoder), batch 8192, data
resident on the device, bf16 autocast, optionally ``torch.compile`` (``--compile``).
Prints rows/s and TFLOP/s (3x the forward's 2 * in * out per Linear layer) against the
measured bf16 matmul peak and, for known cards, the spec sheet's dense bf16 peak.
Target: >= 30% of the peak (the spec sheet's when the card is known). Exits 1 on a miss;
without CUDA it says so and exits 0, unless ``--device cpu`` asks for a CPU run.

    benchmarks/gpu.sh            # or: .venv/bin/python benchmarks/gpu.py [--compile]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from aecore.config import load_params
from aecore.models import DenseAutoencoder
from aecore.train import train

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.30
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=2_097_152)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --device cpu for a smoke run)")
        return 0
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    params = load_params(REPO / "params.yaml")
    batch = 8192
    config = dataclasses.replace(
        params.train,
        device=args.device,
        batch_size=batch,
        max_batch_size=batch,
        learning_rate=1e-3,
        epochs=10**6,
        patience=10**6,
        max_steps=args.steps,
        compile=args.compile,
    )
    torch.manual_seed(0)
    x = torch.randn(args.rows, 128, device=device)
    model = DenseAutoencoder(128, 16, (512, 256)).to(device)
    warm = dataclasses.replace(config, max_steps=min(20, args.steps))
    train(model, x[: batch * 4], x[:batch], warm)  # compile and warm up
    sync(device)
    result = train(model, x, x[:batch], config)
    sync(device)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    flops = 3 * sum(2 * m.in_features * m.out_features for m in linear)
    rows_per_s = result.steps * batch / result.seconds
    achieved = rows_per_s * flops / 1e12
    measured = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name), None)
    peak = spec or measured
    print(f"device {name}; batch {batch}; {result.steps} steps; compile {args.compile}")
    print(f"{'rows/s':>14} {'TFLOP/s':>9} {'matmul TFLOP/s':>15} {'spec bf16':>10} {'of peak':>8}")
    spec_text = f"{spec:.0f}" if spec else "unknown"
    print(
        f"{rows_per_s:>14,.0f} {achieved:>9.2f} {measured:>15.1f} {spec_text:>10} "
        f"{achieved / peak:>8.1%}"
    )
    if device.type != "cuda":
        print("CPU smoke run: no target")
        return 0
    met = achieved >= TARGET * peak
    print("target met" if met else f"MISSED: {achieved / peak:.1%} of peak < {TARGET:.0%}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
