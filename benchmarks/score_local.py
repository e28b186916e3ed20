"""Local views beside the fused score: a probe, by half.

aepipe's default score (``evaluate.score: fused``) loses most on the "local" sets, where
a row is odd only next to its neighbours (vowels, fault, letter; optdigits by cluster):
ADBench's k-NN and CBLOF win there. This probe trains aepipe's default model through
the pipeline's own stages (as ``anomaly.py`` does), computes the fused score's views
exactly as the evaluate stage does, and adds candidate local views, each as its
``Surprise`` among the training rows:

- ``km<C>.lat``, ``km<C>.in``: the distance to the nearest of ``C`` k-means centres of the
  training rows, in the whitened widest latent code or in the model's inputs;
- ``knn.lat``, ``knn.in``: the distance to the 5th nearest of at most 2048 kept training
  rows, the same two spaces.

The test rows' surprises of every view are cached (``--cache``), so that fusions are
compared without retraining: the default (the maximum of its views) against the default
with one or two local views more (a view with more centres than a quarter of the
training rows, Pima's 128, is left out there), with two other fusions (``top2``, the
mean of the two largest surprises; ``sum``), and with its views chosen per set (below).
Mean AUROC by half.

Measured on 2026-11-25, seeds 0-2, then fresh splits (seeds 3-5), even / odd:

================  ===============  ===============
score             seeds 0-2        seeds 3-5
================  ===============  ===============
default           0.7635 / 0.7393  0.7655 / 0.7395
+knn.in           0.7701 / 0.7392  0.7694 / 0.7393
+knn.in, top2     0.7754 / 0.7367  0.7765 / 0.7361
+km128.in         0.7717 / 0.7312  0.7703 / 0.7277
+km8.lat          0.7628 / 0.7393  0.7643 / 0.7396
+knn.lat          0.7656 / 0.7397  0.7658 / 0.7393
noise, select     0.7770 / 0.7358  0.7712 / 0.7318
noise, weight     0.7746 / 0.7340  0.7727 / 0.7305
scale, select     0.7588 / 0.7373  0.7614 / 0.7465
swap, weight      0.7644 / 0.7057  0.7585 / 0.6942
agree, select     0.7829 / 0.7331  0.7926 / 0.7193
agree, weight     0.7825 / 0.7344  0.7882 / 0.7315
================  ===============  ===============

The views in the inputs lift the even half, almost all of it on vowels (``+knn.in``:
0.82 to 0.89; ``+km128.in``: to 0.92, and fault 0.53 to 0.58), and none lifts the odd
half: ``+knn.in`` moves no odd set by more than 0.004, and ``+km128.in`` loses
Cardiotocography (0.67 to 0.64), Waveform (0.80 to 0.77) and musk (1.00 to 0.98). The
views in the latent code move neither half. Alone, the best of them (``knn.in``) reads
0.747 / 0.693. The best view per set, picked with the labels, would read 0.849 / 0.788
(0.842 / 0.782): an oracle, not a score. The default row is ``anomaly.py``'s aepipe
figure (0.764 / 0.740): the views are the pipeline's own.

Choosing the default's views per set without its labels, by how well each tells
synthetic anomalies (``MAKERS``: Gaussian noise, rows scaled up, half of a row's inputs
swapped with another's) from training rows (``select``: the views within 0.05 of the
best; ``weight``: each surprise weighted by its AUROC over 0.5), trades one half for the
other too: the noise picks the column errors (vowels, Wilt, SpamBase up; cardio,
PageBlocks, Waveform down), the scaling the latent distances. So does choosing them,
with the input neighbour distance among them, by how often a view's most surprising rows
are those of views of another kind (``agree``, measured on the test rows without their
labels, where aepipe would use the training rows): the even half's best figures, 0.79,
and the odd half below the default. None became a default.

Under the defaults of 2026-11-26 (batches of 64, noise 0.4), even / odd, seeds 0-2 (seeds
3-5): the default 0.786 / 0.758 (0.792 / 0.744); ``+knn.in`` 0.793 / 0.757 (0.796 /
0.743); ``+knn.in, top2`` 0.798 / 0.755 (0.799 / 0.740); the oracle 0.861 / 0.795 (0.862 /
0.784).

The report ends with ``FRONTIER``: 90 fixed fusions of the default's views and
``knn.in`` (the latent distances and the tails weighted down, ``knn.in`` as one more view
or added to the fused score, the maximum or the mean of the two largest), the best of them
picked with the labels on each half, and on all 19. It bounds what re-weighting these
views can reach. Picked on the even half (the latent distances at 0.75, the tails at 0.5,
``knn.in`` a view): 0.809 / 0.738 (seeds 3-5: 0.809 / 0.723), so the odd half falls below
its best peers; picked on the odd half, the default itself, to within 0.0003. Every
fusion of the grid leaves fault more than 0.05 below PyOD's AutoEncoder (0.671): its
neighbour distance reads 0.72 alone, but the tails (0.42) and the latent distances
(0.53-0.60) outvote it.

``gm<C><d|f>.in``: the negative log-density of a Gaussian mixture of the inputs (``C``
diagonal or full components; ``MIXTURES``), a local density that keeps no training row
and scores cheaply. As one more view, seeds 0-2 (seeds 3-5): ``+gm8f.in`` 0.810 / 0.738
(0.808 / 0.725), ``+gm32d.in`` 0.796 / 0.745 (0.794 / 0.731), ``+gm8d.in`` 0.791 / 0.753
(0.793 / 0.739): the even half rises and the odd one falls (musk, with full
covariances; SpamBase, Cardiotocography). Alone they read 0.64-0.69 on fault, and
0.52-0.56 in the fused score; vowels reach 0.92 with ``gm8f.in``.

``stacked_views``: a second-stage density over the vector of the default's surprises,
fitted on the 2000 training rows of ``fit:base``, where a row odd in how its views
combine (a large column error beside a small latent distance: vowels' anomalies sit near
the centre of the code) would stand out. Measured on 2026-11-26, even / odd, seeds 0-2
(seeds 3-5), the default 0.786 / 0.762 (0.792 / 0.746): ``stack.maha`` 0.781 / 0.753
(0.786 / 0.734), ``stack.iforest`` 0.783 / 0.741 (0.786 / 0.721), ``+stack.maha`` 0.786 /
0.762 (0.792 / 0.747). Fault stays at 0.51-0.52.

``anchored``: the default's views kept per set by the rank correlation of their
surprises with a model-free local view's over those training rows (``ANCHORS``), and
fused with it by the maximum. The best of this probe on both halves at once, and still
not a default. With ``knn.in`` as the anchor, seeds 0-2 (seeds 3-5), even / odd:
``anchor<0.1`` 0.804 / 0.757 (0.807 / 0.743), ``<0.15`` 0.806 / 0.757 (0.807 / 0.743),
``<0.2`` 0.808 / 0.754 (0.803 / 0.741), ``<0.3`` 0.810 / 0.744 (0.794 / 0.737). Fault
reaches 0.58-0.64, vowels 0.90-0.92, satellite 0.73; Cardiotocography falls by 0.02 to
0.11, and at 0.2 (seeds 3-5) optdigits to 0.66. Chosen on the even half (0.3) it loses
the odd half on fresh splits; the odd half prefers the default to every threshold. The
k-means anchors (``km32.in``, ``km128.in``) lose the odd half more (0.721-0.753). With
every latent distance kept (``+lat``), ``<0.2`` reads 0.806 / 0.760 (0.804 / 0.745): the
odd half holds, but the rule then drops views on two sets only, both even (fault's
column errors and tails, satellite's tails), and is ``+knn.in`` everywhere else, so the
odd half cannot confirm it; fault reaches 0.60. A probe: it sets no target.

    .venv/bin/python benchmarks/score_local.py ../shared/datasets/adbench [--first-seed 3]
    .venv/bin/python benchmarks/score_local.py --report --cache score_local.npz
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anomaly import SUMMARY, half, run_probe, splits, trained  # this folder: the protocol
from scipy.stats import spearmanr
from score_terms import kth_distance
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

if TYPE_CHECKING:
    from aecore.models import Outputs
    from aecore.scorer import FusedScorer

KEPT = 2048  # training rows kept for the neighbour distances (the 5th: score_terms)
CENTRES = (8, 32, 128)
MIXTURES = ((8, "diag"), (32, "diag"), (8, "full"))  # components, covariance: gm8d.in ...
AGREE_SHARE = 0.05  # the most surprising rows of a view, whose overlap makes agreement
SYNTHETIC = 2000  # training rows, and synthetic anomalies made from them
MAKERS = {  # synthetic anomalies from training rows (model inputs)
    "noise": lambda x, rng: x + rng.normal(scale=0.5, size=x.shape).astype(x.dtype),
    "scale": lambda x, rng: x * rng.uniform(1.5, 3, size=(len(x), 1)).astype(x.dtype),
    "swap": lambda x, rng: np.where(rng.random(x.shape) < 0.5, x, rng.permutation(x)),
}
FRONTIER = {  # fixed fusions of the default's views and knn.in: weights and how they fuse
    "lat": (1.0, 0.75, 0.5),  # each latent distance's surprise times this
    "tail": (1.0, 0.75, 0.5),  # the tails' surprise times this
    "knn": (0.0, 0.5, 1.0),  # knn.in's surprise times this...
    "knn_as": ("view", "term"),  # ...as one more view, or added to the fused score
    "fusion": ("max", "top2"),
}
ANCHOR = (0.1, 0.15, 0.2, 0.3)  # least rank correlation with the anchor that keeps a view
ANCHORS = ("knn.in", "km32.in", "km128.in")  # model-free views that choose the others
STACK_TRIM = 0.2  # training rows, the most surprising, left out of the stacked density
FUSIONS = {  # (views, rows) -> (rows,): besides the default's maximum
    "top2": lambda s: np.sort(s, axis=0)[-2:].mean(axis=0),  # the mean of the two largest
    "sum": lambda s: s.sum(axis=0),
}


def local_views(fit: np.ndarray, test: np.ndarray, name: str, seed: int) -> dict:
    """k-means and k-NN distances of the fitting and test rows, and in the inputs the
    negative log-density of a Gaussian mixture (``MIXTURES``): ``{view: (fit, test)}``."""
    std = fit.std(axis=0)
    fit, test = (part / np.where(std > 0, std, 1) for part in (fit, test))
    found = {}
    for centres in CENTRES:
        if len(fit) < 4 * centres:
            continue
        km = KMeans(centres, n_init=1, random_state=seed).fit(fit)
        found[f"km{centres}.{name}"] = tuple(km.transform(part).min(axis=1) for part in (fit, test))
    kept = np.random.default_rng(seed).permutation(len(fit))[:KEPT]
    reference = fit[kept]
    on_fit = kth_distance(reference, fit, leave_self_out=False)
    on_fit[kept] = kth_distance(reference, reference, leave_self_out=True)  # self skipped
    found[f"knn.{name}"] = (on_fit, kth_distance(reference, test, leave_self_out=False))
    for components, form in MIXTURES if name == "in" else ():
        if len(fit) < 10 * components:
            continue
        mixture = GaussianMixture(
            components, covariance_type=form, reg_covar=1e-3, random_state=seed
        ).fit(fit)
        found[f"gm{components}{form[0]}.{name}"] = (
            -mixture.score_samples(fit),
            -mixture.score_samples(test),
        )
    return found


def surprises(scorer: FusedScorer, outputs: Outputs, x: np.ndarray) -> np.ndarray:
    """The surprise of each of the fused score's views of the rows ``x``: ``(views, n)``."""
    values = scorer.views(outputs, x)
    return np.stack([s(v) for s, v in zip(scorer.surprises_, values, strict=True)])


def views(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Every view's surprise on the test rows (the default's included), and the synthetic
    rows' surprises of the default's views."""
    from aecore.evaluate import make_scorer
    from aecore.models import model_outputs
    from aecore.scorer import Surprise

    params, model, x_fit, x_test = trained(train, test)
    scorer = make_scorer(params.evaluate)
    on_fit, on_test = (model_outputs(model, x, scorer.every_prefix) for x in (x_fit, x_test))
    scorer.fit_rows(on_fit, x_fit)
    names = []  # the views in scorer.views' order
    for width, counts in zip(on_fit.prefixes, scorer.distances_, strict=True):
        names += [f"p{width}.col", *([f"p{width}.lat"] if counts else [])]
    names.append("tail")
    found = dict(zip(names, surprises(scorer, on_test, x_test), strict=True))
    seed = params.train.seed
    rng = np.random.default_rng(seed)
    drawn = rng.permutation(len(x_fit))[:SYNTHETIC]
    sample = x_fit[drawn]
    for part, x in {"fit": sample, **{k: make(sample, rng) for k, make in MAKERS.items()}}.items():
        found[f"{part}:base"] = surprises(scorer, model_outputs(model, x, True), x)
    local = local_views(on_fit.latents, on_test.latents, "lat", seed)
    local |= local_views(x_fit, x_test, "in", seed)
    for view, (a, b) in local.items():
        surprise = Surprise().fit(a)
        found[view] = surprise(b)
        if view in ANCHORS:  # the drawn training rows too, for anchored
            found[f"fit:{view}"] = surprise(a[drawn])
    return found


def collect(folder: Path, seeds: int, first_seed: int, cache: Path) -> None:
    """Compute and cache every view's test surprises per set and seed."""
    stored: dict[str, np.ndarray] = {}
    for dataset, seed, train, test, y_test in splits(folder, seeds, first_seed=first_seed):
        start = time.perf_counter()
        found = views(train, test)
        key = f"{dataset}|{seed}"
        stored[f"{key}|y"] = y_test
        for view, values in found.items():
            stored[f"{key}|{view}"] = values
        print(f"{dataset:20} seed {seed} {time.perf_counter() - start:6.1f} s", flush=True)
    np.savez_compressed(cache, **stored)


def synthetic_choices(found: dict[str, np.ndarray], test: np.ndarray) -> dict[str, float]:
    """The default's views chosen by how well each tells synthetic anomalies from training rows.

    Per maker of ``MAKERS``: each view's AUROC at that (no label of the set seen);
    ``select``, the maximum of the views within 0.05 of the best; ``weight``, the maximum
    of the surprises weighted by ``(AUROC - 0.5)``, the best view's weight 1.
    """
    chosen = {}
    for maker in MAKERS:
        pairs = zip(found["fit:base"], found[f"{maker}:base"], strict=True)
        aucs = np.array([roc_auc_score(np.r_[0 * a, 0 * b + 1], np.r_[a, b]) for a, b in pairs])
        picked = aucs >= aucs.max() - 0.05
        chosen[f"{maker}|select"] = roc_auc_score(found["y"], test[picked].max(axis=0))
        weights = np.clip((aucs - 0.5) / max(aucs.max() - 0.5, 1e-9), 0, 1)[:, None]
        chosen[f"{maker}|weight"] = roc_auc_score(found["y"], (weights * test).max(axis=0))
    return chosen


def agreeing_choices(pool: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Views chosen per set by how often their most surprising rows are other kinds' too.

    A view's agreement: the share of its top ``AGREE_SHARE`` rows that are also in the
    top of each view of another kind (``col``, ``lat``, the tails, the neighbours),
    averaged (no label seen). ``agree|select``: the maximum of the views at or
    above the median agreement; ``agree|weight``: of the surprises weighted by it.
    """
    kinds = {name: name.split(".")[-1] if name.startswith("p") else name for name in pool}
    tops = {name: v >= np.quantile(v, 1 - AGREE_SHARE) for name, v in pool.items()}
    agreement = np.array(
        [np.mean([(tops[n] & tops[m]).mean() for m in pool if kinds[m] != kinds[n]]) for n in pool]
    )
    test = np.stack(list(pool.values()))
    picked = agreement >= np.median(agreement)
    weights = (agreement / agreement.max())[:, None]
    return {
        "agree|select": roc_auc_score(y, test[picked].max(axis=0)),
        "agree|weight": roc_auc_score(y, (weights * test).max(axis=0)),
    }


def stacked_views(fit: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """A second-stage density over the vector of the default's surprises ``(views, rows)``.

    ``fit``: the surprises of training rows (``fit:base``). ``stack.maha``: the Mahalanobis
    distance to their mean and covariance without the ``STACK_TRIM`` most surprising;
    ``stack.iforest``: an IsolationForest on them; ``+stack.maha``: the former's surprise
    as one more view of the default. A row odd in how its views combine (a large column
    error with a small latent distance, say) stands out there and not in the maximum.
    """
    from aecore.scorer import Surprise

    order = np.argsort(fit.max(axis=0))
    kept = fit[:, order[: len(order) - int(len(order) * STACK_TRIM)]]
    mean = kept.mean(axis=1, keepdims=True)
    precision = np.linalg.pinv(np.cov(kept) + 1e-3 * np.eye(len(kept)), hermitian=True)

    def distance(v: np.ndarray) -> np.ndarray:
        return np.einsum("in,ij,jn->n", v - mean, precision, v - mean)

    forest = IsolationForest(random_state=0).fit(fit.T)
    maha = Surprise().fit(distance(fit))(distance(test))
    return {
        "stack.maha": distance(test),
        "stack.iforest": -forest.score_samples(test.T),
        "+stack.maha": np.vstack([test, maha]).max(axis=0),
    }


def anchored(found: dict[str, np.ndarray], test: np.ndarray) -> dict[str, float]:
    """The default's views kept per set by how they agree with a model-free local view
    (``ANCHORS``: the neighbour distance, the nearest k-means centre), beside which they
    are fused.

    A view's agreement: the Spearman correlation of its surprises with the anchor's over
    the 2000 training rows of ``fit:base`` (no label seen). ``<anchor> anchor<r``: the
    maximum of the anchor and the views whose agreement is at least ``r``; ``+lat``: and
    every latent distance, whatever its agreement.
    """
    fit = found["fit:base"]
    distance = np.array([n.endswith(".lat") for n in found if n.startswith(("p", "tail"))])
    found_anchors = [a for a in ANCHORS if f"fit:{a}" in found]  # too few rows: no km128
    chosen = {}
    for anchor in found_anchors:
        reference = found[f"fit:{anchor}"]
        agreement = np.array([spearmanr(view, reference)[0] for view in fit])
        agreement = np.nan_to_num(agreement, nan=0.0)  # a constant view agrees with nothing
        for least in ANCHOR:
            for label, kept in (
                ("", agreement >= least),
                (" +lat", (agreement >= least) | distance),
            ):
                fused = np.vstack([test[kept], found[anchor]]).max(axis=0)
                chosen[f"{anchor} anchor<{least}{label}"] = roc_auc_score(found["y"], fused)
    return chosen


def fixed_fusion(
    found: dict[str, np.ndarray], lat: float, tail: float, knn: float, knn_as: str, fusion: str
) -> np.ndarray:
    """One fixed fusion of ``FRONTIER``'s grid: the test rows' scores."""
    views = [
        found[n] * (lat if n.endswith(".lat") else tail if n == "tail" else 1.0)
        for n in found
        if n.startswith(("p", "tail"))
    ]
    if knn and knn_as == "view":
        views.append(knn * found["knn.in"])
    stacked = np.stack(views)
    fused = stacked.max(axis=0) if fusion == "max" else FUSIONS[fusion](stacked)
    return fused + knn * found["knn.in"] if knn_as == "term" else fused


def frontier(runs: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Every fixed fusion of ``FRONTIER``: mean AUROC by half, and the sets it leaves more
    than 0.05 below their best peer (``anomaly.py``'s table). The grid's best, picked with
    the labels, bounds what a fixed weighting of these views can reach."""
    peers = pd.read_csv(SUMMARY, index_col=0)["best_peer"]
    rows = []
    for values in itertools.product(*FRONTIER.values()):
        if values[2] == 0 and values[3] == "term":
            continue  # the same as knn 0 as a view
        settings = dict(zip(FRONTIER, values, strict=True))
        per_set: dict[str, list[float]] = {}
        for key, found in runs.items():
            score = fixed_fusion(found, **settings)
            per_set.setdefault(key.split("|")[0], []).append(roc_auc_score(found["y"], score))
        auroc = pd.Series({d: np.mean(v) for d, v in per_set.items()})
        halves = auroc.groupby(auroc.index.map(half)).mean()
        below = [d for d, v in auroc.items() if d in peers and v < peers[d] - 0.05]
        rows.append({**settings, **halves.to_dict(), "below": " ".join(sorted(below))})
    return pd.DataFrame(rows)


def report(cache: Path) -> int:
    """Mean AUROC by half: the default, and the default with local views beside it."""
    stored = np.load(cache)
    runs: dict[str, dict[str, np.ndarray]] = {}
    for key in stored.files:
        dataset, seed, view = key.split("|")
        runs.setdefault(f"{dataset}|{seed}", {})[view] = stored[key]
    local_names = sorted({v for r in runs.values() for v in r if v.startswith(("km", "knn", "gm"))})
    rows = []
    for key, found in runs.items():
        dataset, seed = key.split("|")
        pool = {n: v for n, v in found.items() if n.startswith(("p", "tail"))}
        base = list(pool.values())  # the default's views
        stacked = np.stack(base)
        row = {"dataset": dataset, "half": half(dataset), "seed": int(seed)}
        row["default"] = roc_auc_score(found["y"], stacked.max(axis=0))
        widths = sorted({int(n[1:].split(".")[0]) for n in found if n.startswith("p")})
        for name in found:  # the default's views alone: code0 the embedding, then wider
            if name.startswith("p"):
                width, view = name[1:].split(".")
                label = f"code{widths.index(int(width))}.{view}"
                row[f"{label} alone"] = roc_auc_score(found["y"], found[name])
        row["tail alone"] = roc_auc_score(found["y"], found["tail"])
        for name in local_names:  # a view too many centres for the rows: left out
            extra = [found[name]] if name in found else []
            row[f"+{name}"] = roc_auc_score(found["y"], np.max([*base, *extra], axis=0))
            if extra:
                row[f"{name} alone"] = roc_auc_score(found["y"], found[name])
        row |= synthetic_choices(found, stacked)
        if "fit:knn.in" in found:  # cached since 2026-11-26 (the fit rows' local views)
            row |= anchored(found, stacked)
        for name, score in stacked_views(found["fit:base"], stacked).items():
            row[name] = roc_auc_score(found["y"], score)
        row |= agreeing_choices(pool | {"knn.in": found["knn.in"]}, found["y"])
        with_knn = np.vstack([stacked, found["knn.in"]])
        for fusion, fuse in FUSIONS.items():  # other fusions, without and with knn.in
            row[f"default|{fusion}"] = roc_auc_score(found["y"], fuse(stacked))
            row[f"+knn.in|{fusion}"] = roc_auc_score(found["y"], fuse(with_knn))
        for a, b in itertools.combinations(local_names, 2):
            if a.split(".")[1] != b.split(".")[1]:  # one in each space
                extra = [found[v] for v in (a, b) if v in found]
                fused = np.max([*base, *extra], axis=0)
                row[f"+{a}+{b}"] = roc_auc_score(found["y"], fused)
        rows.append(row)
    table = pd.DataFrame(rows).drop(columns="seed").groupby(["half", "dataset"]).mean()
    means = table.groupby(level="half").mean().T.sort_values("even", ascending=False)
    with pd.option_context("display.width", 250, "display.max_rows", 200):
        print(means.round(4).to_string())
        best = [c for c in means.index[:4] if c != "default"][:3]
        alone = table[[c for c in table.columns if c.endswith(" alone")]]
        oracle = alone.max(axis=1).groupby(level="half").mean()
        found = oracle.round(3).to_dict()
        print(f"\nthe best view per set, picked with the labels (an oracle): {found}")
        print(table[["default", *best]].round(3).to_string())
        grid = frontier(runs)
        grid["all"] = grid["even"] * 10 / 19 + grid["odd"] * 9 / 19
        print(
            f"\nfixed fusions ({len(grid)}), the best by each half and by all 19, picked"
            " with the labels; 'below': sets more than 0.05 under their best peer"
        )
        picks = [grid.loc[grid[by].idxmax()] for by in ("even", "odd", "all")]
        print(pd.DataFrame(picks, index=["best even", "best odd", "best all"]).round(4).to_string())
        fewest = grid["below"].str.split().str.len().min()
        print(f"fewest sets below their best peer - 0.05 in the grid: {fewest}")
    return 0


def main() -> int:
    return run_probe(__doc__, "score_local.npz", collect, report)


if __name__ == "__main__":
    sys.exit(main())
