"""The anomaly score and what scoring needs: ``AnomalyScorer`` and ``Reference``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecore.io import reading_state, write_json


@dataclass
class AnomalyScorer:
    """The anomaly score, fitted on the training rows (a bounded sample of them).

    ``(1 - w) * mean_j scaled_j + w * Mahalanobis² of z / k + v * KL / mean KL``: the
    reconstruction error with every column on the same footing (``scaled_errors``), the
    density of the latent code and, for a VAE with ``v > 0``, the KL divergence of the
    row's posterior; each term is about 1 on a typical training row.

    The training rows hold the anomalies too. ``fit`` fits on all of them, then again
    without the ``trim`` share that it ranks most anomalous, so that the anomalies
    neither inflate the column scales nor widen the latent covariance. Fitted attributes
    end in ``_``.
    """

    latent_weight: float
    kl_weight: float = 0.0
    trim: float = 0.0
    column_scale_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latent_mean_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latent_std_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latent_precision_: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    kl_scale_: float = 1.0

    def fit(
        self, latents: np.ndarray, errors: np.ndarray, kl: np.ndarray | None = None
    ) -> AnomalyScorer:
        """Fit on training rows: latents ``(n, k)``, errors per column ``(n, columns)``, KL.

        Raises:
            ValueError: ``kl_weight`` is not zero and ``kl`` is missing.
        """
        if kl is None:
            if self.kl_weight:
                message = "AnomalyScorer.fit: kl_weight is not zero; pass the training rows' kl"
                raise ValueError(message)
            kl = np.zeros(len(latents))
        self._moments(latents, errors, kl)
        n, k = latents.shape
        keep = n - int(n * self.trim)
        if keep < n and keep >= k + 2:  # enough rows left for a covariance
            scores = self.score(latents, errors, kl)
            # the least typical rows out, a non-finite score (a NaN error) first of all
            order = np.argsort(np.where(np.isfinite(scores), scores, np.inf), kind="stable")
            typical = order[:keep]
            self._moments(latents[typical], errors[typical], kl[typical])
        return self

    def _moments(self, latents: np.ndarray, errors: np.ndarray, kl: np.ndarray) -> None:
        """Column error scales and latent moments over the finite rows."""
        finite = np.isfinite(errors).all(axis=1) & np.isfinite(latents).all(axis=1)
        finite &= np.isfinite(kl)
        if finite.any() and not finite.all():
            latents, errors, kl = latents[finite], errors[finite], kl[finite]
        scale = errors.astype(np.float64).mean(axis=0)
        self.column_scale_ = np.maximum(scale, 1e-3 * scale.mean() + 1e-12)
        self.kl_scale_ = max(float(kl.astype(np.float64).mean()) if len(kl) else 0.0, 1e-12)
        z = latents.astype(np.float64)
        covariance = np.atleast_2d(np.cov(z, rowvar=False, ddof=0)) if len(z) > 1 else None
        k = z.shape[1]
        self.latent_mean_, self.latent_std_ = z.mean(axis=0), z.std(axis=0)
        self.latent_precision_ = (
            np.eye(k) if covariance is None else np.linalg.pinv(covariance, hermitian=True)
        )

    def scaled_errors(self, errors: np.ndarray) -> np.ndarray:
        """How unusual each column's error is: the error over its mean training error.

        ``(n, columns)``, about 1 on a typical training row, so that every column counts
        on the same footing and no noisy column drowns the rest.
        """
        return errors / self.column_scale_.astype(np.float32)

    def score(
        self,
        latents: np.ndarray,
        errors: np.ndarray,
        kl: np.ndarray | None = None,
        scaled: np.ndarray | None = None,
    ) -> np.ndarray:
        """The anomaly score of each row ``(n,)``; ``scaled`` when already computed.

        Raises:
            ValueError: the score weighs the KL divergence and ``kl`` is missing.
        """
        if scaled is None:
            scaled = self.scaled_errors(errors)
        term = scaled.mean(axis=1, dtype=np.float64)
        offset = latents - self.latent_mean_
        distance = ((offset @ self.latent_precision_) * offset).sum(axis=1)
        score = (1 - self.latent_weight) * term
        score += self.latent_weight * distance / max(latents.shape[1], 1)
        if self.kl_weight:
            if kl is None:
                message = "AnomalyScorer.score: the score weighs the KL divergence; pass kl"
                raise ValueError(message)
            score += self.kl_weight * kl / self.kl_scale_
        return score.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-ready values (the keys of reference.json)."""
        return {
            "column_scale": self.column_scale_.tolist(),
            "latent_mean": self.latent_mean_.tolist(),
            "latent_std": self.latent_std_.tolist(),
            "latent_precision": self.latent_precision_.tolist(),
            "latent_weight": self.latent_weight,
            "kl_scale": self.kl_scale_,
            "kl_weight": self.kl_weight,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> AnomalyScorer:
        """Read a scorer written by ``to_dict`` (or a scoring reference that holds one)."""
        arrays = {
            f"{key}_": np.asarray(state[key], dtype=np.float64)
            for key in ("column_scale", "latent_mean", "latent_std", "latent_precision")
        }
        return cls(
            latent_weight=float(state["latent_weight"]),
            kl_weight=float(state["kl_weight"]),
            kl_scale_=float(state["kl_scale"]),
            **arrays,
        )


@dataclass(frozen=True)
class Reference:
    """What scoring a row needs besides the weights and the normalizer (reference.json).

    The training columns and their kinds (a scored batch is checked against them), the
    fitted anomaly score and its threshold, and the held-out error quantiles that a
    scored batch's errors are compared with (drift).
    """

    features: list[str]
    types: dict[str, str]
    kinds: dict[str, str]
    id_col: str
    label_col: str | None
    threshold: float
    error_quantiles: list[float]
    scorer: AnomalyScorer

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: the fields, the scorer's keys beside them."""
        fields = {name: value for name, value in vars(self).items() if name != "scorer"}
        return {**fields, **self.scorer.to_dict()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Reference:
        """Read the form ``to_dict`` writes.

        Raises:
            KeyError: a field is missing; ``read`` names the file.
        """
        return cls(
            features=list(state["features"]),
            types=dict(state["types"]),
            kinds=dict(state["kinds"]),
            id_col=str(state["id_col"]),
            label_col=state["label_col"],
            threshold=float(state["threshold"]),
            error_quantiles=[float(q) for q in state["error_quantiles"]],
            scorer=AnomalyScorer.from_dict(state),
        )

    @classmethod
    def read(cls, path: Path) -> Reference:
        """Read ``reference.json``.

        Raises:
            AepipeError: naming the file, when it is missing, not JSON, or lacks a field.
        """
        with reading_state(path, "scoring reference", "evaluate"):
            reference = cls.from_dict(json.loads(Path(path).read_text()))
        return reference

    def write(self, path: Path) -> Path:
        """Write ``reference.json`` atomically."""
        return write_json(self.to_dict(), path)
