"""The anomaly score and what scoring needs: ``FusedScorer``, ``AnomalyScorer``, ``Reference``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aecore.io import reading_state, write_json

if TYPE_CHECKING:
    from aecore.models import Outputs

SCORE_ROWS = 65536  # rows whose latent distances or tails are computed at once
TAIL_POINTS = 40  # quantiles spaced geometrically in each tail, down to 1 / (rows + 1)
BODY_POINTS = 91  # quantiles spaced evenly between the tails (every 1 % of 5 % to 95 %)
TAIL_BLOCK = 64  # inputs whose tails are looked up at once
TAIL_BINS = 1024  # equal bins of an input's range in the tails' scoring table
ROWS_PER_LATENT = 10  # training rows (after the trim) per latent that a latent distance needs
BLEND_ROWS = 2000  # blends of two training rows that choose the latent distances (FusedScorer)
CENTRES = 32  # k-means centres of the cluster distance...
ROWS_PER_CENTRE = 16  # ...at most one per this many training rows (fewer on small tables)
CENTRE_ROWS = 16384  # training rows (a uniform sample) that place the centres...
CENTRE_VALUES = 1 << 24  # ...fewer on wide tables: at most this many values
AGREEMENT_ROWS = 4000  # training rows on which a view's agreement with the cluster distance is read
AGREEMENT_LEAST = 50  # fewer rows with finite values: no agreement is read, every view counts


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
    every_prefix: ClassVar[bool] = False  # the errors of the embedding alone
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
        scale = errors.mean(axis=0, dtype=np.float64)
        self.column_scale_ = np.maximum(scale, 1e-3 * scale.mean() + 1e-12)
        self.kl_scale_ = max(float(kl.astype(np.float64).mean()) if len(kl) else 0.0, 1e-12)
        z = latents.astype(np.float64)
        self.latent_mean_, self.latent_std_ = z.mean(axis=0), z.std(axis=0)  # drift: always
        if not self.latent_weight:  # no distance in the score: no precision to keep
            self.latent_precision_ = np.zeros((0, 0))
            return
        covariance = np.atleast_2d(np.cov(z, rowvar=False, ddof=0)) if len(z) > 1 else None
        self.latent_precision_ = (
            np.eye(z.shape[1]) if covariance is None else np.linalg.pinv(covariance, hermitian=True)
        )

    def scaled_errors(self, errors: np.ndarray) -> np.ndarray:
        """How unusual each column's error is: the error over its mean training error.

        ``(n, columns)``, about 1 on a typical training row, so that every column counts
        on the same footing and no noisy column drowns the rest.
        """
        return errors / self.column_scale_.astype(np.float32)

    def score(
        self, latents: np.ndarray, errors: np.ndarray, kl: np.ndarray | None = None
    ) -> np.ndarray:
        """The anomaly score of each row ``(n,)``: only the terms its weights use.

        Raises:
            ValueError: the score weighs the KL divergence and ``kl`` is missing.
        """
        score = np.zeros(len(latents))
        if self.latent_weight < 1:  # the mean of the scaled errors, in one pass
            term = errors @ (1 / self.column_scale_ / errors.shape[1]).astype(errors.dtype)
            score += (1 - self.latent_weight) * term
        if self.latent_weight > 0:
            distance = np.empty(len(latents))
            for start in range(0, len(latents), SCORE_ROWS):  # bounded temporaries
                offset = latents[start : start + SCORE_ROWS] - self.latent_mean_
                rows = slice(start, start + len(offset))
                distance[rows] = ((offset @ self.latent_precision_) * offset).sum(axis=1)
            score += self.latent_weight * distance / max(latents.shape[1], 1)
        if self.kl_weight:
            if kl is None:
                message = "AnomalyScorer.score: the score weighs the KL divergence; pass kl"
                raise ValueError(message)
            score += self.kl_weight * kl / self.kl_scale_
        return score.astype(np.float32)

    def fit_rows(self, outputs: Outputs, x: np.ndarray) -> AnomalyScorer:
        """Fit on training rows from the model's ``outputs`` (``x``, the inputs, unused)."""
        return self.fit(outputs.embedding, outputs.errors[0], outputs.kl)

    def score_rows(self, outputs: Outputs, x: np.ndarray) -> np.ndarray:
        """The anomaly score of each row ``(n,)`` from the model's ``outputs``."""
        return self.score(outputs.embedding, outputs.errors[0], outputs.kl)

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


def blend_rows(x: np.ndarray, rows: int = BLEND_ROWS, seed: int = 0) -> np.ndarray:
    """Midpoints of ``rows`` random pairs of the rows of ``x`` (model inputs).

    Rows that lie between two training rows, where a table made of separate groups has none.
    """
    if not len(x):
        return x[:0]
    pairs = np.random.default_rng(seed).integers(len(x), size=(2, rows))
    return ((x[pairs[0]] + x[pairs[1]]) / 2).astype(x.dtype, copy=False)


def share_below(training: np.ndarray, values: np.ndarray) -> float:
    """The share of the ``training`` values that ``values`` exceed, averaged over them.

    The AUROC of ``values`` against ``training`` (NaN left out). Ties count half: 0.5 when
    both come alike, 1 when every value lies above all of them.
    """
    from sklearn.metrics import roc_auc_score  # fit time only: scoring never imports it

    training, values = training[np.isfinite(training)], values[np.isfinite(values)]
    if not len(training) or not len(values):
        return 0.5
    above = np.r_[np.zeros(len(training)), np.ones(len(values))]
    return float(roc_auc_score(above, np.r_[training, values]))


def tail_probabilities(rows: int) -> np.ndarray:
    """Probabilities at which a distribution is kept: dense in both tails, to ``1 / (rows + 1)``."""
    least = 1 / (rows + 1)
    tail = np.geomspace(least, 0.05, TAIL_POINTS, endpoint=False)
    kept = np.concatenate([tail, np.linspace(0.05, 0.95, BODY_POINTS), (1 - tail)[::-1]])
    return np.unique(kept)  # ascending, also for fewer than 19 rows (least above 5 %)


@dataclass
class Surprise:
    """How surprising a value of one view is among the training rows' values.

    ``-log(1 - q)``, ``q`` the value's quantile among them: 0 at the least value, 1 at
    the 63rd percentile, ``log(rows + 1)`` at the largest, and continued linearly beyond
    it (at the slope between the 90th percentile and the largest), so that rows more
    extreme than any training row still rank among themselves. Views of any scale and
    spread become comparable. A NaN value stays NaN.
    """

    values_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    surprises_: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def fit(self, values: np.ndarray) -> Surprise:
        """Keep the quantiles of the training rows' ``values`` (the finite ones)."""
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            values = np.zeros(1)
        probabilities = tail_probabilities(len(values))
        self.values_ = np.quantile(values, probabilities)
        self.surprises_ = -np.log1p(-probabilities)
        return self

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """The surprise of each value ``(n,)``."""
        known, surprises = self.values_, self.surprises_
        found = np.interp(values, known, surprises, left=0.0)
        beyond = values > known[-1]
        if beyond.any():
            ninetieth = int(np.searchsorted(surprises, -np.log(0.1)))
            rise = known[-1] - known[ninetieth]
            slope = (surprises[-1] - surprises[ninetieth]) / rise if rise > 0 else 1.0
            found[beyond] = surprises[-1] + slope * (values[beyond] - known[-1])
        return found

    def to_dict(self) -> dict[str, Any]:
        """The kept quantiles as JSON-ready values."""
        return {"values": self.values_.tolist(), "surprises": self.surprises_.tolist()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Surprise:
        """Read the form ``to_dict`` writes."""
        return cls(np.asarray(state["values"], np.float64), np.asarray(state["surprises"]))


@dataclass
class MarginalTails:
    """How far out in its own column's tails each input of a row lies (ECOD's outlyingness).

    Per model input, ``-log`` of the training share at or below the value (left) and at
    or above it (right), from quantiles kept dense in both tails; summed over inputs as
    the left tails, the right tails, and each input's tail on the side of its skew; the
    largest of the three. Beyond the training range, an input's tail keeps growing by 1
    per unit of the input (the normalizer's scale, about a standard deviation), so that
    values never seen still rank by how far out they lie. Cheap to score: a lookup per
    input, no kept rows.
    """

    probabilities_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    quantiles_: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    skew_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _lookup: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def fit(self, x: np.ndarray) -> MarginalTails:
        """Keep each input's quantiles and skew over the training rows ``x`` ``(n, d)``."""
        self.probabilities_ = tail_probabilities(len(x))
        self.quantiles_ = np.zeros((len(self.probabilities_), x.shape[1]))
        self.skew_ = np.zeros(x.shape[1])
        for start in range(0, x.shape[1], TAIL_BLOCK):  # no copy of the whole sample
            block = np.asarray(x[:, start : start + TAIL_BLOCK], np.float64)
            if not np.isnan(block).any():
                self._fit_columns(block, slice(start, start + block.shape[1]))
                continue
            for j in range(block.shape[1]):  # a column with NaN: its other values
                column = block[:, j][~np.isnan(block[:, j])]
                if len(column):
                    self._fit_columns(column[:, None], slice(start + j, start + j + 1))
        self._lookup = None
        return self

    def _fit_columns(self, values: np.ndarray, columns: slice) -> None:
        """The quantiles and skews of ``values`` ``(n, c)``, without NaN, into ``columns``."""
        self.quantiles_[:, columns] = np.quantile(values, self.probabilities_, axis=0)
        centred = values - values.mean(axis=0)
        spread = np.mean(centred**2, axis=0)
        self.skew_[columns] = np.mean(centred**3, axis=0) / np.maximum(spread, 1e-12) ** 1.5

    def tails(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``-log`` of the training share at or below, and at or above, each value ``(G', d)``.

        From the kept quantiles: beyond the extreme ones, the least share ``1 / (rows + 1)``.
        """
        p = self.probabilities_
        at_or_below = np.concatenate([[-np.log(p[0])], -np.log(p)])
        at_or_above = np.concatenate([-np.log1p(-p), [-np.log(p[0])]])
        low, high = np.empty_like(values), np.empty_like(values)
        for j in range(values.shape[1]):
            known = self.quantiles_[:, j]
            low[:, j] = at_or_below[np.searchsorted(known, values[:, j], side="right")]
            high[:, j] = at_or_above[np.searchsorted(known, values[:, j], side="left")]
        return low, high

    def lookup(self) -> tuple[np.ndarray, ...]:
        """The scoring tables: each input's range in ``TAIL_BINS`` equal bins.

        Per bin, ``-log`` of the share at or below its upper edge and at or above its
        lower edge (exact for values that repeat, as a category's or a count's do; for
        others, off by at most a bin); one entry below the range and one above it.

        Returns ``(slope, offset, low, high, lo, hi)``: a value's entry is
        ``floor(value * slope + offset)``, clipped to ``[0, TAIL_BINS + 1]``, of an input's
        row of ``low`` and ``high`` ``(d, TAIL_BINS + 2)``; ``lo`` and ``hi``, each input's
        training range, beyond which its tail keeps growing.
        """
        lo, hi = self.quantiles_[0], self.quantiles_[-1]
        span = hi - lo
        steps = np.arange(TAIL_BINS + 1)[:, None] / TAIL_BINS
        edges = lo + steps * span  # (TAIL_BINS + 1, d)
        below, above = lo - np.maximum(np.abs(lo), 1) * 1e-3, hi + np.maximum(np.abs(hi), 1) * 1e-3
        low_in, _ = self.tails(np.vstack([below, edges[1:-1], hi, above]))
        _, high_in = self.tails(np.vstack([below, edges[:-1], above]))
        slope = np.where(span > 0, TAIL_BINS * (1 - 1e-5) / np.where(span > 0, span, 1), 0.0)
        offset = 1 + 1e-4 - lo * slope  # the lowest kept quantile falls in the first bin
        return slope, offset, low_in.T, high_in.T, lo, hi

    def score(self, x: np.ndarray) -> np.ndarray:
        """The outlyingness of each row ``(n,)``; NaN where an input is NaN.

        A table lookup per value (``lookup``), in blocks of ``TAIL_BLOCK`` inputs so that
        memory stays bounded on wide tables.
        """
        if self._lookup is None:  # derived from the kept quantiles, once
            self._lookup = tuple(np.ascontiguousarray(t, np.float32) for t in self.lookup())
        skewed = (self.skew_ < 0).astype(np.float32)
        sums = np.zeros((3, len(x)))  # left tails, right tails, each input's skewed side
        for first in range(0, len(x), SCORE_ROWS):
            rows = slice(first, first + SCORE_ROWS)
            self._add_tails(x[rows], sums[:, rows], skewed)
        return np.where(np.isnan(x).any(axis=1), np.nan, sums.max(axis=0))

    def _add_tails(self, x: np.ndarray, sums: np.ndarray, skewed: np.ndarray) -> None:
        """Add the rows' left, right and skewed-side tails to ``sums`` ``(3, n)``."""
        slope, offset, low_table, high_table, lo, hi = self._lookup
        for start in range(0, len(slope), TAIL_BLOCK):
            block = slice(start, start + TAIL_BLOCK)
            values = np.asarray(x[:, block], np.float32)
            entry = values * slope[block]
            entry += offset[block]
            np.fmax(entry, 0, out=entry)  # NaN too: the row's score is NaN below
            np.minimum(entry, TAIL_BINS + 1, out=entry)
            index = entry.astype(np.int32)  # the floor, as every entry is at least 0
            index += np.arange(index.shape[1], dtype=np.int32) * (TAIL_BINS + 2)
            low, high = low_table[block].ravel()[index], high_table[block].ravel()[index]
            low += np.maximum(lo[block] - values, 0)  # beyond the training range
            high += np.maximum(values - hi[block], 0)
            sums[0] += low.sum(axis=1)
            sums[1] += high.sum(axis=1)
            sums[2] += low @ skewed[block] + high @ (1 - skewed[block])

    def to_dict(self) -> dict[str, Any]:
        """The kept quantiles and skews as JSON-ready values."""
        return {
            "probabilities": self.probabilities_.tolist(),
            "quantiles": self.quantiles_.tolist(),
            "skew": self.skew_.tolist(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> MarginalTails:
        """Read the form ``to_dict`` writes."""
        return cls(
            *(np.asarray(state[key], np.float64) for key in ("probabilities", "quantiles", "skew"))
        )


@dataclass
class ClusterDistance:
    """How far a row lies from the nearest of the training rows' k-means centres.

    A local density that keeps no training row: a row between the groups a table's rows
    form, or in a sparse region of it, lies far from every centre, however typical each
    of its inputs and however well the model rebuilds it. Inputs are divided by their
    standard deviation over the training rows, so that each counts alike. ``CENTRES``
    centres (one per ``ROWS_PER_CENTRE`` training rows on small tables, where centres of
    a handful of rows each would score noise), placed on at most ``CENTRE_ROWS`` rows.
    Scoring costs a product with the centres per row.
    """

    scale_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    centres_: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def fit(self, x: np.ndarray, seed: int = 0) -> ClusterDistance:
        """Place the centres on the finite training rows of ``x`` ``(n, d)``."""
        from sklearn.cluster import KMeans  # fit time only: scoring never imports it
        from sklearn.exceptions import ConvergenceWarning

        most = min(CENTRE_ROWS, max(CENTRES * ROWS_PER_CENTRE, CENTRE_VALUES // max(x.shape[1], 1)))
        rows = x
        if len(x) > most:  # the sample first: no copy of every row
            rows = x[np.random.default_rng(seed).choice(len(x), most, replace=False)]
        rows = rows[np.isfinite(rows).all(axis=1)]
        if not len(rows):
            rows = np.zeros((1, x.shape[1]), x.dtype)
        std = rows.std(axis=0, dtype=np.float64)
        self.scale_ = np.where(std > 0, std, 1.0)
        scaled = rows / self.scale_
        centres = min(CENTRES, max(len(rows) // ROWS_PER_CENTRE, 1))
        with warnings.catch_warnings():  # fewer distinct rows than centres: some repeat
            warnings.simplefilter("ignore", ConvergenceWarning)
            kmeans = KMeans(centres, n_init=1, random_state=seed).fit(scaled)
        self.centres_ = kmeans.cluster_centers_.astype(np.float64)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        """Each row's distance to the nearest centre ``(n,)``; NaN or inf where an input is.

        ``|x / s - c|² = (x * x) @ (1 / s²) - 2 x @ (c / s) + |c|²``: no scaled copy of
        the rows, one product with the centres.
        """
        centres = (-2 * self.centres_ / self.scale_).T.astype(np.float32)
        inverse = (1 / self.scale_**2).astype(np.float32)
        norms = (self.centres_**2).sum(axis=1).astype(np.float32)
        found = np.empty(len(x))
        step = max(SCORE_ROWS * TAIL_BLOCK // max(len(inverse), TAIL_BLOCK), 1)  # wide: fewer
        for start in range(0, len(x), step):  # temporaries bounded, whatever the width
            rows = np.asarray(x[start : start + step], np.float32)
            squared = rows @ centres
            squared += norms
            with np.errstate(invalid="ignore"):  # inf - inf: an infinite input, below
                nearest = squared.min(axis=1) + (rows * rows) @ inverse
            odd = ~np.isfinite(nearest)
            if odd.any():  # an infinite input: infinitely far, unless another is NaN
                bad = rows[odd]
                nearest[odd] = np.where(np.isnan(bad).any(axis=1), np.nan, np.inf)
            found[start : start + len(rows)] = np.sqrt(np.maximum(nearest, 0))
        return found

    def to_dict(self) -> dict[str, Any]:
        """The centres and scales as JSON-ready values."""
        return {"scale": self.scale_.tolist(), "centres": self.centres_.tolist()}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ClusterDistance:
        """Read the form ``to_dict`` writes."""
        return cls(np.asarray(state["scale"], np.float64), np.asarray(state["centres"], np.float64))


def agreement(
    views: list[np.ndarray], anchor: np.ndarray, rows: int = AGREEMENT_ROWS
) -> list[float]:
    """Each view's Spearman correlation with ``anchor`` over ``rows`` of the training rows.

    Surprises (or any values) of the same rows, read where both are finite. NaN where
    there is no evidence: fewer than ``AGREEMENT_LEAST`` such rows, or a constant
    anchor. A constant view agrees with nothing (0).
    """
    from scipy.stats import spearmanr  # fit time only

    drawn = np.random.default_rng(0).permutation(len(anchor))[:rows]
    anchor = anchor[drawn]
    found = []
    for view in views:
        view = view[drawn]
        both = np.isfinite(view) & np.isfinite(anchor)
        if both.sum() < AGREEMENT_LEAST or np.ptp(anchor[both]) == 0:
            found.append(float("nan"))
        elif np.ptp(view[both]) == 0:
            found.append(0.0)
        else:
            found.append(float(spearmanr(view[both], anchor[both])[0]))
    return found


@dataclass
class FusedScorer:
    """The anomaly score: the most surprising of several views of a row.

    The views: at each latent width the model rebuilds from (``Outputs.prefixes``; the
    embedding's ``k`` alone unless the model is nested), the column error and the
    latent distance of ``AnomalyScorer`` (each fitted without its ``trim`` least typical
    training rows); the row's marginal tails (``MarginalTails``); and, with ``kl``, a
    VAE's KL divergence. A latent distance counts only at a width with at least
    ``ROWS_PER_LATENT`` training rows per latent (``distances_``): with fewer, the
    covariance it divides by is mostly noise, and so is the distance. Each view becomes
    its ``Surprise`` among the training rows, and the score is the largest: a row odd in
    any one way is odd. Chosen on half of
    the anomaly benchmark's sets and confirmed on the other (docs/benchmarks.md).

    A latent distance does not suit every table: where the rows form separate groups, a
    narrow code's distance from its centre ranks a row between two groups as typical,
    and in the maximum its false alarms drown the views that see the row. Given
    ``blends`` (rows between two training rows, ``blend_rows``), ``fit_rows`` measures how
    far above the training rows each of the model's views ranks them (``sensitivity_``;
    the cluster distance's below, ``cluster_sensitivity_``), and a latent distance counts
    only within ``margin`` of the most sensitive view (``kept_``). The blends choose no
    column error, tails or KL: on a table of one group a blend is as typical as any row,
    its noise averaged, and a column error that ranks blends low is right to. ``margin``
    1 keeps every latent distance.

    With ``cluster_weight`` above 0, a local view stands beside them: the distance to the
    nearest k-means centre of the training rows (``ClusterDistance``), its surprise times
    ``cluster_weight``. It sees the rows that are odd only next to their neighbours, which
    the model rebuilds well and which lie inside every input's range. It also chooses:
    a column error or the tails count only where their surprises agree with its own over
    the training rows (a Spearman correlation of at least ``min_agreement``, ``agreement_``);
    a view that ranks the rows unlike the local density, on a table whose anomalies are
    local, mostly adds false alarms to the maximum. The latent distances (chosen by the
    blends) and the KL are not chosen this way. Fitted attributes end in ``_``.
    """

    trim: float = 0.0
    kl: bool = False
    margin: float = 1.0
    cluster_weight: float = 0.0
    min_agreement: float = 0.0
    every_prefix: ClassVar[bool] = True  # the errors from every latent width
    prefixes_: tuple[int, ...] = ()
    distances_: tuple[bool, ...] = ()  # per width: does its latent distance count?
    terms_: list[AnomalyScorer] = field(default_factory=list)
    tails_: MarginalTails = field(default_factory=MarginalTails)
    surprises_: list[Surprise] = field(default_factory=list)
    sensitivity_: tuple[float, ...] = ()  # per model view: how far above it ranks the blends
    kept_: tuple[bool, ...] = ()  # per view: does it count in the score? (empty: every one)
    clusters_: ClusterDistance | None = None  # the local view (cluster_weight > 0)
    cluster_surprise_: Surprise = field(default_factory=Surprise)
    agreement_: tuple[float, ...] = ()  # per view: rank correlation with the cluster distance
    cluster_sensitivity_: float = 0.0  # how far above the training rows it ranks the blends

    def views(
        self, outputs: Outputs, x: np.ndarray, wanted: tuple[bool, ...] = ()
    ) -> list[np.ndarray]:
        """Each view's values of the rows; only the ``wanted`` ones, when given.

        Per latent width the column error and, where it counts, the latent distance; the
        tails; the KL.
        """
        makers: list[Callable[[], np.ndarray]] = []
        for i, width in enumerate(outputs.prefixes):
            latents, errors = outputs.latents[:, :width], outputs.errors[i]
            makers.append(partial(self.terms_[2 * i].score, latents, errors))
            if self.distances_[i]:
                makers.append(partial(self.terms_[2 * i + 1].score, latents, errors))
        makers.append(partial(self.tails_.score, x))
        if self.kl:
            makers.append(partial(np.asarray, outputs.kl, np.float64))
        wanted = wanted or (True,) * len(makers)
        return [make() for make, want in zip(makers, wanted, strict=True) if want]

    def fit_rows(
        self, outputs: Outputs, x: np.ndarray, blends: tuple[Outputs, np.ndarray] | None = None
    ) -> FusedScorer:
        """Fit every view and its surprise on the training rows' ``outputs`` and inputs ``x``.

        ``blends``: the model's outputs and the inputs of ``blend_rows(x)``, which choose
        the latent distances (``margin``); without them every latent distance counts. The
        cluster distance (``cluster_weight`` above 0) chooses the column errors and the
        tails, blends or not.
        """
        self.prefixes_ = tuple(outputs.prefixes)
        typical = len(x) - int(len(x) * self.trim)
        self.distances_ = tuple(typical >= ROWS_PER_LATENT * width for width in self.prefixes_)
        self.terms_ = []
        for i, width in enumerate(outputs.prefixes):
            latents, errors = outputs.latents[:, :width], outputs.errors[i]
            for weight in (0.0, 1.0):  # the column error, the latent distance
                self.terms_.append(AnomalyScorer(weight, trim=self.trim).fit(latents, errors))
        self.tails_ = MarginalTails().fit(x)
        found = self.views(outputs, x)
        self.surprises_ = [Surprise().fit(values) for values in found]
        self.sensitivity_, self.kept_, self.agreement_ = (), (), ()
        kinds = self.view_kinds()
        kept = [True] * len(found)
        self.clusters_, self.cluster_sensitivity_ = None, 0.0
        if self.cluster_weight > 0:
            self.clusters_ = ClusterDistance().fit(x)
            local = self.clusters_.score(x)
            self.cluster_surprise_ = Surprise().fit(local)
        if blends is not None:
            model_views = kinds.index("tails")
            blended = self.views(*blends, tuple(kind in ("error", "distance") for kind in kinds))
            self.sensitivity_ = tuple(
                share_below(train, blend)
                for train, blend in zip(found[:model_views], blended, strict=True)
            )
            highest = max(self.sensitivity_)
            if self.clusters_ is not None:  # the cluster distance ranks the blends too
                self.cluster_sensitivity_ = share_below(local, self.clusters_.score(blends[1]))
                highest = max(highest, self.cluster_sensitivity_)
            for i, share in enumerate(self.sensitivity_):
                kept[i] = kinds[i] != "distance" or share >= highest - self.margin
        if self.clusters_ is not None:
            surprises = [surprise(v) for surprise, v in zip(self.surprises_, found, strict=True)]
            self.agreement_ = tuple(agreement(surprises, self.cluster_surprise_(local)))
            for i, (kind, agrees) in enumerate(zip(kinds, self.agreement_, strict=True)):
                if kind in ("error", "tails") and agrees < self.min_agreement:
                    kept[i] = False  # NaN (no evidence): it counts
        if blends is not None or self.clusters_ is not None:
            self.kept_ = tuple(kept)
        return self

    def view_kinds(self) -> list[str]:
        """Each view's kind, in ``views``' order: error, distance, tails, kl."""
        kinds: list[str] = []
        for counts in self.distances_:  # per width: its column error, then its distance
            kinds += ["error", "distance"] if counts else ["error"]
        return [*kinds, "tails", *(["kl"] if self.kl else [])]

    def score_rows(self, outputs: Outputs, x: np.ndarray) -> np.ndarray:
        """The anomaly score of each row ``(n,)``; NaN where a view cannot be computed.

        Raises:
            ValueError: ``outputs`` come from a model of other latent widths.
        """
        if tuple(outputs.prefixes) != self.prefixes_:
            message = (
                f"FusedScorer: fitted on latent widths {list(self.prefixes_)}, "
                f"given {list(outputs.prefixes)}"
            )
            raise ValueError(message)
        kept = self.kept_ or (True,) * len(self.surprises_)
        counted = [surprise for surprise, keep in zip(self.surprises_, kept, strict=True) if keep]
        views = self.views(outputs, x, kept)  # the views that do not count are not computed
        surprises = [s(v) for s, v in zip(counted, views, strict=True)]
        if self.clusters_ is not None:
            local = self.cluster_surprise_(self.clusters_.score(x))
            surprises.append(self.cluster_weight * local)
        return np.stack(surprises).max(axis=0).astype(np.float32)

    def scaled_errors(self, errors: np.ndarray) -> np.ndarray:
        """Each column's error (from the embedding) over its training scale, ``(n, columns)``."""
        return self.terms_[0].scaled_errors(errors)

    @property
    def latent_mean_(self) -> np.ndarray:
        """The embedding's mean over the training rows (drift is measured against it)."""
        return self.terms_[1].latent_mean_

    @property
    def latent_std_(self) -> np.ndarray:
        """The embedding's standard deviation over the training rows."""
        return self.terms_[1].latent_std_

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-ready values (``fused`` in reference.json)."""
        return {
            "fused": {
                "trim": self.trim,
                "kl": self.kl,
                "margin": self.margin,
                "prefixes": list(self.prefixes_),
                "distances": list(self.distances_),
                "terms": [term.to_dict() for term in self.terms_],
                "tails": self.tails_.to_dict(),
                "surprises": [surprise.to_dict() for surprise in self.surprises_],
                "sensitivity": list(self.sensitivity_),
                "kept": list(self.kept_),
                "cluster_weight": self.cluster_weight,
                "min_agreement": self.min_agreement,
                "agreements": [None if np.isnan(a) else a for a in self.agreement_],
                "clusters": None
                if self.clusters_ is None
                else {
                    "distance": self.clusters_.to_dict(),
                    "surprise": self.cluster_surprise_.to_dict(),
                    "sensitivity": self.cluster_sensitivity_,
                },
            }
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> FusedScorer:
        """Read a scorer written by ``to_dict`` (or a scoring reference that holds one)."""
        fused = state["fused"]
        clusters = fused.get("clusters")
        return cls(
            trim=float(fused["trim"]),
            kl=bool(fused["kl"]),
            margin=float(fused.get("margin", 1.0)),  # written before views were chosen
            sensitivity_=tuple(float(share) for share in fused.get("sensitivity", [])),
            kept_=tuple(bool(keep) for keep in fused.get("kept", [])),
            # written before the cluster distance: none
            cluster_weight=float(fused.get("cluster_weight", 0.0)),
            min_agreement=float(fused.get("min_agreement", 0.0)),
            agreement_=tuple(
                np.nan if a is None else float(a) for a in fused.get("agreements", [])
            ),
            clusters_=ClusterDistance.from_dict(clusters["distance"]) if clusters else None,
            cluster_surprise_=Surprise.from_dict(clusters["surprise"]) if clusters else Surprise(),
            cluster_sensitivity_=float(clusters["sensitivity"]) if clusters else 0.0,
            prefixes_=tuple(int(width) for width in fused["prefixes"]),
            # written before the rule: every latent distance counted
            distances_=tuple(
                bool(d) for d in fused.get("distances", [True] * len(fused["prefixes"]))
            ),
            terms_=[AnomalyScorer.from_dict(term) for term in fused["terms"]],
            tails_=MarginalTails.from_dict(fused["tails"]),
            surprises_=[Surprise.from_dict(surprise) for surprise in fused["surprises"]],
        )


@dataclass(frozen=True)
class Reference:
    """What scoring a row needs besides the weights and the normalizer (reference.json).

    The training columns and their kinds (a scored batch is checked against them), the
    fitted anomaly score and its threshold, the held-out error quantiles that a
    scored batch's errors are compared with (drift), and the columns that were constant
    in training: ``{column: {"inputs": [model input, ...], "values": [value, ...]}}``,
    which ``top_features`` names only where a row's value differs.
    """

    features: list[str]
    types: dict[str, str]
    kinds: dict[str, str]
    id_col: str
    label_col: str | None
    threshold: float
    error_quantiles: list[float]
    scorer: AnomalyScorer | FusedScorer
    constants: dict[str, dict[str, list]] = field(default_factory=dict)

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
            scorer=(FusedScorer if "fused" in state else AnomalyScorer).from_dict(state),
            constants=dict(state.get("constants", {})),  # absent before aepipe wrote it
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

    def at_constants(self, x: np.ndarray) -> np.ndarray:
        """``(n, columns)``: True where a row holds the value its column had in every training row.

        ``x`` holds the rows' model inputs; a missing value is never at the constant.
        """
        same = np.zeros((len(x), len(self.features)), dtype=bool)
        for name, constant in self.constants.items():
            values = np.asarray(constant["values"], dtype=x.dtype)
            same[:, self.features.index(name)] = (x[:, constant["inputs"]] == values).all(axis=1)
        return same


def training_constants(
    x: np.ndarray, features: list[str], blocks: list[tuple[str, int]]
) -> dict[str, dict[str, list]]:
    """The source columns whose model inputs hold one value in every training row ``x``.

    ``blocks`` gives each column's number of inputs (``Normalizer.blocks``), in order.
    """
    constants, start = {}, 0
    for name, (_, width) in zip(features, blocks, strict=True):
        inputs = list(range(start, start + width))
        start += width
        first = x[:1, inputs]
        if len(x) and not np.isnan(first).any() and (x[:, inputs] == first).all():
            constants[name] = {"inputs": inputs, "values": first[0].tolist()}
    return constants
