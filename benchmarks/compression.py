"""Compression quality: held-out reconstruction MSE against PCA at equal k, and table bytes.

Runs the real stages (aecore.pipeline) with the defaults of params.yaml in the compression
preset ``compress`` of params.yaml (``aepipe run --preset compress``) on digits and,
when given the ADBench folder, on musk, for k = 2, 8, 16. Prints the AE/PCA MSE ratio and the
latent table's bytes against the raw Parquet's. Targets: ratio <= 0.5 on digits at k=8 and
<= 0.8 on musk at k=16; exit 1 when one is missed.

    .venv/bin/python benchmarks/compression.py [../shared/datasets/adbench]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from aecore.config import load_params, preset
from aecore.evaluate import pca_baseline_mse
from aecore.layout import Layout
from aecore.normalize import load_features
from aecore.pipeline import STAGES, run_stage

REPO = Path(__file__).resolve().parents[1]
TARGETS = {("digits", 8): 0.5, ("musk", 16): 0.8}


def measure(name: str, source: str, label: str | None, k: int, root: Path) -> tuple:
    params = load_params(REPO / "params.yaml")
    compress = preset(REPO / "params.yaml", "compress")  # aepipe run --preset compress
    data = dataclasses.replace(
        params.data, dataset=name, source=source, label_col=label, image_shape=None
    )
    overrides = {**compress, "model.latent_dim": k}
    params = dataclasses.replace(params, data=data).with_overrides(overrides)
    layout = Layout(root, name)
    for stage in STAGES:
        run_stage(stage, params, layout, metadata={})
    features = load_features(layout.processed)
    x, is_val = features.x, features.is_val
    ae = float(pd.read_json(layout.metrics, typ="series")["recon_mse"])
    pca = pca_baseline_mse(x[~is_val], x[is_val], k)
    return (
        ae,
        pca,
        sum(p.stat().st_size for p in layout.raw.glob("*.parquet")),
        layout.partition("train", "0").stat().st_size,
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sources = [("digits", "sklearn:digits", "target")]
        if len(sys.argv) > 1:
            musk = np.load(Path(sys.argv[1]) / "25_musk.npz")
            frame = pd.DataFrame(musk["X"], columns=[f"x{i}" for i in range(musk["X"].shape[1])])
            frame["y"] = musk["y"].astype(int)
            frame.to_parquet(root / "musk.parquet")
            sources.append(("musk", str(root / "musk.parquet"), "y"))
        rows, missed = [], False
        for name, source, label in sources:
            for k in (2, 8, 16):
                ae, pca, raw_bytes, table_bytes = measure(name, source, label, k, root)
                target = TARGETS.get((name, k))
                ok = target is None or ae / pca <= target
                missed |= not ok
                rows.append((name, k, ae, pca, raw_bytes, table_bytes, target, ok))
    print(
        f"{'dataset':<8} {'k':>3} {'AE MSE':>8} {'PCA MSE':>8} {'ratio':>6} {'raw KB':>7} "
        f"{'table KB':>8} {'target':>7}"
    )
    for name, k, ae, pca, raw_bytes, table_bytes, target, ok in rows:
        mark = "" if target is None else f"<= {target}" + ("" if ok else " MISSED")
        print(
            f"{name:<8} {k:>3} {ae:>8.4f} {pca:>8.4f} {ae / pca:>6.3f} {raw_bytes / 1024:>7.0f} "
            f"{table_bytes / 1024:>8.0f} {mark:>7}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
