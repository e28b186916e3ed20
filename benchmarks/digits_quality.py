"""Digits, 20% held out, k=8: the autoencoder's held-out MSE against PCA's at the same k.

Target: ratio <= 0.5 for each of 3 seeds (split and initialisation), with params.yaml's
defaults under the ``compress`` preset (``aepipe run --preset compress``).
The defaults themselves serve anomaly detection: a short training of a narrow model.
Prints a table; exits 1 when a seed misses the target.

    .venv/bin/python benchmarks/digits_quality.py
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from aecore import evaluate, normalize, schema, train
from aecore.config import load_params, preset
from aecore.layout import Layout
from aecore.models import load_model

TARGET = 0.5
SEEDS = (0, 1, 2)


def main() -> int:
    path = Path(__file__).resolve().parents[1] / "params.yaml"
    params = load_params(path, preset(path, "compress"))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        layout = Layout(Path(folder), "digits")
        schema.ingest(params.data, layout.raw)
        for seed in SEEDS:
            split = dataclasses.replace(params.normalize, seed=seed)
            normalize.normalize(layout.raw, layout.processed, layout.normalizer, split)
            start = time.perf_counter()
            fit = train.fit_autoencoder(
                layout.processed,
                layout.model,
                layout.history,
                params.model,
                dataclasses.replace(params.train, seed=seed),
            )
            seconds = time.perf_counter() - start
            features = normalize.load_features(layout.processed)
            x, is_val = features.x, features.is_val
            k = load_model(layout.model).k  # params' latent_dim, or sized from the inputs
            pca = evaluate.pca_baseline_mse(x[~is_val], x[is_val], k)
            rows.append((seed, fit.best_val_loss, pca, fit.epochs_run, seconds))
    print(f"{'seed':>4} {'AE MSE':>8} {'PCA MSE':>8} {'ratio':>6} {'epochs':>6} {'train s':>7}")
    for seed, ae, pca, epochs, seconds in rows:
        print(f"{seed:>4} {ae:>8.4f} {pca:>8.4f} {ae / pca:>6.3f} {epochs:>6} {seconds:>7.1f}")
    worst = max(ae / pca for _, ae, pca, _, _ in rows)
    print(f"worst ratio {worst:.3f} (target <= {TARGET})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
