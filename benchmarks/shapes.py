"""Tables of shapes that none of the nineteen ADBench sets has, for ``anomaly.py``.

The nineteen sets of the anomaly benchmark have 166 columns at most and 768 rows at least.
Users' tables (and ADBench's other sets: InternetAds has 1555 columns, Hepatitis 80
rows) can be wider or smaller. This writes such sets as ``anomaly.py`` reads them (``X``,
``y`` in ``*.npz``), from random numbers and scikit-learn's bundled data only.

``wide``:

- ``1_lowrank1555``: 2000 rows of 1555 columns on an 8-dimensional subspace, with noise;
  2 % of the rows carry more noise, off the subspace (InternetAds' shape);
- ``2_digits1024``: scikit-learn's digits drawn at 32 x 32 pixels (1024 columns), every
  digit but 0, and 36 zeros as the anomalies (an image set, as ADBench's MNIST);
- ``3_lowrank4000``: 2000 rows of 4000 columns, as the first.

``small`` (ADBench's WDBC and wine are drawn from the same sources):

- ``1_wdbc``: the breast cancer set's 357 benign rows and 10 malignant ones (30 columns);
- ``2_wine``: the wine set's classes 1 and 2, and 10 rows of class 0 (13 columns);
- ``3_wdbc77``: 70 benign rows and 7 malignant ones.

Then ``anomaly.py`` runs them against the peers, with its targets; a test part holds 2 to
11 anomalies of a small set, so read those with ``--seeds 10``::

    .venv/bin/python benchmarks/shapes.py wide /tmp/wide
    .venv/bin/python benchmarks/anomaly.py /tmp/wide --methods aepipe,pyod_ae --csv wide.csv
    .venv/bin/python benchmarks/shapes.py small /tmp/small
    .venv/bin/python benchmarks/anomaly.py /tmp/small --seeds 10 --csv small.csv

Measured on 2026-11-26: docs/benchmarks.md ("Wide tables", "Small tables").
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


def labelled(x: np.ndarray, normal: np.ndarray, odd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``normal`` then ``odd`` of ``x``, and their labels (1: an anomaly)."""
    return x[np.r_[normal, odd]], np.r_[np.zeros(len(normal), int), np.ones(len(odd), int)]


def digits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The digits at 32 x 32 pixels with light noise: 1 to 9 normal, 36 zeros odd."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    large = np.stack([zoom(image.reshape(8, 8), 4, order=1) for image in images])
    normal = np.flatnonzero(labels != 0)
    zeros = rng.choice(np.flatnonzero(labels == 0), 36, replace=False)
    x, y = labelled(large.reshape(len(large), -1), normal, zeros)
    return x + rng.normal(scale=0.1, size=x.shape), y


def small(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The small sets: benign against a few malignant rows, two wine classes against a third."""
    from sklearn.datasets import load_breast_cancer, load_wine

    x, y = load_breast_cancer(return_X_y=True)  # 0: malignant, 1: benign
    benign, malignant = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    wine, kind = load_wine(return_X_y=True)
    return {
        "1_wdbc": labelled(x, benign, rng.choice(malignant, 10, replace=False)),
        "2_wine": labelled(
            wine,
            np.flatnonzero(kind != 0),
            rng.choice(np.flatnonzero(kind == 0), 10, replace=False),
        ),
        "3_wdbc77": labelled(
            x, rng.choice(benign, 70, replace=False), rng.choice(malignant, 7, replace=False)
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("wide", "small"))
    parser.add_argument("folder", type=Path, help="where the *.npz files go")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if args.kind == "wide":
        sets = {
            "1_lowrank1555": low_rank(2000, 1555, rng),
            "2_digits1024": digits(rng),
            "3_lowrank4000": low_rank(2000, 4000, rng),
        }
    else:
        sets = small(rng)
    for name, (x, y) in sets.items():
        np.savez(args.folder / f"{name}.npz", X=x.astype(np.float32), y=y)
        print(f"{name}: {x.shape[0]} rows x {x.shape[1]} columns, {y.sum()} anomalies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
