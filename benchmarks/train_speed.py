"""Training speed: aepipe's train stage against a bare PyTorch loop and the matmul peak.

In one process, on a synthetic table (``make_data``, 1M rows x 64 by default):
1. the float32 matmul peak of this machine (``torch.mm`` of 2048 x 2048);
2. a bare loop: the same model, batch size, denoising noise and Adam, with the training
   rows already one tensor, no validation;
3. aepipe's train stage (``fit_autoencoder`` with params.yaml's defaults), rows per
   second of its loop (its per-epoch validation included).

FLOPs per row are counted from the Linear layers (forward 2 * in * out, backward twice
that). The loop and the stage run twice, alternating; the best of each counts. Targets:
aepipe >= 0.9x the bare loop at the same batch size, and >= 25% of the measured matmul
peak at the defaults. Prints a table; exits 1 when a target is missed.

    .venv/bin/python benchmarks/train_speed.py [--rows 1000000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from targets import verdict  # this folder: the one way a benchmark ends

from aecore.config import load_params
from aecore.layout import Layout
from aecore.models import build_model
from aecore.normalize import load_features
from aecore.pipeline import run_stage
from aecore.synthetic import make_data
from aecore.train import batch_plan, fit_autoencoder

REPO = Path(__file__).resolve().parents[1]
VS_BARE, OF_PEAK = 0.9, 0.25
ROUNDS = 2


def matmul_peak(seconds: float = 2.0, size: int = 2048) -> float:
    """Float32 GFLOP/s of repeated square matrix products, best of a few rounds."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = 0.0
    for _ in range(3):
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            torch.mm(a, b)
            count += 1
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_row(model: torch.nn.Module) -> float:
    """Training FLOPs per row: 3x the forward pass's 2 * in * out per Linear layer."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return 3 * sum(2 * m.in_features * m.out_features for m in linear)


def bare_loop(x: torch.Tensor, model: torch.nn.Module, batch: int, lr: float, epochs: int) -> float:
    """Rows per second of the plainest loop that trains the same model the same way."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # as aepipe's
    noise, mask = model.noise_std, model.mask_rate
    start = time.perf_counter()
    for _ in range(epochs):
        for rows in torch.randperm(len(x)).split(batch):
            clean = x[rows]
            keep = (torch.rand_like(clean) >= mask).to(clean.dtype)
            noisy = (clean + noise * torch.randn_like(clean)) * keep
            loss = ((model.decoder(model.encoder(noisy)) - clean) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return len(x) * epochs / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    train_config = dataclasses.replace(
        params.train, epochs=args.epochs, patience=args.epochs + 1, device="cpu"
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_data(root / "source", args.rows, args.cols)
        data = dataclasses.replace(
            params.data, dataset="speed", source=str(root / "source"), label_col="label"
        )
        params = dataclasses.replace(params, data=data)
        layout = Layout(root, "speed")
        run_stage("ingest", params, layout)
        run_stage("normalize", params, layout)
        x = torch.from_numpy(load_features(layout.processed, "train", train_config.max_rows).x)
        batch, lr = batch_plan(len(x), train_config)
        peak = matmul_peak()
        bare, ours, stage_s = 0.0, 0.0, math.inf
        for _ in range(ROUNDS):  # alternating, best of each: a shared machine's noise
            torch.manual_seed(0)
            model = build_model(params.model, x.shape[1])
            flops = flops_per_row(model)
            bare = max(bare, bare_loop(x, model, batch, lr, args.epochs))
            start = time.perf_counter()
            fit = fit_autoencoder(
                layout.processed, layout.model, layout.history, params.model, train_config
            )
            stage_s = min(stage_s, time.perf_counter() - start)
            ours = max(ours, fit.train_rows_per_s)
    rows = [
        ("matmul peak", "", f"{peak:.1f}", "100%", ""),
        (
            "bare loop",
            f"{bare:,.0f}",
            f"{bare * flops / 1e9:.1f}",
            f"{bare * flops / 1e9 / peak:.0%}",
            "",
        ),
        (
            "aepipe train stage",
            f"{ours:,.0f}",
            f"{ours * flops / 1e9:.1f}",
            f"{ours * flops / 1e9 / peak:.0%}",
            f"{ours / bare:.2f}x bare",
        ),
    ]
    print(
        f"{len(x):,} training rows x {x.shape[1]}, batch {batch}, lr {lr:.4g}, "
        f"{flops / 1e3:.0f} kFLOP per row, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads; stage wall {stage_s:.1f} s"
    )
    print(f"{'':20} {'rows/s':>12} {'GFLOP/s':>9} {'of peak':>8} {'ratio':>12}")
    for name, speed, gflops, share, ratio in rows:
        print(f"{name:20} {speed:>12} {gflops:>9} {share:>8} {ratio:>12}")
    missed = []
    if ours < VS_BARE * bare:
        missed.append(f"aepipe {ours / bare:.2f}x the bare loop < {VS_BARE}x")
    if ours * flops / 1e9 < OF_PEAK * peak:
        missed.append(f"aepipe {ours * flops / 1e9 / peak:.0%} of the matmul peak < {OF_PEAK:.0%}")
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
