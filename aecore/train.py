"""The training loop and the train stage: a bounded sample of rows, on the best device."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aecore.config import ModelConfig, TrainConfig
from aecore.errors import AepipeError
from aecore.io import atomic_path, file_digest, reading_state, write_json
from aecore.models import EVAL_BATCH, build_model, save_model
from aecore.normalize import load_samples
from aecore.schema import read_schema

OnEpoch = Callable[[int, dict[str, float]], None]
LR_BATCH = 256  # train.learning_rate holds up to this batch; it grows with sqrt beyond
STEPS_PER_EPOCH = 256  # a large table's batch grows until an epoch has at most this many steps
FAN_IN = 256  # a weight matrix with more inputs than this learns at lr * FAN_IN / its inputs


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


def on_device(x: Tensor, device: torch.device) -> Tensor:
    """Move rows to ``device`` once: through pinned memory, without a sync, to a GPU.

    Rows already on a GPU (a caller's own tensors) move as they are: only CPU memory pins.
    """
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def epoch_order(rows: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """A permutation of ``rows`` for one epoch, drawn from the CPU ``generator``.

    On a GPU the permutation is drawn there, from a seed the generator gives, so that a
    large table's shuffle neither runs on the CPU nor crosses the bus every epoch.
    """
    if device.type != "cuda":
        return torch.randperm(rows, generator=generator).to(device)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    on_device = torch.Generator(device).manual_seed(seed)
    return torch.randperm(rows, generator=on_device, device=device)


@torch.no_grad()
def measure_loss(model: nn.Module, x: Tensor) -> float:
    """Mean reconstruction MSE of ``model`` over all rows of ``x``, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    for rows in x.split(EVAL_BATCH):
        with autocast(device):
            total += model.loss(rows).float() * len(rows)
    return float(total) / max(len(x), 1)


def trimmed_mean(losses: Tensor, trim: float) -> Tensor:
    """The mean of ``losses`` without the largest ``trim`` share of them.

    The training rows hold the anomalies too; leaving each batch's worst-reconstructed
    rows out of the loss keeps them from shaping the model.
    """
    keep = len(losses) - int(len(losses) * trim)
    if keep >= len(losses):
        return losses.mean()
    return losses.topk(keep, largest=False, sorted=False).values.mean()


def batch_plan(rows: int, config: TrainConfig) -> tuple[int, float]:
    """The batch size and learning rate for ``rows`` training rows.

    Small tables train at ``batch_size`` and ``learning_rate``. On a larger table the batch
    doubles, up to ``max_batch_size``, until an epoch has at most ``STEPS_PER_EPOCH`` steps;
    the learning rate grows with the square root of the batch beyond ``LR_BATCH`` (Adam's
    usual rule), so large tables use the hardware's matrix units instead of one small step
    after another. Up to ``LR_BATCH`` rows the rate stays: a small batch takes noisier
    steps, and more of them, at the same rate.
    """
    batch = config.batch_size
    while batch < config.max_batch_size and rows / batch > STEPS_PER_EPOCH:
        batch *= 2
    batch = min(batch, config.max_batch_size)
    scale = max(batch, LR_BATCH) / max(config.batch_size, LR_BATCH)
    return batch, config.learning_rate * math.sqrt(scale)


def param_groups(model: nn.Module, learning_rate: float) -> list[dict[str, Any]]:
    """Adam's parameter groups: each weight matrix's rate shrinks with its inputs past ``FAN_IN``.

    Adam moves every weight by about the learning rate, so a unit's input moves with the
    number of weights that feed it: on a table of thousands of columns, or a layer of
    hundreds of units, one step at the rate that suits 64 columns overshoots and the
    network collapses to the mean row (maximal update parametrization's rule: a hidden
    layer's rate over its fan-in). Layers of at most ``FAN_IN`` inputs, and biases, keep
    ``learning_rate``.
    """
    groups: dict[float, list[nn.Parameter]] = {}
    for parameter in model.parameters():
        inputs = parameter.shape[1] if parameter.ndim == 2 else 1
        groups.setdefault(min(1.0, FAN_IN / inputs), []).append(parameter)
    return [{"params": params, "lr": learning_rate * factor} for factor, params in groups.items()]


@dataclass
class TrainResult:
    """The best model and how training went."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    steps: int = 0
    batch_size: int = 0
    learning_rate: float = 0.0
    stopped: str = "epochs"  # epochs | early_stopping | max_steps | max_minutes
    resumed_epochs: int = 0  # epochs taken from the checkpoint


class BestWeights:
    """A copy of the weights with the best validation loss, kept in preallocated tensors."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def keep(self) -> None:
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                self.state[key].copy_(value)

    def restore(self) -> None:
        self.model.load_state_dict(self.state)


@dataclass(frozen=True)
class Checkpoint:
    """Training's resume point: a file, and what the state in it must have been made from.

    ``fingerprint`` names the settings and the data; a state saved under another one is
    never resumed from.
    """

    path: Path
    fingerprint: str
    resume: bool = False

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (weights, optimizer, random generators, history)."""
        with atomic_path(self.path) as temporary:
            torch.save({"fingerprint": self.fingerprint, "state": state}, temporary)

    def load(self) -> dict[str, Any] | None:
        """The saved state, when there is one made from the same settings and data."""
        if not self.path.exists():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        return saved["state"] if saved.get("fingerprint") == self.fingerprint else None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def train(
    model: nn.Module,
    x_train: Tensor,
    x_val: Tensor,
    config: TrainConfig,
    on_epoch: OnEpoch | None = None,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Fit ``model`` with Adam on mini-batches of ``x_train``; stop early on ``x_val``.

    Args:
        model: an autoencoder with a ``row_loss(x)`` method.
        x_train: training rows ``(n, d)``; moved to the model's device once.
        x_val: validation rows ``(m, d)`` used for early stopping (keep it bounded).
        config: epochs, batch size, learning rate, patience, budgets, seed.
        on_epoch: called after every epoch with ``{"train_loss", "val_loss"}``.
        checkpoint: where the whole training state is saved at the end of an epoch, at
            most every ``train.checkpoint_seconds``, so that saving never stalls the loop;
            when it holds a state saved under the same settings and data (``resume``),
            training continues from it exactly as it would have gone on.

    Returns:
        A ``TrainResult`` holding the model with the best validation weights.
    """
    device = next(model.parameters()).device
    x_train, x_val = on_device(x_train, device), on_device(x_val, device)
    batch_size, learning_rate = batch_plan(len(x_train), config)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(  # fused: one kernel for all tensors, not one per tensor
        param_groups(model, learning_rate),
        lr=learning_rate,
        weight_decay=config.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    schedule = None
    if config.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    step = torch.compile(model.row_loss) if config.compile else model.row_loss
    mixed = autocast(device) if device.type == "cuda" else contextlib.nullcontext()
    result = TrainResult(
        model=model, device=str(device), batch_size=batch_size, learning_rate=learning_rate
    )
    best, best_loss, stale = BestWeights(model), math.inf, 0
    max_steps = config.max_steps or math.inf
    deadline = config.max_minutes * 60 or math.inf
    start, first_epoch, saved_at = time.perf_counter(), 0, time.perf_counter()
    state = checkpoint.load() if checkpoint and checkpoint.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule:
            schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        best.state = state["best"]
        best_loss, stale, result.best_epoch = (
            state["best_loss"],
            state["stale"],
            state["best_epoch"],
        )
        result.history, result.steps = state["history"], state["steps"]
        start -= state["seconds"]
        first_epoch = result.resumed_epochs = len(result.history)
        for row in result.history:  # the tracker gets the whole curve
            if on_epoch:
                on_epoch(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})
    for epoch in range(first_epoch, config.epochs):
        model.train()
        model.epoch = epoch  # kinds with a schedule of their own read it (VAE KL warm-up)
        total = torch.zeros((), device=device)
        seen = 0
        order = epoch_order(len(x_train), generator, device)
        for rows in order.split(batch_size):
            batch = x_train[rows]  # slice tensors, no per-row Dataset
            with mixed:
                losses = step(batch)
            loss = (
                losses.mean()
                if not config.trim_fraction
                else trimmed_mean(losses, config.trim_fraction)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += loss.detach() * len(rows)
            seen += len(rows)
            result.steps += 1
            if result.steps >= max_steps:
                result.stopped = "max_steps"
                break
            if result.steps % 16 == 0 and time.perf_counter() - start >= deadline:
                result.stopped = "max_minutes"
                break
        if schedule:
            schedule.step()
        metrics = {
            "train_loss": float(total) / max(seen, 1),
            "val_loss": measure_loss(model, x_val),
        }
        if not np.isfinite(metrics["train_loss"]):
            message = f"training diverged at epoch {epoch}; lower train.learning_rate"
            raise AepipeError(message)
        result.history.append({"epoch": epoch, **metrics})
        if on_epoch:
            on_epoch(epoch, metrics)
        if metrics["val_loss"] < best_loss:
            best_loss, stale, result.best_epoch = metrics["val_loss"], 0, epoch
            best.keep()
        else:
            stale += 1
            if stale >= config.patience:
                result.stopped = "early_stopping"
        if result.stopped != "epochs":
            break
        if checkpoint and time.perf_counter() - saved_at >= config.checkpoint_seconds:
            checkpoint.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict() if schedule else None,
                    "generator": generator.get_state(),
                    "rng": torch.get_rng_state(),
                    "best": best.state,
                    "best_loss": best_loss,
                    "stale": stale,
                    "best_epoch": result.best_epoch,
                    "history": result.history,
                    "steps": result.steps,
                    "seconds": time.perf_counter() - start,
                }
            )
            saved_at = time.perf_counter()
    result.seconds = time.perf_counter() - start
    best.restore()
    model.eval()
    return result


def fingerprint(
    processed: Path, model_config: ModelConfig, train_config: TrainConfig, spec: dict[str, Any]
) -> str:
    """What a training state depends on: the settings that shape it and the input rows.

    ``spec`` is the built network's (``DenseAutoencoder.spec``): its widths and activation,
    which defaults derive from the settings. The normalizer's digest stands for the rows
    (it holds their counts and moments); the budgets and the checkpoint interval do not
    change a step, so they are left out.
    """
    settings = {
        **dataclasses.asdict(model_config),
        "spec": spec,
        **{
            k: v
            for k, v in dataclasses.asdict(train_config).items()
            if k not in ("epochs", "max_steps", "max_minutes", "checkpoint_seconds", "compile")
        },
        "fan_in": FAN_IN,  # the rule that sets each layer's rate, beside the settings
    }
    files = [(p.name, p.stat().st_size) for p in sorted(processed.glob("*.parquet"))]
    normalizer = processed.parent / "normalizer.json"
    digest = file_digest(normalizer, "sha256") if normalizer.exists() else ""
    return json.dumps([settings, files, digest], sort_keys=True, default=str)


@dataclass(frozen=True)
class FitSummary:
    """What the train stage did: the summary in history.json."""

    best_epoch: int
    best_val_loss: float
    epochs_run: int
    steps: int
    stopped: str  # epochs | early_stopping | max_steps | max_minutes
    train_seconds: float
    train_rows_per_s: float
    train_rows: int
    train_rows_total: int
    train_sampled: bool
    val_rows: int
    val_rows_total: int
    batch_size: int
    learning_rate: float
    device: str
    resumed_epochs: int
    inputs: int  # the model's inputs, d
    latent_dim: int  # k, resolved from model.latent_dim
    hidden: list[int]  # the encoder's widths, resolved from model.hidden

    @classmethod
    def read(cls, history_path: Path) -> FitSummary:
        """The summary of the history.json the train stage wrote.

        Raises:
            AepipeError: naming the file, when it is missing or not a history.
        """
        with reading_state(history_path, "training history", "train"):
            summary = cls(**json.loads(Path(history_path).read_text())["summary"])
        return summary


def fit_autoencoder(
    processed: Path,
    model_path: Path,
    history_path: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    on_epoch: OnEpoch | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
) -> FitSummary:
    """The train stage: build a model for the processed features, train it and save it.

    Trains on every training row, or on a uniform sample of ``train.max_rows`` of them
    when there are more; stops early on a fixed sample of ``train.max_val_rows``
    validation rows. Memory is bounded by these two, whatever the table's size.

    With ``checkpoint_path``, the training state is saved there while training runs and
    removed when it ends; ``resume`` continues from it when it was saved with the same
    settings and data (``resumed_epochs`` in the summary), and starts over otherwise.

    Returns:
        What it did, as written to history.json.
    """
    schema = read_schema(processed)
    samples = load_samples(
        processed, {"train": train_config.max_rows, "val": train_config.max_val_rows}
    )
    train_rows, val_rows = samples["train"], samples["val"]
    d = train_rows.x.shape[1]
    device = select_device(train_config.device)
    torch.manual_seed(train_config.seed)
    model = build_model(model_config, d, schema["blocks"]).to(device)
    checkpoint = None
    if checkpoint_path is not None:
        fingerprinted = fingerprint(processed, model_config, train_config, model.spec)
        checkpoint = Checkpoint(checkpoint_path, fingerprinted, resume)
    result = train(
        model,
        torch.from_numpy(train_rows.x),
        torch.from_numpy(val_rows.x),
        train_config,
        on_epoch=on_epoch,
        checkpoint=checkpoint,
    )
    save_model(result.model, model_path)
    if checkpoint:
        checkpoint.remove()
    rows_seen = result.steps * result.batch_size
    summary = FitSummary(
        best_epoch=result.best_epoch,
        best_val_loss=result.history[result.best_epoch]["val_loss"],
        epochs_run=len(result.history),
        steps=result.steps,
        stopped=result.stopped,
        train_seconds=result.seconds,
        train_rows_per_s=min(rows_seen, len(train_rows.x) * len(result.history))
        / max(result.seconds, 1e-9),
        train_rows=len(train_rows.x),
        train_rows_total=train_rows.total,
        train_sampled=len(train_rows.x) < train_rows.total,
        val_rows=len(val_rows.x),
        val_rows_total=val_rows.total,
        batch_size=result.batch_size,
        learning_rate=result.learning_rate,
        device=result.device,
        resumed_epochs=result.resumed_epochs,
        inputs=d,
        latent_dim=model.k,
        hidden=list(model.spec["hidden"]),
    )
    write_json({"summary": dataclasses.asdict(summary), "epochs": result.history}, history_path)
    return summary
