"""Does an ensemble over seeds make the default score hold better? A probe, by half.

For every ADBench set and seed (the protocol of ``anomaly.py``), the rows are prepared
as in ``score_views.py`` and five networks of aepipe's defaults are trained in memory,
differing only in their seed. The default score of each (``AnomalyScorer`` with
params.yaml's ``latent_weight`` and ``score_trim``), over its training mean, is averaged
over the first one, three and five members.

Measured on 2026-11-25 (seeds 0-2), mean AUROC: one network even 0.764, odd 0.728; three
0.759 / 0.731; five 0.760 / 0.731, at three and five times the fit time. The ensemble
steadies the score (the members' AUROC differ by 0.02 on average, by 0.10 on
optdigits) but does not lift it: optdigits falls from 0.676 to 0.608, Waveform rises
from 0.780 to 0.813. Not a default. Prints the table; a probe, so it sets no target.

    .venv/bin/python benchmarks/score_seeds.py ../shared/datasets/adbench
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomaly import REPO, half, splits  # this folder: the benchmark's protocol
from score_views import prepare
from sklearn.metrics import roc_auc_score

MEMBERS = (1, 3, 5)


def member_scores(train: np.ndarray, test: np.ndarray, seed: int) -> tuple[list, list]:
    """The test rows' default score of each member, over its training mean, and fit times."""
    from aecore.config import load_params
    from aecore.models import build_model, encode_and_reconstruct
    from aecore.scorer import AnomalyScorer
    from aecore.train import train as train_loop

    params = load_params(REPO / "params.yaml")
    x_fit, x_val, x_test = prepare(train, test, seed, params.normalize.val_fraction)
    scores, seconds = [], []
    for member in range(max(MEMBERS)):
        torch.manual_seed(seed + 100 * member)
        model = build_model(params.model, x_fit.shape[1])
        start = time.perf_counter()
        train_loop(model, torch.from_numpy(x_fit), torch.from_numpy(x_val), params.train)
        seconds.append(time.perf_counter() - start)
        on_fit, on_test = (encode_and_reconstruct(model, x) for x in (x_fit, x_test))
        scorer = AnomalyScorer(params.evaluate.latent_weight, trim=params.evaluate.score_trim)
        scorer.fit(*on_fit)
        scores.append(scorer.score(*on_test) / scorer.score(*on_fit).mean())
    return scores, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of *.npz files with X and y")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for dataset, seed, train, test, y_test in splits(args.folder, args.seeds):
        scores, seconds = member_scores(train, test, seed)
        row = {"dataset": dataset, "half": half(dataset), "seed": seed}
        for n in MEMBERS:
            row[f"auroc_{n}"] = roc_auc_score(y_test, np.mean(scores[:n], axis=0))
            row[f"fit_s_{n}"] = sum(seconds[:n])
        row["members_sd"] = np.std([roc_auc_score(y_test, s) for s in scores])
        rows.append(row)
    table = pd.DataFrame(rows).drop(columns="seed").groupby(["half", "dataset"]).mean()
    with pd.option_context("display.width", 200):
        print(table.round(3).to_string())
        print("\nmean by half:")
        print(table.groupby(level="half").mean().round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
