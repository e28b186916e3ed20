"""The training loop and the train stage."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from aecore.config import ModelConfig, TrainConfig
from aecore.errors import AepipeError
from aecore.io import read_schema, write_json
from aecore.models import build_model, save_model

OnEpoch = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 65536  # rows per forward pass when only measuring


def select_device(name: str = "auto") -> torch.device:
    """Return the device: ``auto`` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        message = f"train.device: {name!r} requested but CUDA is not available"
        raise AepipeError(message)
    if name == "mps" and not torch.backends.mps.is_available():
        message = "train.device: 'mps' requested but MPS is not available"
        raise AepipeError(message)
    return torch.device(name)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a no-op elsewhere so that CPU runs stay exact."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def measure_loss(model: nn.Module, x: Tensor) -> float:
    """Mean reconstruction MSE of ``model`` over all rows of ``x``, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for rows in x.split(EVAL_BATCH):
        with autocast(device):
            total += float(model.loss(rows)) * len(rows)
    return total / max(len(x), 1)


def trimmed_mean(losses: Tensor, trim: float) -> Tensor:
    """The mean of ``losses`` without the largest ``trim`` share of them.

    The training rows hold the anomalies too; leaving each batch's worst-reconstructed
    rows out of the loss keeps them from shaping the model.
    """
    keep = len(losses) - int(len(losses) * trim)
    if keep >= len(losses):
        return losses.mean()
    return losses.topk(keep, largest=False, sorted=False).values.mean()


@dataclass
class TrainResult:
    """The best model and how training went."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    device: str = "cpu"


def train(
    model: nn.Module,
    x_train: Tensor,
    x_val: Tensor,
    config: TrainConfig,
    on_epoch: OnEpoch | None = None,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Fit ``model`` with Adam on mini-batches of ``x_train``; stop early on ``x_val``.

    Args:
        model: an autoencoder with a ``loss(x)`` method.
        x_train: training rows ``(n, d)``; moved to the model's device once.
        x_val: validation rows ``(m, d)`` used for early stopping.
        config: epochs, batch size, learning rate, patience, seed.
        on_epoch: called after every epoch with ``{"train_loss", "val_loss"}``.
        checkpoint: where the best weights are saved whenever ``val_loss`` improves.

    Returns:
        A ``TrainResult`` holding the model with the best validation weights.
    """
    device = next(model.parameters()).device
    x_train, x_val = x_train.to(device), x_val.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = None
    if config.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    result = TrainResult(model=model, device=str(device))
    best_loss, best_state, stale = float("inf"), None, 0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        model.epoch = epoch  # kinds with a schedule of their own read it (VAE KL warm-up)
        total = 0.0
        for rows in torch.randperm(len(x_train), generator=generator).split(config.batch_size):
            batch = x_train[rows.to(device)]  # slice tensors, no per-row Dataset
            with autocast(device):
                loss = trimmed_mean(model.row_loss(batch), config.trim_fraction)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += loss.detach() * len(rows)
        if schedule:
            schedule.step()
        metrics = {
            "train_loss": float(total) / len(x_train),
            "val_loss": measure_loss(model, x_val),
        }
        if not np.isfinite(metrics["train_loss"]):
            message = f"training diverged at epoch {epoch}; lower train.learning_rate"
            raise AepipeError(message)
        result.history.append({"epoch": epoch, **metrics})
        if on_epoch:
            on_epoch(epoch, metrics)
        if metrics["val_loss"] < best_loss:
            best_loss, best_state, stale = metrics["val_loss"], copy.deepcopy(model.state_dict()), 0
            result.best_epoch = epoch
            if checkpoint:
                save_model(model, checkpoint)
        else:
            stale += 1
            if stale >= config.patience:
                break
    result.seconds = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def load_features(processed: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Return ``(x, is_val, schema)`` from a processed table: float32 ``(n, d)`` model inputs.

    ``schema["features"]`` names the source columns, ``schema["blocks"]`` their inputs.
    """
    schema = read_schema(processed)
    table = pq.read_table(processed)
    columns = [table.column(c).to_numpy() for c in schema["encoded"]]
    x = np.column_stack(columns).astype(np.float32) if columns else np.zeros((len(table), 0))
    is_val = table.column("split").to_numpy(zero_copy_only=False) == "val"
    return x, is_val, schema


def fit_autoencoder(
    processed: Path,
    model_path: Path,
    history_path: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    on_epoch: OnEpoch | None = None,
) -> dict[str, float]:
    """The train stage: build a model for the processed features, train it and save it.

    Returns:
        A summary: ``best_val_loss``, ``epochs_run``, ``train_seconds``, ``train_rows_per_s``.
    """
    x, is_val, schema = load_features(processed)
    device = select_device(train_config.device)
    torch.manual_seed(train_config.seed)
    model = build_model(model_config, x.shape[1], schema["blocks"]).to(device)
    result = train(
        model,
        torch.from_numpy(x[~is_val]),
        torch.from_numpy(x[is_val]),
        train_config,
        on_epoch=on_epoch,
        checkpoint=model_path,
    )
    save_model(result.model, model_path)
    summary = {
        "best_epoch": result.best_epoch,
        "best_val_loss": result.history[result.best_epoch]["val_loss"],
        "epochs_run": len(result.history),
        "train_seconds": result.seconds,
        "train_rows_per_s": int((~is_val).sum()) * len(result.history) / max(result.seconds, 1e-9),
        "device": result.device,
    }
    write_json({"summary": summary, "epochs": result.history}, history_path)
    return summary
