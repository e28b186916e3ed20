"""The autoencoder kinds, one PyTorch module each, with their errors, inference and files."""

from __future__ import annotations

import itertools
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from aecore.config import ModelConfig
from aecore.errors import AepipeError
from aecore.io import atomic_path, reading_state

EVAL_BATCH = 16384  # rows per forward pass when only measuring
MAX_LATENT = 32  # the widest default bottleneck (model.latent_dim: null), from 256 inputs


def make_layers(widths: list[int], gelu: str = "tanh") -> nn.Sequential:
    """Linear layers of the given widths with GELU between them, none after the last.

    ``gelu``: ``"tanh"``, its tanh form (new models: 10% less time per CPU training step
    than the exact form, the same anomaly scores on the benchmark), or ``"none"``, the exact
    form (models saved before the choice was recorded).
    """
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(width_in, width_out))
        if i < len(widths) - 2:
            layers.append(nn.GELU(approximate=gelu))
    return nn.Sequential(*layers)


def default_hidden(d: int, k: int) -> tuple[int, ...]:
    """Encoder widths sized from the input count.

    Up to 64 inputs: ``4d`` then ``2d``, the first in [64, 128]; wider inputs funnel
    through 64. Measured (benchmarks/anomaly.py): wider layers cost fit time on wide
    inputs (musk, d=166) without better anomaly scores. Compression wants more width
    (README: 256-128).
    """
    first = 64 if d > 64 else min(max(4 * d, 64), 128)
    first = max(first, 2 * k)
    return (first, max(first // 2, 2 * k))


def default_latent_dim(d: int) -> int:
    """The bottleneck when ``model.latent_dim`` is null: an eighth of the inputs, 2 to 32.

    Narrow enough that anomalies reconstruct badly (benchmarks/anomaly.py); 8 for digits.
    At most ``MAX_LATENT``, so that a table of thousands of columns funnels through
    layers of 64 (``default_hidden``) and trains in seconds (benchmarks/shapes.py); and
    never wider than the inputs (one column: one latent).
    """
    return min(MAX_LATENT, max(2, round(d / 8)), d)


class ColumnErrors(nn.Module):
    """Reconstruction error per source column from model inputs and outputs.

    A numeric block's error is its mean squared error; a one-hot block's (a categorical or
    boolean column) is the cross-entropy of the softmax of its outputs against the true
    category, so every source column counts once, however wide its encoding.
    """

    def __init__(self, blocks: list[tuple[str, int]]) -> None:
        super().__init__()
        self.plain = all(kind == "num" and width == 1 for kind, width in blocks)
        owner, numeric, categorical, start = [], [], [], 0
        for column, (kind, width) in enumerate(blocks):
            if kind == "num":
                numeric += range(start, start + width)
                owner += [column] * width
            else:
                categorical.append((column, start, start + width))
            start += width
        counts = torch.bincount(torch.tensor(owner, dtype=torch.long), minlength=len(blocks))
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long), persistent=False)
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.long), persistent=False)
        self.register_buffer("weight", 1 / counts.clamp(min=1).float(), persistent=False)
        self.categorical = categorical
        self.columns = len(blocks)

    def forward(self, output: Tensor, x: Tensor) -> Tensor:  # (n, d), (n, d) -> (n, columns)
        if self.plain:
            return (output - x) ** 2
        squared = (output[:, self.numeric] - x[:, self.numeric]) ** 2
        errors = output.new_zeros(len(x), self.columns)
        errors.index_add_(1, self.owner, squared * self.weight[self.owner])
        for column, start, stop in self.categorical:
            logits = output[:, start:stop]
            target = (logits * x[:, start:stop]).sum(dim=1)
            errors[:, column] = torch.logsumexp(logits, dim=1) - target
        return errors


def nested_widths(d: int, k: int, hidden: tuple[int, ...]) -> tuple[int, ...]:
    """The wider latent prefixes a nested model also reconstructs from, beyond its ``k``.

    A quarter of the inputs, then every input, at most the last hidden width (a latent
    wider than the layer before it adds nothing but cost); the widths above ``k``.
    """
    widest = min(d, hidden[-1] if hidden else d)
    return tuple(sorted({w for w in (round(d / 4), widest) if k < w <= widest}))


class DenseAutoencoder(nn.Module):
    """A deep dense autoencoder: ``d -> hidden -> k -> reversed(hidden) -> d``.

    ``blocks`` describes the inputs per source column (see ``Normalizer.blocks``); by
    default every input is one numeric column.

    Nested (``widths``, wider than ``k``): the code has ``max(widths)`` latents, and the
    decoder learns to rebuild a row from each prefix of them, the later latents zeroed
    (one prefix drawn per row and step). The first ``k`` stay the compressed embedding:
    ``forward`` and ``errors`` rebuild from them; the wider prefixes are views of the
    row for the anomaly score (``prefix_errors``).
    """

    kind = "dense"
    OPTIONS: ClassVar[tuple[str, ...]] = ()  # the ModelConfig fields this kind takes
    OUTPUTS_PER_LATENT = 1  # encoder outputs per latent (a VAE's: mean and log-variance)

    def __init__(
        self,
        d: int,
        k: int,
        hidden: tuple[int, ...],
        blocks: list[tuple[str, int]] | None = None,
        widths: tuple[int, ...] | list[int] = (),
        gelu: str = "tanh",
        **options: float,
    ) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            message = f"model: {self.kind} takes no option {unknown[0]!r}"
            raise AepipeError(message)
        missing = [name for name in self.OPTIONS if name not in options]
        if missing:  # the values live in params.yaml alone
            message = f"model: {self.kind} needs option {missing[0]!r} (model.{missing[0]})"
            raise AepipeError(message)
        blocks = [tuple(block) for block in blocks] if blocks else [("num", 1)] * d
        if sum(width for _, width in blocks) != d:
            message = f"model: blocks cover {sum(w for _, w in blocks)} inputs, not {d}"
            raise AepipeError(message)
        if any(w <= k for w in widths):
            message = f"model: nested widths {list(widths)} must all exceed k={k}"
            raise AepipeError(message)
        shape = {
            "d": d,
            "k": k,
            "hidden": list(hidden),
            "blocks": [list(b) for b in blocks],
            "gelu": gelu,
        }
        if widths:
            shape["widths"] = sorted(widths)
        self.spec = shape | options  # everything that rebuilds the model on load
        for name, value in options.items():
            setattr(self, name, value)
        self.k = k
        self.prefixes = (k, *sorted(widths))  # the latent widths the decoder rebuilds from
        width = self.prefixes[-1]
        self.encoder = make_layers([d, *hidden, self.OUTPUTS_PER_LATENT * width], gelu)
        self.decoder = make_layers([width, *reversed(hidden), d], gelu)
        self.column_errors = ColumnErrors(blocks)
        self.epoch = 0

    def encode(self, x: Tensor) -> Tensor:  # (n, d) -> (n, max(prefixes))
        return self.encoder(x)

    def decode(self, z: Tensor, width: int | None = None) -> Tensor:  # -> (n, d)
        """Rebuild rows from the first ``width`` latents of ``z`` (``k`` when None).

        In training, a nested model draws the width per row among its prefixes.
        """
        if len(self.prefixes) == 1:
            return self.decoder(z)
        if width is None and self.training:
            widths = torch.tensor(self.prefixes, device=z.device)
            drawn = widths[torch.randint(len(widths), (len(z),), device=z.device)]
            keep = torch.arange(z.shape[1], device=z.device) < drawn[:, None]
            return self.decoder(z * keep)
        keep = torch.arange(z.shape[1], device=z.device) < (width or self.k)
        return self.decoder(z * keep)

    def prefix_errors(self, x: Tensor, z: Tensor, width: int) -> Tensor:  # -> (n, columns)
        """The error per source column of rows rebuilt from the first ``width`` latents."""
        return self.column_errors(self.decode(z, width), x)

    def encode_with_kl(self, x: Tensor) -> tuple[Tensor, Tensor]:  # -> (n, k), (n,)
        """The latents and each row's KL divergence from the prior: zero but for a VAE."""
        z = self.encode(x)
        return z, z.new_zeros(len(z))

    def forward(self, x: Tensor) -> Tensor:  # (n, d) -> (n, d)
        return self.decode(self.encode(x))

    def errors(self, x: Tensor, z: Tensor | None = None) -> Tensor:  # -> (n, columns)
        """The reconstruction error of each row per source column, from ``z`` when given."""
        return self.prefix_errors(x, self.encode(x) if z is None else z, self.k)

    def row_loss(self, x: Tensor) -> Tensor:
        """The training loss of each row ``(n,)``; the loop averages it, trimmed or not."""
        return self.column_errors(self(x), x).mean(dim=1)

    def loss(self, x: Tensor) -> Tensor:
        return self.row_loss(x).mean()


class DenoisingAutoencoder(DenseAutoencoder):
    """Reconstructs clean rows from corrupted ones: Gaussian and masking noise, training only."""

    kind = "denoising"
    OPTIONS = ("noise_std", "mask_rate")
    noise_std: float
    mask_rate: float

    def corrupt(self, x: Tensor) -> Tensor:
        """Add noise and zero a random share of entries; the identity in eval mode."""
        if not self.training:
            return x
        keep = (torch.rand_like(x) >= self.mask_rate).to(x.dtype)
        return (x + self.noise_std * torch.randn_like(x)) * keep

    def row_loss(self, x: Tensor) -> Tensor:
        return self.column_errors(self.decode(self.encode(self.corrupt(x))), x).mean(dim=1)


class SparseAutoencoder(DenseAutoencoder):
    """An L1 penalty on the latent activations keeps few of them active per row."""

    kind = "sparse"
    OPTIONS = ("sparsity_weight",)
    sparsity_weight: float

    def row_loss(self, x: Tensor) -> Tensor:
        z = self.encode(x)
        reconstruction = self.column_errors(self.decode(z), x).mean(dim=1)
        return reconstruction + self.sparsity_weight * z.abs().mean(dim=1)


def kl_divergence(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, exp(log_var)) || N(0, I)) of each row ``(n,)``."""
    return -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(dim=1)


class VariationalAutoencoder(DenseAutoencoder):
    """A VAE: the encoder gives a mean and log-variance; β-weighted KL with a warm-up.

    ``encode`` returns the mean μ, so latents and scores are deterministic.
    """

    kind = "vae"
    OPTIONS = ("beta", "kl_warmup_epochs")
    OUTPUTS_PER_LATENT = 2
    beta: float
    kl_warmup_epochs: int

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (n, d) -> (n, k), (n, k)
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var.clamp(-10, 10)

    def encode(self, x: Tensor) -> Tensor:
        return self.moments(x)[0]

    def encode_with_kl(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.moments(x)
        return mu, kl_divergence(mu, log_var)

    def kl(self, x: Tensor) -> Tensor:
        """Mean over rows of the KL divergence of q(z|x) from N(0, I)."""
        return self.encode_with_kl(x)[1].mean()

    def kl_weight(self) -> float:
        """β, ramped up linearly over the first ``kl_warmup_epochs`` epochs."""
        return self.beta * min(1.0, (self.epoch + 1) / max(self.kl_warmup_epochs, 1))

    def row_loss(self, x: Tensor) -> Tensor:
        mu, log_var = self.moments(x)
        z = mu + (0.5 * log_var).exp() * torch.randn_like(mu)  # the reparameterization trick
        errors = self.column_errors(self.decode(z), x)
        kl = kl_divergence(mu, log_var) / errors.shape[1]  # per column, as the error is
        return errors.mean(dim=1) + self.kl_weight() * kl


MODEL_KINDS: dict[str, type[DenseAutoencoder]] = {
    cls.kind: cls
    for cls in (DenseAutoencoder, DenoisingAutoencoder, SparseAutoencoder, VariationalAutoencoder)
}


@dataclass(frozen=True)
class Outputs:
    """What a model gives of rows: its latents, errors per source column per prefix, KL.

    ``latents`` ``(n, max(prefixes))``; ``errors`` one ``(n, columns)`` array per latent
    prefix the rows were rebuilt from (the first: the ``k`` of the embedding); ``kl``
    ``(n,)``, each row's KL divergence from the prior (zero but for a VAE).
    """

    latents: np.ndarray
    errors: tuple[np.ndarray, ...]
    kl: np.ndarray
    prefixes: tuple[int, ...]

    @property
    def embedding(self) -> np.ndarray:
        """The compressed embedding ``(n, k)``: the first ``k`` latents."""
        return self.latents[:, : self.prefixes[0]]


@torch.no_grad()
def model_outputs(model: nn.Module, x: np.ndarray, every_prefix: bool = True) -> Outputs:
    """The latents, errors per source column and KL of the rows ``x``.

    A numeric column's error is its squared error, a one-hot column's its cross-entropy.
    ``every_prefix``: the errors from each latent prefix of a nested model, else from
    the first ``k`` latents alone.

    Runs in float32 on the model's device, in large slices, so every caller (the
    export, the evaluation and the registered model) gets the same numbers.
    """
    model.eval()
    device = next(model.parameters()).device
    prefixes = tuple(model.prefixes) if every_prefix else (model.k,)
    latents, kls = [], []
    errors: list[list[np.ndarray]] = [[] for _ in prefixes]
    for rows in torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).split(EVAL_BATCH):
        rows = rows.to(device)
        z, kl = model.encode_with_kl(rows)
        latents.append(z.float().cpu().numpy())
        for found, width in zip(errors, prefixes, strict=True):
            found.append(model.prefix_errors(rows, z, width).float().cpu().numpy())
        kls.append(kl.float().cpu().numpy())
    if not latents:
        width, columns = model.prefixes[-1], model.column_errors.columns
        empty = np.zeros((0, columns), np.float32)
        return Outputs(
            np.zeros((0, width), np.float32), (empty,) * len(prefixes), np.zeros(0), prefixes
        )
    return Outputs(
        np.concatenate(latents),
        tuple(np.concatenate(found) for found in errors),
        np.concatenate(kls),
        prefixes,
    )


def encode_and_reconstruct(
    model: nn.Module, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the latents ``(n, k)``, errors per source column ``(n, columns)`` and KL ``(n,)``.

    The embedding and the rows rebuilt from it (``model_outputs`` without the wider
    prefixes of a nested model).
    """
    outputs = model_outputs(model, x, every_prefix=False)
    return outputs.embedding, outputs.errors[0], outputs.kl


def row_errors(feature_errors: np.ndarray) -> np.ndarray:
    """Mean error per row ``(n,)`` from the errors per source column ``(n, columns)``."""
    return feature_errors.mean(axis=1, dtype=np.float64).astype(np.float32)


def build_model(
    config: ModelConfig, d: int, blocks: list[tuple[str, int]] | None = None
) -> DenseAutoencoder:
    """Create an untrained autoencoder of ``config.kind`` for ``d`` inputs in ``blocks``."""
    if config.kind not in MODEL_KINDS:
        message = f"model.kind: {config.kind!r} is not one of {tuple(MODEL_KINDS)}"
        raise AepipeError(message)
    cls = MODEL_KINDS[config.kind]
    k = config.latent_dim or default_latent_dim(d)
    hidden = config.hidden or default_hidden(d, k)
    options = {name: getattr(config, name) for name in cls.OPTIONS}
    widths = nested_widths(d, k, tuple(hidden)) if config.nested else ()
    return cls(d, k, tuple(hidden), blocks, widths, **options)


def model_spec(model: DenseAutoencoder) -> dict[str, Any]:
    """Return the kind and constructor arguments that rebuild ``model``."""
    return {"kind": model.kind, **model.spec}


def save_model(model: nn.Module, path: Path) -> Path:
    """Save the weights and shape of ``model`` atomically (CPU tensors)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as temporary:
        torch.save({"spec": model_spec(model), "state_dict": state}, temporary)
    return path


def load_model(path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by ``save_model``, with ``weights_only=True``, in eval mode."""
    with reading_state(
        path, "saved model", "train", RuntimeError, pickle.UnpicklingError, EOFError
    ):
        saved = torch.load(path, map_location=device, weights_only=True)
        spec = dict(saved["spec"])
        cls = MODEL_KINDS[spec.pop("kind")]
        spec.setdefault("gelu", "none")  # saved before the spec named it: the exact form
        model = cls(**{**spec, "hidden": tuple(spec["hidden"])})  # spec from save_model
        model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()
