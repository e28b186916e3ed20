"""Wide tables for ``anomaly.py``: thousands of columns, which none of the nineteen has.

The nineteen ADBench sets of the anomaly benchmark have at most 166 columns; tables of
users (and ADBench's InternetAds, 1555 columns, or speech, 400) can have thousands. This
writes three such sets, as ``anomaly.py`` reads them (``X``, ``y`` in ``*.npz``):

- ``1_lowrank1555``: 2000 rows of 1555 columns on an 8-dimensional subspace, with noise;
  2 % of the rows carry more noise, off the subspace (InternetAds' shape);
- ``2_digits1024``: scikit-learn's digits drawn at 32 x 32 pixels (1024 columns), every
  digit but 0, and 36 zeros as the anomalies (an image set, as ADBench's MNIST);
- ``3_lowrank4000``: 2000 rows of 4000 columns, as the first.

Then ``anomaly.py`` runs them against PyOD's AutoEncoder, with its targets (fit time,
no set more than 0.05 below the best peer)::

    .venv/bin/python benchmarks/wide_sets.py /tmp/wide
    .venv/bin/python benchmarks/anomaly.py /tmp/wide --methods aepipe,pyod_ae --csv wide.csv

Measured on 2026-11-26 (2-core CPU), mean AUROC and fit seconds over seeds 0-2, aepipe
against PyOD's AutoEncoder: see docs/benchmarks.md ("Wide tables").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ANOMALIES = 0.02  # share of the rows off the subspace


def low_rank(rows: int, columns: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows on an 8-dimensional subspace with noise; ``ANOMALIES`` of them with more noise."""
    x = rng.normal(size=(rows, 8)) @ rng.normal(size=(8, columns))
    x += 0.3 * rng.normal(size=x.shape)
    y = np.zeros(rows, int)
    odd = rng.permutation(rows)[: int(ANOMALIES * rows)]
    x[odd] += 1.5 * rng.normal(size=(len(odd), columns))
    y[odd] = 1
    return x, y


def digits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The digits at 32 x 32 pixels with light noise: 1 to 9 normal, 36 zeros odd."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    large = np.stack([zoom(image.reshape(8, 8), 4, order=1) for image in images])
    normal = np.flatnonzero(labels != 0)
    zeros = rng.choice(np.flatnonzero(labels == 0), 36, replace=False)
    x = large[np.r_[normal, zeros]].reshape(len(normal) + len(zeros), -1)
    x = x + rng.normal(scale=0.1, size=x.shape)
    return x, np.r_[np.zeros(len(normal), int), np.ones(len(zeros), int)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the *.npz files go")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sets = {
        "1_lowrank1555": low_rank(2000, 1555, rng),
        "2_digits1024": digits(rng),
        "3_lowrank4000": low_rank(2000, 4000, rng),
    }
    for name, (x, y) in sets.items():
        np.savez(args.folder / f"{name}.npz", X=x.astype(np.float32), y=y)
        print(f"{name}: {x.shape[0]} rows x {x.shape[1]} columns, {y.sum()} anomalies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
