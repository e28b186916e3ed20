"""Which terms of an anomaly score hold on data nobody tuned them on: a probe, by half.

For every ADBench set and seed (the protocol of ``anomaly.py``), aepipe is fitted with the
defaults of params.yaml through the same stages; then each term is measured alone and in
combinations, on the test part:
- ``column``: the mean per-column error over its training scale (the score's first term);
- ``latent``: the squared Mahalanobis distance of the latent vector over k (its second);
- ``knn``: the distance to the 5th nearest training row in the model's input space;
- ``score``: the latent table's ``anomaly_score`` (the default);
- ``sum3``: the three terms, each over its training mean, summed;
- ``max3``: the largest of the three terms' quantiles among the training rows;
- ``fisher3``: the sum of ``-log(1 - quantile)`` of the three terms.

Measured on 2026-11-25 (seeds 0-2), mean AUROC: the default 0.752 (even) / 0.726 (odd);
``sum3`` 0.774 / 0.724, ``max3`` 0.776 / 0.725, ``fisher3`` 0.775 / 0.722. kNN lifts the
even half's local sets (vowels, letter, fault, Wilt) and nothing on the odd half: not a
default. Prints the table; a probe, so it sets no target.

    .venv/bin/python benchmarks/score_terms.py ../shared/datasets/adbench [--half odd]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomaly import REPO, fit_aepipe, half, print_by_half, splits  # this folder
from sklearn.metrics import roc_auc_score

NEIGHBOURS = 5


def kth_distance(reference: np.ndarray, rows: np.ndarray, leave_self_out: bool) -> np.ndarray:
    """Each row's distance to its ``NEIGHBOURS``-th nearest reference row."""
    reference_t, k = torch.from_numpy(reference), NEIGHBOURS + int(leave_self_out)
    parts = [
        torch.cdist(chunk, reference_t).topk(k, largest=False).values[:, -1]
        for chunk in torch.from_numpy(rows).split(4096)
    ]
    return torch.cat(parts).numpy()


def terms(train: np.ndarray, test: np.ndarray) -> tuple[dict, dict, np.ndarray]:
    """The three terms on the training and the test rows, and the default's test scores."""
    from aecore.config import resolve_params
    from aecore.layout import Layout
    from aecore.models import encode_and_reconstruct, load_model
    from aecore.normalize import Normalizer
    from aecore.scorer import AnomalyScorer

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        scores, _ = fit_aepipe(train, test, root)
        layout = Layout(
            root, resolve_params(REPO / "params.yaml", str(root / "train.parquet")).data.dataset
        )
        model = load_model(layout.model)
        scorer = AnomalyScorer.from_dict(json.loads(layout.reference.read_text()))
        normalizer = Normalizer.from_json(layout.normalizer)
    columns = [f"x{i}" for i in range(train.shape[1])]
    inputs = [normalizer.transform(pd.DataFrame(part, columns=columns)) for part in (train, test)]
    found = []
    for x in inputs:
        latents, errors, _ = encode_and_reconstruct(model, x)
        offset = latents - scorer.latent_mean_
        found.append(
            {
                "column": scorer.scaled_errors(errors).mean(axis=1),
                "latent": ((offset @ scorer.latent_precision_) * offset).sum(axis=1)
                / latents.shape[1],
            }
        )
    reference = inputs[0].astype(np.float64)
    found[0]["knn"] = kth_distance(reference, reference, leave_self_out=True)
    found[1]["knn"] = kth_distance(reference, inputs[1].astype(np.float64), leave_self_out=False)
    return found[0], found[1], scores


def measures(on_train: dict, on_test: dict, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Every term and combination, as test scores."""
    names = ("column", "latent", "knn")

    def quantile(name: str) -> np.ndarray:
        ordered = np.sort(on_train[name])
        return np.searchsorted(ordered, on_test[name], side="right") / (len(ordered) + 1)

    quantiles = [quantile(name) for name in names]
    scaled = [on_test[name] / np.mean(on_train[name]) for name in names]
    return {
        **{name: on_test[name] for name in names},
        "score": scores,
        "sum3": sum(scaled),
        "max3": np.maximum.reduce(quantiles) + 1e-3 * sum(scaled),  # ties broken by the sum
        "fisher3": sum(-np.log(np.clip(1 - q, 1e-6, 1)) for q in quantiles),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of *.npz files with X and y")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--half", choices=("even", "odd"), help="only the sets of this half")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for dataset, seed, train, test, y_test in splits(args.folder, args.seeds, None, args.half):
        found = measures(*terms(train, test))
        rows.append(
            {"half": half(dataset), "dataset": dataset}
            | {name: roc_auc_score(y_test, values) for name, values in found.items()}
        )
        print(dataset, seed, flush=True)
    print_by_half(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
