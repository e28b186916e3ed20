"""Anomaly detection against the peers, with the ADBench protocol.

For every ``*.npz`` (arrays ``X``, ``y`` with 1 = anomaly) in the folder given: a 70/30
stratified split per seed; each detector is fitted on the unlabeled training part (its
anomalies included) and scores the test part; AUROC on the test part, mean of 3 seeds.

Detectors: aepipe with the defaults of params.yaml, through the real stages (ingest,
normalize, train, evaluate) and the real scoring path (``score_batch``), scored by the
latent table's ``anomaly_score``; aepipe with each other model kind; PyOD's AutoEncoder and VAE,
PCA and IsolationForest, at their defaults. PyOD is a benchmark-only dependency:
``pip install -e '.[bench]'``.

Fit seconds: aepipe's ingest + normalize + train stages (the evaluate stage, which fits
the score's column scales and latent moments in a fraction of a second and draws the
plots, is left out); PyOD's ``fit``. Same process, same machine, one after another.

The sets fall into two fixed halves by the parity of their ADBench number (``6_cardio``:
even). Defaults are chosen on one half; the other is reported untouched.

Targets, against the best measured peer per dataset (IsolationForest, PCA, PyOD's
AutoEncoder and VAE; ADBench's published PCA and IsolationForest stand beside them):
- on each half, the default's mean AUROC is at least the mean of the per-dataset best;
- no dataset is more than 0.05 below its best peer;
- the default fits no slower than PyOD's AutoEncoder on every dataset.
Prints a table, writes a CSV, exits 1 when a target is missed.

    .venv/bin/python benchmarks/anomaly.py ../shared/datasets/adbench [--csv out.csv]
    .venv/bin/python benchmarks/anomaly.py DIR --quick     # six sets, for development
    .venv/bin/python benchmarks/anomaly.py DIR --half even # the half that chooses

PyOD's VAE is slow (minutes per fit on shuttle). On a 2-core machine, split the run in two
one-thread processes, then merge; aepipe and PyOD's AutoEncoder stay in one process:

    .venv/bin/python benchmarks/anomaly.py DIR --threads 1 --csv a.csv \
        --methods aepipe,dense,sparse,vae,pyod_ae,pca,iforest &
    .venv/bin/python benchmarks/anomaly.py DIR --threads 1 --csv b.csv --methods pyod_vae
    .venv/bin/python benchmarks/anomaly.py DIR --merge a.csv b.csv --csv all.csv
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from targets import verdict  # this folder: the one way a benchmark ends

if TYPE_CHECKING:
    from torch import nn

    from aecore.config import Params
    from aecore.layout import Layout

REPO = Path(__file__).resolve().parents[1]
SUMMARY = REPO / "benchmarks" / "results" / "anomaly_adbench.summary.csv"  # the last full run
OURS = "aepipe"
ALL_KINDS = ("dense", "denoising", "sparse", "vae")
PEERS = ("pyod_ae", "pyod_vae", "pca", "iforest")
# ADBench (NeurIPS 2022) Table D4, unsupervised, same protocol: AUROC of PCA and IForest.
PUBLISHED = {
    name: {"adbench_pca": pca / 100, "adbench_iforest": iforest / 100}
    for name, pca, iforest in (
        ("5_campaign", 72.78, 71.71),
        ("6_cardio", 95.55, 93.19),
        ("7_Cardiotocography", 74.67, 67.57),
        ("12_fault", 46.02, 57.02),
        ("20_letter", 50.29, 61.07),
        ("22_magic.gamma", 67.22, 73.25),
        ("23_mammography", 88.72, 86.39),
        ("25_musk", 100.00, 99.99),
        ("26_optdigits", 51.65, 70.92),
        ("27_PageBlocks", 90.64, 89.57),
        ("29_Pima", 70.77, 72.87),
        ("30_satellite", 59.62, 70.43),
        ("32_shuttle", 98.62, 99.56),
        ("35_SpamBase", 54.66, 64.76),
        ("38_thyroid", 96.34, 98.30),
        ("40_vowels", 65.29, 73.94),
        ("41_Waveform", 65.48, 71.47),
        ("44_Wilt", 20.39, 41.94),
        ("47_yeast", 41.15, 37.76),
    )
}
QUICK = ("6_cardio", "20_letter", "27_PageBlocks", "38_thyroid", "40_vowels", "47_yeast")


def half(dataset: str) -> str:
    """The fixed half a set belongs to: the parity of its ADBench number (``6_cardio``: even).

    Defaults are chosen on one half and confirmed, untouched, on the other.
    """
    return "even" if int(dataset.split("_")[0]) % 2 == 0 else "odd"


def other_kinds() -> list[str]:
    """The model kinds besides params.yaml's default one (which runs as ``aepipe``)."""
    default = defaults().model.kind
    return [kind for kind in ALL_KINDS if kind != default]


SETTINGS: dict[str, object] = {}  # --set: parameters tried in place of params.yaml's


def train_stages(
    train: np.ndarray, root: Path, overrides: dict[str, object] | None = None
) -> tuple[Params, Layout, float]:
    """Write ``train`` as ``root/train.parquet`` and run the ingest, normalize and train
    stages on it, as ``aepipe run --source train.parquet`` does; their seconds too."""
    from aecore.config import resolve_params
    from aecore.layout import Layout
    from aecore.pipeline import run_stage

    columns = [f"x{i}" for i in range(train.shape[1])]
    pd.DataFrame(train, columns=columns).to_parquet(root / "train.parquet")
    params = resolve_params(REPO / "params.yaml", str(root / "train.parquet"), overrides=overrides)
    layout = Layout(root, params.data.dataset)
    start = time.perf_counter()
    for stage in ("ingest", "normalize", "train"):
        run_stage(stage, params, layout)
    return params, layout, time.perf_counter() - start


def fit_aepipe(
    train: np.ndarray, test: np.ndarray, root: Path, kind: str | None = None
) -> tuple[np.ndarray, float]:
    """Fit aepipe on ``train`` as ``aepipe run --source train.parquet`` would; score ``test``."""
    from aecore.models import load_model
    from aecore.normalize import Normalizer
    from aecore.pipeline import run_stage
    from aecore.score import score_batch
    from aecore.scorer import Reference

    overrides = {**SETTINGS, **({"model.kind": kind} if kind else {})}
    params, layout, seconds = train_stages(train, root, overrides)
    columns = [f"x{i}" for i in range(test.shape[1])]
    pd.DataFrame(test, columns=columns).to_parquet(root / "test.parquet")
    run_stage("evaluate", params, layout)  # fits the score and threshold; draws the plots
    reference = Reference.read(layout.reference)
    out = layout.partition("test", "0")
    score_batch(
        str(root / "test.parquet"),
        load_model(layout.model),
        Normalizer.from_json(layout.normalizer),
        reference,
        out,
        {},
        batch_rows=params.score.batch_rows,
        row_group_size=params.export.row_group_size,
    )
    scored = pd.read_parquet(out)
    return scored.sort_values("row_id")["anomaly_score"].to_numpy(), seconds


def trained(
    train: np.ndarray, test: np.ndarray
) -> tuple[Params, nn.Module, np.ndarray, np.ndarray]:
    """Train the defaults on ``train`` through the pipeline's stages, as ``aepipe run`` does.

    Returns the parameters, the model, the training rows that fit the score (the evaluate
    stage's sample, as model inputs) and the model inputs of ``test``: for the probes.
    """
    from aecore.models import load_model
    from aecore.normalize import Normalizer, load_samples

    with tempfile.TemporaryDirectory() as folder:
        params, layout, _ = train_stages(train, Path(folder))
        model = load_model(layout.model)
        normalizer = Normalizer.from_json(layout.normalizer)
        x_fit = load_samples(layout.processed, {"train": params.evaluate.sample_rows})["train"].x
    columns = [f"x{i}" for i in range(test.shape[1])]
    return params, model, x_fit, normalizer.transform(pd.DataFrame(test, columns=columns))


def pyod_detector(name: str, seed: int) -> object:
    """A PyOD detector at its defaults (quiet, seeded)."""
    if name == "pyod_ae":
        from pyod.models.auto_encoder import AutoEncoder

        return AutoEncoder(verbose=0, random_state=seed)
    if name == "pyod_vae":
        from pyod.models.vae import VAE

        return VAE(verbose=0, random_state=seed)
    if name == "pca":
        from pyod.models.pca import PCA

        return PCA()
    from pyod.models.iforest import IForest

    return IForest(random_state=seed)


def fit_peer(name: str, seed: int, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit a peer on ``train``; return its scores of ``test`` and the fit seconds."""
    detector = pyod_detector(name, seed)
    start = time.perf_counter()
    detector.fit(train)
    seconds = time.perf_counter() - start
    return detector.decision_function(test), seconds


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """AUROC; a non-finite score (PyOD's PCA on near-constant columns) ranks as the top."""
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=np.inf)
    finite = scores[np.isfinite(scores)]
    top = finite.max() + 1 if len(finite) else 1.0
    return float(roc_auc_score(y, np.where(np.isfinite(scores), scores, top)))


def run(
    folder: Path,
    seeds: int,
    methods: list[str],
    names: tuple[str, ...] | None = None,
    only_half: str | None = None,
    first_seed: int = 0,
) -> pd.DataFrame:
    """Every method on every set (or ``names``, or one half), seed by seed: one row each."""
    rows, kinds = [], other_kinds()
    for dataset, seed, train, test, y_test in splits(folder, seeds, names, only_half, first_seed):
        for method in methods:
            with tempfile.TemporaryDirectory() as folder_name:
                if method == OURS or method in kinds:
                    kind = None if method == OURS else method
                    scores, seconds = fit_aepipe(train, test, Path(folder_name), kind)
                else:
                    scores, seconds = fit_peer(method, seed, train, test)
            rows.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "method": method,
                    "auroc": auroc(y_test, scores),
                    "fit_s": seconds,
                    "finite": bool(np.isfinite(scores).all()),
                }
            )
            print(
                f"{dataset:16} seed {seed} {method:10} AUROC {rows[-1]['auroc']:.4f} "
                f"fit {seconds:7.2f} s",
                flush=True,
            )
    return pd.DataFrame(rows)


@functools.cache
def defaults() -> Params:
    """params.yaml, read once: the defaults every probe trains and scores with."""
    from aecore.config import load_params

    return load_params(REPO / "params.yaml")


def print_by_half(rows: list[dict], title: str = "mean by half:") -> None:
    """Average per-run rows (``half``, ``dataset``, figures) by set; print them and each half."""
    table = pd.DataFrame(rows).drop(columns="seed", errors="ignore")
    table = table.groupby(["half", "dataset"]).mean()
    with pd.option_context("display.width", 200):
        print(table.round(3).to_string())
        print(f"\n{title}")
        print(table.groupby(level="half").mean().round(3).to_string())


def splits(
    folder: Path,
    seeds: int,
    names: tuple[str, ...] | None = None,
    only_half: str | None = None,
    first_seed: int = 0,
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]]:
    """ADBench's protocol: per set and seed, a 70/30 stratified split of X, and y's test part.

    Yields ``(dataset, seed, train, test, y_test)`` for every set in ADBench's order (or
    ``names``, or one half), seeds ``first_seed`` on (fresh splits, to confirm a choice).
    """
    paths = sorted(folder.glob("*.npz"), key=lambda p: int(p.stem.split("_")[0]))
    for path in paths:
        if (names and path.stem not in names) or (only_half and half(path.stem) != only_half):
            continue
        data = np.load(path)
        x, y = data["X"].astype(np.float64), data["y"].astype(int)
        for seed in range(first_seed, first_seed + seeds):
            train, test, _, y_test = train_test_split(
                x, y, test_size=0.3, stratify=y, random_state=seed
            )
            yield path.stem, seed, train, test, y_test


def probe_parser(doc: str, cache: str) -> argparse.ArgumentParser:
    """The arguments of a probe that caches its scores: sets, seeds, the cache, --report."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", help="a folder of *.npz with X and y")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="3: fresh splits")
    parser.add_argument("--cache", type=Path, default=Path(cache))
    parser.add_argument("--report", action="store_true", help="report the cache, no new run")
    return parser


def run_probe(
    doc: str,
    cache: str,
    collect: Callable[[Path, int, int, Path], None],
    report: Callable[[Path], int],
) -> int:
    """A caching probe's command line: ``collect`` the sets into the cache, then ``report``.

    ``--report``: only the report, of a cache from an earlier run.
    """
    parser = probe_parser(doc, cache)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not args.report:
        if args.folder is None:
            parser.error("give the folder of *.npz files, or --report with --cache")
        collect(args.folder, args.seeds, args.first_seed, args.cache)
    return report(args.cache)


def summarize(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per-dataset mean AUROC and fit seconds, the best peer, each half's means, the misses.

    The best peer is the best measured one per dataset (IsolationForest, PCA, PyOD's
    AutoEncoder and VAE, whichever ran); ADBench's published figures stand beside it.
    """
    table = results.pivot_table(index="dataset", columns="method", values="auroc")
    table = table.loc[sorted(table.index, key=lambda name: int(name.split("_")[0]))]
    seconds = results.pivot_table(index="dataset", columns="method", values="fit_s")
    published = pd.DataFrame(PUBLISHED).T.reindex(table.index)
    peers = [c for c in PEERS if c in table]
    if not peers:  # aepipe alone (--set trials): compare with a merged run of the peers
        return table, []
    table = table.join(published)
    table["best_peer"] = table[peers].max(axis=1)
    table["best_peer_is"] = table[peers].idxmax(axis=1)
    table["half"] = [half(name) for name in table.index]
    missed = []
    for name, rows in table.groupby("half"):
        ours, best = rows[OURS].mean(), rows["best_peer"].mean()
        if ours < best:
            missed.append(f"{name} half: mean AUROC {ours:.3f} < the best peers' {best:.3f}")
    for dataset, row in table.iterrows():
        if row[OURS] < row["best_peer"] - 0.05:
            missed.append(f"{dataset}: {row[OURS]:.3f} < best peer {row['best_peer']:.3f} - 0.05")
        if "pyod_ae" in seconds and seconds.loc[dataset, OURS] > seconds.loc[dataset, "pyod_ae"]:
            missed.append(f"{dataset}: fit {seconds.loc[dataset, OURS]:.1f} s > PyOD AE's")
    numeric = table.drop(columns=["best_peer_is", "half"])
    means = {f"mean {name}": rows.mean() for name, rows in numeric.groupby(table["half"])}
    means["mean"] = numeric.mean()
    fit = seconds.add_suffix("_fit_s")
    summary = table.join(fit)
    for label, values in means.items():
        summary.loc[label] = values.reindex(summary.columns)
        summary.loc[label, fit.columns] = fit.loc[
            [d for d in fit.index if label == "mean" or half(d) == label.split()[-1]]
        ].mean()
    return summary, missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of *.npz files with X and y")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="3: fresh splits, to confirm a choice"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"six sets only ({', '.join(QUICK)}), for development"
    )
    parser.add_argument("--half", choices=("even", "odd"), help="only the sets of this half")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="try a parameter in place of params.yaml's (choose on one half only)",
    )
    parser.add_argument("--csv", type=Path, default=Path("anomaly_benchmark.csv"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=None,
        help="summarize these per-run CSVs (from runs with other --methods) instead of running",
    )
    parser.add_argument(
        "--methods",
        default=",".join([OURS, *other_kinds(), *PEERS]),
        help="comma-separated: aepipe (the defaults), other kinds of aepipe (dense, "
        "denoising, sparse, vae), pyod_ae, pyod_vae, pca, iforest",
    )
    args = parser.parse_args()
    methods = args.methods.split(",")
    import typer

    from flows.cli import parse_sets

    try:
        SETTINGS.update(parse_sets(args.set))
    except typer.Exit as said:  # parse_sets printed the one-line error
        return said.exit_code
    warnings.filterwarnings("ignore")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.merge:
        results = pd.concat([pd.read_csv(path) for path in args.merge], ignore_index=True)
        results.to_csv(args.csv, index=False)
        return report(results, args.csv)
    names = QUICK if args.quick else None
    results = run(args.folder, args.seeds, methods, names, args.half, args.first_seed)
    results.to_csv(args.csv, index=False)
    if OURS not in methods:
        return 0
    return report(results, args.csv)


def report(results: pd.DataFrame, csv: Path) -> int:
    """Print the summary table and the targets; write it beside ``csv``; 1 when one is missed."""
    table, missed = summarize(results)
    table.round(4).to_csv(csv.with_suffix(".summary.csv"))
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.round(3).to_string())
    print(f"\nper-run results: {csv}; table: {csv.with_suffix('.summary.csv')}")
    if not any(peer in results["method"].unique() for peer in PEERS):
        print("no peer ran: the targets were not checked (merge with a run of the peers)")
        return 0
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
