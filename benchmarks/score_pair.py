"""Two trainings of one table, scored together: a probe, by half.

More, noisier training steps on small tables (a batch of 64 instead of 256) lift the even
half and lose the odd one (``docs/benchmarks.md``, step 6). This probe asks whether the two
regimes together hold on both: per set and seed (``anomaly.py``'s protocol), it fits the
pipeline twice through ``anomaly.fit_aepipe`` (the real stages and scoring path), once
with params.yaml's defaults (``a``) and once with ``--b``'s settings, and reads the AUROC
of each latent table's ``anomaly_score`` alone and of the two fused: ``max`` (the union of
their views, as the fused score fuses its own), ``mean`` (their sum; both are surprises,
``-log(1 - q)``, so they share a scale) and ``rank`` (the sum of their ranks). Fit seconds
are the two fits'. Scores are cached (``--cache``) and ``--report`` reads a cache again.

Measured on 2026-11-26, one thread per half, ``--b train.batch_size=64,train.epochs=30``:

=============  ===============  ===============
score          seeds 0-2        seeds 3-5
=============  ===============  ===============
a (default)    0.7677 / 0.7621  0.7714 / 0.7491
b              0.7861 / 0.7546  0.7923 / 0.7389
max            0.7849 / 0.7585  0.7914 / 0.7411
mean           0.7826 / 0.7624  0.7882 / 0.7478
rank           0.7812 / 0.7628  0.7864 / 0.7487
=============  ===============  ===============

The mean holds on both halves (the even half +0.015 and +0.017, the odd one +0.000 and
-0.001), at the cost of both fits: 2.1 to 2.9 times the default's on the small sets, where
PyOD's AutoEncoder is fastest (letter, Pima, vowels), so it would miss the fit-time target.
Cheaper pairs lose the odd half: the b model with a snapshot of itself at 8 epochs (``--a
train.batch_size=64,train.epochs=8``), mean 0.7863 / 0.7590; with a slower twin (a
learning rate of 0.0025), 0.7859 / 0.7592; 20 epochs at 256 with 15 at 64, 0.7707 / 0.7611.

    .venv/bin/python benchmarks/score_pair.py ../shared/datasets/adbench --half even
    .venv/bin/python benchmarks/score_pair.py --report --cache score_pair_even.npz
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from anomaly import SETTINGS, fit_aepipe, half, probe_parser, splits  # this folder
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from flows.cli import parse_sets


def collect(folder: Path, args: argparse.Namespace) -> None:
    """Fit both settings on every split and cache the test rows' scores and fit seconds."""
    stored: dict[str, np.ndarray] = {}
    fits = (("a", args.a), ("b", args.b))
    pairs = [(name, parse_sets([kv for kv in text.split(",") if kv])) for name, text in fits]
    for dataset, seed, train, test, y_test in splits(
        folder, args.seeds, None, args.half, args.first_seed
    ):
        key = f"{dataset}|{seed}"
        for name, overrides in pairs:
            SETTINGS.clear()
            SETTINGS.update(overrides)
            with tempfile.TemporaryDirectory() as root:
                scores, seconds = fit_aepipe(train, test, Path(root))
            stored[f"{key}|{name}"], stored[f"{key}|{name}:fit"] = scores, np.array(seconds)
        stored[f"{key}|y"] = y_test
        print(f"{dataset:20} seed {seed}", flush=True)
    SETTINGS.clear()
    np.savez_compressed(args.cache, **stored)


def report(cache: Path) -> int:
    """Print each set's AUROCs and fit seconds, then the means by half."""
    stored = np.load(cache)
    rows = []
    for key in sorted({name.rsplit("|", 1)[0] for name in stored}):
        y, a, b = stored[f"{key}|y"], stored[f"{key}|a"], stored[f"{key}|b"]
        rows.append(
            {
                "dataset": key.split("|")[0],
                "a": roc_auc_score(y, a),
                "b": roc_auc_score(y, b),
                "max": roc_auc_score(y, np.fmax(a, b)),
                "mean": roc_auc_score(y, a + b),
                "rank": roc_auc_score(y, rankdata(a) + rankdata(b)),
                "fit_a": float(stored[f"{key}|a:fit"]),
                "fit_b": float(stored[f"{key}|b:fit"]),
            }
        )
    table = pd.DataFrame(rows).groupby("dataset").mean()
    table["half"] = [half(name) for name in table.index]
    print(table.round(3).to_string())
    print()
    print(table.groupby("half").mean(numeric_only=True).round(4).to_string())
    return 0


def main() -> int:
    parser = probe_parser(__doc__, "score_pair.npz")
    parser.add_argument("--half", choices=("even", "odd"), help="only the sets of this half")
    parser.add_argument("--a", default="", help="k=v,... over params.yaml (default: none)")
    parser.add_argument("--b", default="train.batch_size=64,train.epochs=30")
    args = parser.parse_args()
    if not args.report:
        if args.folder is None:
            parser.error("a folder of *.npz is needed unless --report")
        collect(args.folder, args)
    return report(args.cache)


if __name__ == "__main__":
    sys.exit(main())
