"""The cluster distance beside the fused score, and the views it chooses: a probe, by half.

Where the anomalies are "local" (odd only next to their neighbours: vowels, fault,
satellite), the model's views and the marginal tails miss them, and in the score's maximum
their false alarms drown what a local density sees. This probe trains aepipe's default
model through the pipeline's stages (as ``anomaly.py`` does), fits the fused score as the
evaluate stage does, with the cluster distance at weight 1 and every view kept, and
caches per set and seed: the test rows' surprises of every view and of the cluster
distance (``ClusterDistance``: 32 k-means centres); how far above the training rows each
view ranks the blends (``sensitivity``); each view's agreement with the cluster distance
over the training rows (``agreement``); and, for comparison, the surprise of the distance
to the 5th nearest of at most 2048 kept training rows (``knn``, which scores at a third of
``aepipe score``'s throughput target). The report reads every fusion of a grid from the
cache: ``w`` the weight of the cluster distance's surprise; ``a`` the least agreement for
a column error or the tails to count (``-1``: all count); ``m`` the margin within which a
latent distance's sensitivity must lie of the highest, among the model's views or
(``rival``) among them and the cluster distance.

Measured on 2026-11-26, even / odd, and the sets more than 0.05 below their best peer
(SpamBase, odd, is below on seeds 3-5 under every fusion, the default before included):

=============================  ==========================  ==========================
fusion                         seeds 0-2                   seeds 3-5
=============================  ==========================  ==========================
default before (m 0.2)         0.7923 / 0.7628 fault vow.  0.7967 / 0.7483 fault vow.
m 0.2, w 1, a -1               0.7975 / 0.7583 fault       0.7964 / 0.7413 fault
m 0.2, w 0.9, a 0.2            0.8109 / 0.7604 fault       0.8063 / 0.7436 fault
m 0.2 rival, w 0.9, a 0.2      0.8143 / 0.7606 fault       0.8081 / 0.7436 fault
m 0.2 rival, w 1, a 0.3        0.8149 / 0.7541             0.8053 / 0.7348 fault
m 0.1 rival, w 1, a 0.2        0.8087 / 0.7590             0.8095 / 0.7405
**m 0.1 rival, w 0.9, a 0.2**  **0.8102 / 0.7611**         **0.8116 / 0.7430**
m 0.1 rival, w 0.9, a 0.3      0.8126 / 0.7570             0.7982 / 0.7360 shuttle
m 0.1 rival, w 0.8, a 0.2      0.8104 / 0.7624 fault       0.8128 / 0.7450 fault
knn, m 0.1 rival, w 1, a 0.2   0.8126 / 0.7630             0.8171 / 0.7464
=============================  ==========================  ==========================

Chosen on the even half alone, on both seed sets: the fusion whose even half meets the
issue's targets on both (a mean of at least its best peers' 0.803, no even set more than
0.05 below its best peer), and of those the highest mean (the neighbour distance left
out: it scores too slowly). Every fusion at ``m 0.2`` leaves fault below on one seed set
or both, the agreement at 0.3 leaves shuttle below on seeds 3-5; ``m 0.1 rival, w 0.9,
a 0.2`` is the best of the rest. The odd half, untouched by that choice: 0.7611 and
0.7430, against 0.7628 and 0.7483 before. On fault, the blends rank above the training
rows by the cluster distance (0.65-0.67) far more than by any view of the model (at most
0.48-0.52), so every latent distance (0.41-0.66 alone) drops out, and what is left reads
0.621 (the cluster distance alone 0.67-0.71; the column errors that agree with it count). The
agreement drops the tails on fault (0.00-0.15) and satellite (-0.15 to -0.12), and
fault's column errors on two seeds of six (0.03-0.19); elsewhere the views agree (mostly
0.4-0.9) and count.

    .venv/bin/python benchmarks/score_cluster.py ../shared/datasets/adbench [--first-seed 3]
    .venv/bin/python benchmarks/score_cluster.py --report --cache score_cluster.npz
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from anomaly import SUMMARY, half, run_probe, splits, trained  # this folder: the protocol
from score_terms import kth_distance
from sklearn.metrics import roc_auc_score

KEPT = 2048  # training rows kept for the neighbour distance
WEIGHTS = (1.0, 0.9, 0.8, 0.7)
AGREEMENTS = (-1.0, 0.1, 0.2, 0.3)


def views(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """The cached arrays of one split: surprises, agreements, kinds, what the blends keep."""
    from aecore.models import model_outputs
    from aecore.scorer import FusedScorer, Surprise, blend_rows

    params, model, x_fit, x_test = trained(train, test)
    on_fit, on_test = (model_outputs(model, x) for x in (x_fit, x_test))
    blends = blend_rows(x_fit)
    config = params.evaluate
    scorer = FusedScorer(  # every view kept: the report chooses
        config.score_trim, margin=1.0, cluster_weight=1.0, min_agreement=-1.0
    )
    scorer.fit_rows(on_fit, x_fit, (model_outputs(model, blends), blends))
    found = scorer.views(on_test, x_test)
    surprises = np.stack([s(v) for s, v in zip(scorer.surprises_, found, strict=True)])
    std = x_fit.std(axis=0)
    fit, scaled = (part / np.where(std > 0, std, 1) for part in (x_fit, x_test))
    reference = fit[np.random.default_rng(0).permutation(len(fit))[:KEPT]]
    knn = Surprise().fit(kth_distance(reference, reference, leave_self_out=True))
    return {
        "views": surprises,
        "sensitivity": np.array(scorer.sensitivity_),  # the model's views, on the blends
        "cluster_sensitivity": np.array(scorer.cluster_sensitivity_),
        "distance": np.array([kind == "distance" for kind in scorer.view_kinds()]),
        "cluster": scorer.cluster_surprise_(scorer.clusters_.score(x_test)),
        "knn": knn(kth_distance(reference, scaled, leave_self_out=False)),
        "agreement": np.array(scorer.agreement_),
        "choosable": np.array([kind in ("error", "tails") for kind in scorer.view_kinds()]),
    }


def collect(folder: Path, seeds: int, first_seed: int, cache: Path) -> None:
    """Cache every split's arrays (``views``)."""
    stored: dict[str, np.ndarray] = {}
    for dataset, seed, train, test, y_test in splits(folder, seeds, first_seed=first_seed):
        start = time.perf_counter()
        stored[f"{dataset}|{seed}|y"] = y_test
        for name, values in views(train, test).items():
            stored[f"{dataset}|{seed}|{name}"] = values
        print(f"{dataset:20} seed {seed} {time.perf_counter() - start:6.1f} s", flush=True)
    np.savez_compressed(cache, **stored)


def fused(
    found: dict[str, np.ndarray],
    local: str,
    weight: float,
    least: float,
    margin: float,
    rival: bool,
) -> np.ndarray:
    """The score of one fusion: the views the blends and the agreement keep, and ``local``.

    A latent distance counts within ``margin`` of the view that ranks the blends highest,
    among the model's views, or (``rival``) among them and the cluster distance; a column
    error or the tails where their agreement is at least ``least``.
    """
    sensitivity = found["sensitivity"]
    highest = max(sensitivity.max(), float(found["cluster_sensitivity"]) if rival else 0.0)
    blends = np.r_[sensitivity >= highest - margin, np.ones(len(found["views"]) - len(sensitivity))]
    counts = (~found["distance"] | (blends > 0)) & (
        ~found["choosable"] | (found["agreement"] >= least)
    )
    return np.vstack([found["views"][counts], weight * found[local]]).max(axis=0)


def report(cache: Path) -> int:
    """Mean AUROC by half of every fusion, and the sets it leaves 0.05 below their best peer."""
    stored = np.load(cache)
    runs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key in stored.files:
        dataset, seed, name = key.split("|")
        runs.setdefault((dataset, seed), {})[name] = stored[key]
    fusions = {
        "default before": partial(
            fused, local="cluster", weight=0, least=-1, margin=0.2, rival=False
        )
    }
    for margin, rival in ((0.2, False), (0.2, True), (0.1, True)):
        for weight in WEIGHTS:
            for least in AGREEMENTS:
                name = f"m {margin}{' rival' if rival else ''}, w {weight}, a {least}"
                fusions[name] = partial(
                    fused, local="cluster", weight=weight, least=least, margin=margin, rival=rival
                )
    for margin, rival in ((0.2, False), (0.1, True)):
        name = f"knn, m {margin}{' rival' if rival else ''}, w 1, a 0.2"
        fusions[name] = partial(fused, local="knn", weight=1, least=0.2, margin=margin, rival=rival)
    peers = pd.read_csv(SUMMARY, index_col=0)["best_peer"]
    rows = []
    for name, fuse in fusions.items():
        per_set: dict[str, list[float]] = {}
        for (dataset, _), found in runs.items():
            per_set.setdefault(dataset, []).append(roc_auc_score(found["y"], fuse(found)))
        auroc = pd.Series({d: np.mean(v) for d, v in per_set.items()})
        halves = auroc.groupby(auroc.index.map(half)).mean()
        below = [d for d, v in auroc.items() if d in peers and v < peers[d] - 0.05]
        rows.append({"fusion": name, **halves.round(4).to_dict(), "below": " ".join(below)})
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def main() -> int:
    return run_probe(__doc__, "score_cluster.npz", collect, report)


if __name__ == "__main__":
    sys.exit(main())
