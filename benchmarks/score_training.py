"""Does more training, less training, or an ensemble over seeds lift the default score? A probe.

For every ADBench set and seed (the protocol of ``anomaly.py``), the rows are prepared
as in ``score_views.py`` and networks of aepipe's defaults are trained in memory: five
that differ only in their seed, and the first of them again at other epoch budgets
(``--epochs``). Each is read through the earlier default score (not nested;
``AnomalyScorer`` with params.yaml's ``latent_weight`` and ``score_trim``, as
``evaluate.score: weighted``); the ensemble averages the first one, three and five
members' scores, each over its training mean.

Measured on 2026-11-25 (seeds 0-2), mean AUROC by half (even / odd):
- one network 0.764 / 0.728; three 0.759 / 0.731; five 0.760 / 0.731, at three and five
  times the fit time. The ensemble steadies the score (the members' AUROC differ by 0.02
  on average, by 0.10 on optdigits) but does not lift it.
- 3 epochs 0.724 / 0.723, 10 epochs 0.751 / 0.726, 40 (the default) 0.764 / 0.728: a
  network trained less, as PyOD's AutoEncoder is (10 epochs), loses on both halves.

Neither is a default. Prints the tables; a probe, so it sets no target.

    .venv/bin/python benchmarks/score_training.py ../shared/datasets/adbench
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from anomaly import defaults, half, print_by_half, splits  # this folder: the protocol
from score_views import Rows, prepare
from sklearn.metrics import roc_auc_score

MEMBERS = (1, 3, 5)


def default_score(
    rows: Rows, seed: int, member: int, epochs: int | None = None
) -> tuple[np.ndarray, float]:
    """The test rows' default score over its training mean, and the seconds of the fit.

    ``rows``: the fitting, validation and test rows of ``score_views.prepare``.
    """
    from aecore.models import build_model, encode_and_reconstruct
    from aecore.scorer import AnomalyScorer
    from aecore.train import train as train_loop

    params = defaults()
    x_fit, x_val, x_test = rows
    settings = params.train if epochs is None else dataclasses.replace(params.train, epochs=epochs)
    torch.manual_seed(seed + 100 * member)
    flat = dataclasses.replace(params.model, nested=False)  # the earlier default's network
    model = build_model(flat, x_fit.shape[1])
    start = time.perf_counter()
    train_loop(model, torch.from_numpy(x_fit), torch.from_numpy(x_val), settings)
    seconds = time.perf_counter() - start
    on_fit, on_test = (encode_and_reconstruct(model, x) for x in (x_fit, x_test))
    scorer = AnomalyScorer(params.evaluate.latent_weight, trim=params.evaluate.score_trim)
    scorer.fit(*on_fit)
    return scorer.score(*on_test) / scorer.score(*on_fit).mean(), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of *.npz files with X and y")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", default="3,10", help="other epoch budgets, comma-separated")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    budgets = [int(value) for value in args.epochs.split(",") if value]
    rows = []
    for dataset, seed, train, test, y_test in splits(args.folder, args.seeds):
        row = {"dataset": dataset, "half": half(dataset), "seed": seed}
        prepared = prepare(train, test, seed)
        members = [default_score(prepared, seed, m) for m in range(max(MEMBERS))]
        scores = [score for score, _ in members]
        for n in MEMBERS:
            row[f"auroc_{n}"] = roc_auc_score(y_test, np.mean(scores[:n], axis=0))
            row[f"fit_s_{n}"] = sum(seconds for _, seconds in members[:n])
        row["members_sd"] = np.std([roc_auc_score(y_test, s) for s in scores])
        for epochs in budgets:
            score, _ = default_score(prepared, seed, 0, epochs)
            row[f"epochs_{epochs}"] = roc_auc_score(y_test, score)
        rows.append(row)
        print(dataset, seed, flush=True)
    print_by_half(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
