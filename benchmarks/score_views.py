"""Choose an anomaly score on one half of the sets, confirm it on the other: a probe.

For every ADBench set and seed (the protocol of ``anomaly.py``: 70/30 stratified split,
fit on the unlabeled training part, AUROC on the test part), the inputs are z-scored on
the training part and three denoising autoencoders of aepipe's default settings (not
nested: one latent width each, as before ``model.nested``) are trained in memory with
``aecore.train.train``, which differ only in their bottleneck:
``d/8`` (the default), ``d/4`` and ``d`` (no bottleneck: a denoiser). Each gives three
views of a row: ``col`` (the column errors over their training scale) and ``lat`` (the
latent code's Mahalanobis distance), as ``AnomalyScorer`` measures them, and ``knn``
(the distance to the 5th nearest training row in latent space, each dimension over its
training spread). Two more views need no network: ``tail`` (ECOD's marginal tail
probabilities, from PyOD) and ``knn`` (the distance to the 5th nearest training row).
Every combination of two to four views, and all eleven (``all``), is fused four ways:
``mean`` (each view over its training mean, summed), and three over each view's surprise
``-log(1 - q)``, q the quantile among the training rows: ``fisher`` (summed), ``max``
(the most extreme view) and ``lse`` (a soft maximum).

The combination with the best mean AUROC on the choosing half (``--choose``) is then
read on the other half, against the default (``d8.col+d8.lat``, mean: the default
score's two terms with equal weight) and the best peers of ``anomaly.py``'s table.
A change is accepted only when it beats the default on both halves.

Measured on 2026-11-25 (seeds 0-2; the default: even 0.774, odd 0.728; the best
peers: even 0.803, odd 0.743):
- chosen on the even half, ``d8.lat+d1.col+knn`` (max) reaches 0.816 there and 0.719 on
  the odd half; chosen on the odd half, ``d4.col+d4.knn+d1.knn+tail`` (max) reaches 0.754
  there and 0.752 on the even half. Each beats the best peers on the half that chose it
  and loses to the default on the other.
- all eleven views, unselected: ``max`` is the best fusion on each half alone (even 0.797,
  odd 0.743; ``lse`` 0.789 / 0.740, ``fisher`` 0.778 / 0.737, ``mean`` 0.783 / 0.735), so
  it holds on both halves; it still misses the even half's best peers, is more than 0.05
  below the best peer on fault, optdigits and SpamBase, and costs three networks, kept
  training rows (for the distances) and ECOD's tails. ``--costs`` measures those, against
  PyOD's AutoEncoder fitted in the same run: the three networks fit slower than it on 15
  of the 19 sets (1.1-1.2x on campaign, 3.9-4.1x on musk; two runs), against 0.27-0.67x
  for the default's one; and the distance to the 5th of 8192 kept rows costs 30-56x the
  network's pass when a batch is scored.
- a bottleneck that adapts to the table's width (``d4`` or ``d1`` up to some width, the
  default beyond; the widths read from the folder): chosen on the even half, ``d1`` up to
  32 columns reaches 0.816 there and 0.707 on the odd half; the odd half cannot tell
  ``d4`` up to 62, 64 or 166 columns apart (0.732), which read 0.780, 0.770 and 0.770 on
  the even half: only the narrowest, by the tie alone, beats the default there.

Prints the tables and writes the per-set AUROC of every combination (``--csv``; this
run: results/score_views.csv.gz).

    .venv/bin/python benchmarks/score_views.py ../shared/datasets/adbench --choose even
    .venv/bin/python benchmarks/score_views.py ../shared/datasets/adbench --choose odd \\
        --results benchmarks/results/score_views.csv.gz
    .venv/bin/python benchmarks/score_views.py ../shared/datasets/adbench --costs
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomaly import SUMMARY, defaults, fit_peer, half, splits  # this folder: the protocol
from score_terms import kth_distance
from sklearn.metrics import roc_auc_score

BOTTLENECKS = {"d8": None, "d4": 4, "d1": 1}  # name: inputs per latent (None: the default)
DEFAULT = "d8.col+d8.lat|mean"
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # the fitting, validation and test rows


def prepare(train: np.ndarray, test: np.ndarray, seed: int) -> Rows:
    """The fitting, validation and test rows, z-scored on the training part, as float32.

    ``normalize.val_fraction`` of the training rows are held out for validation.
    """
    val_fraction = defaults().normalize.val_fraction
    mean, std = train.mean(axis=0), train.std(axis=0)
    x_train, x_test = ((part - mean) / np.where(std > 0, std, 1) for part in (train, test))
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x_train))
    held = int(val_fraction * len(x_train))
    return x_train[order[held:]], x_train[order[:held]], x_test


def views(train: np.ndarray, test: np.ndarray, seed: int) -> dict[str, tuple]:
    """Every view of the training and test rows: ``{name: (on_train, on_test)}``."""
    from aecore.models import encode_and_reconstruct

    x_fit, x_val, x_test = prepare(train, test, seed)
    found: dict[str, tuple] = {}
    for name, per_latent in BOTTLENECKS.items():
        model, _ = trained(x_fit, x_val, per_latent, seed)
        on_fit, on_test = (encode_and_reconstruct(model, x) for x in (x_fit, x_test))
        found |= scorer_views(name, on_fit, on_test)
        found[f"{name}.knn"] = neighbours(on_fit[0], on_test[0], whiten=True)
    found["tail"] = tails(x_fit, x_test)
    found["knn"] = neighbours(x_fit, x_test, whiten=False)
    return found


def tails(x_fit: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ECOD's marginal tails of the fitting and the test rows, shifted to be positive."""
    from pyod.models.ecod import ECOD

    ecod = ECOD().fit(x_fit)
    low = ecod.decision_scores_.min() - 1e-3  # positive, for the mean fusion
    return ecod.decision_scores_ - low, ecod.decision_function(x_test) - low


def scorer_views(name: str, on_fit: tuple, on_test: tuple) -> dict[str, tuple]:
    """``<name>.col`` and ``<name>.lat``: the score's two terms alone, as ``AnomalyScorer``
    measures them from latents and column errors (of the fitting rows, then the test rows).
    """
    from aecore.scorer import AnomalyScorer

    found = {}
    for view, weight in (("col", 0.0), ("lat", 1.0)):
        scorer = AnomalyScorer(weight, trim=defaults().evaluate.score_trim).fit(*on_fit)
        found[f"{name}.{view}"] = (scorer.score(*on_fit), scorer.score(*on_test))
    return found


def trained(
    x_fit: np.ndarray, x_val: np.ndarray, per_latent: int | None, seed: int
) -> tuple[torch.nn.Module, float]:
    """A network of the defaults with ``d / per_latent`` latents, trained; and its seconds."""
    from aecore.models import build_model
    from aecore.train import train as train_loop

    params = defaults()
    d = x_fit.shape[1]
    latent_dim = None if per_latent is None else max(2, round(d / per_latent))
    torch.manual_seed(seed)
    flat = dataclasses.replace(params.model, latent_dim=latent_dim, nested=False)  # one width
    model = build_model(flat, d)
    start = time.perf_counter()
    train_loop(model, torch.from_numpy(x_fit), torch.from_numpy(x_val), params.train)
    return model, time.perf_counter() - start


def costs(folder: Path) -> int:
    """What every view would cost aepipe: the three networks' fit time, the neighbours'."""
    from aecore.models import build_model, encode_and_reconstruct

    params = defaults()
    rows = []
    for dataset, seed, train, test, _ in splits(folder, 1):
        x_fit, x_val, _ = prepare(train, test, seed)
        seconds = {name: trained(x_fit, x_val, per, seed)[1] for name, per in BOTTLENECKS.items()}
        _, baseline = fit_peer("pyod_ae", seed, train, test)  # the baseline, in this run
        rows.append(
            {
                "dataset": dataset,
                "d8/pyod_ae": seconds["d8"] / baseline,
                "three/pyod_ae": sum(seconds.values()) / baseline,
            }
        )
    table = pd.DataFrame(rows).set_index("dataset")
    print(table.round(3).to_string())
    print(f"three networks slower than PyOD's AE on {(table['three/pyod_ae'] > 1).sum()} sets")
    batch, kept = params.score.batch_rows, 8192  # rows scored at once; training rows kept
    for d in (21, 64):
        x = np.random.default_rng(0).normal(size=(batch, d)).astype(np.float32)
        start = time.perf_counter()
        encode_and_reconstruct(build_model(dataclasses.replace(params.model, nested=False), d), x)
        network = time.perf_counter() - start
        start = time.perf_counter()
        kth_distance(x[:kept], x, leave_self_out=False)
        distance = time.perf_counter() - start
        print(
            f"{d} columns, {batch} rows: the network {network:.3f} s, the 5th neighbour "
            f"among {kept} rows {distance:.3f} s ({distance / network:.0f}x)"
        )
    return 0


def neighbours(fit: np.ndarray, test: np.ndarray, whiten: bool) -> tuple:
    """The distance to the 5th nearest training row, of the training and the test rows."""
    fit, test = fit.astype(np.float64), test.astype(np.float64)
    if whiten:  # latents: every dimension on the same footing
        std = fit.std(axis=0)
        fit, test = (part / np.where(std > 0, std, 1) for part in (fit, test))
    return (
        kth_distance(fit, fit, leave_self_out=True),
        kth_distance(fit, test, leave_self_out=False),
    )


def quantile(on_train: np.ndarray, on_test: np.ndarray) -> np.ndarray:
    """Each test value's quantile among the training values."""
    ordered = np.sort(on_train)
    return np.searchsorted(ordered, on_test, side="right") / (len(ordered) + 1)


def surprise(on_train: np.ndarray, on_test: np.ndarray) -> np.ndarray:
    """``-log(1 - q)``, q each test value's quantile among the training values."""
    return -np.log(np.clip(1 - quantile(on_train, on_test), 1e-6, 1))


def fuse(fusion: str, views: list[tuple]) -> np.ndarray:
    """The test rows' score of several views ``(on_train, on_test)``, fused one way."""
    if fusion == "mean":  # each view over its training mean, summed
        return sum(b / np.mean(a) for a, b in views)
    surprises = np.stack([surprise(a, b) for a, b in views])
    if fusion == "fisher":  # summed: extreme in several views together
        return surprises.sum(axis=0)
    if fusion == "max":  # the most extreme view
        return surprises.max(axis=0)
    return np.logaddexp.reduce(surprises, axis=0)  # lse: a soft maximum


FUSIONS = ("mean", "fisher", "max", "lse")


def combinations(names: list[str]) -> list[tuple[str, ...]]:
    """Every set of two to four views."""
    return [c for r in (2, 3, 4) for c in itertools.combinations(names, r)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of *.npz files with X and y")
    parser.add_argument("--choose", choices=("even", "odd"), default="even")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--csv", type=Path, default=Path("score_views.csv.gz"))
    parser.add_argument("--results", type=Path, help="report this run's --csv, not a new run")
    parser.add_argument("--costs", action="store_true", help="what every view would cost")
    args = parser.parse_args()
    if args.costs:
        return costs(args.folder)
    widths = {p.stem: np.load(p)["X"].shape[1] for p in args.folder.glob("*.npz")}
    if args.results:
        return report(pd.read_csv(args.results), args.choose, widths)
    warnings.filterwarnings("ignore")
    rows = []
    for dataset, seed, train, test, y_test in splits(args.folder, args.seeds):
        start = time.perf_counter()
        found = views(train, test, seed)
        row = {"dataset": dataset, "half": half(dataset), "seed": seed}
        for combo in [*combinations(list(found)), ("all",)]:
            picked = list(found.values()) if combo == ("all",) else [found[c] for c in combo]
            for fusion in FUSIONS:
                score = fuse(fusion, picked)
                row[f"{'+'.join(combo)}|{fusion}"] = roc_auc_score(y_test, score)
        rows.append(row)
        print(f"{dataset:20} seed {seed} {time.perf_counter() - start:6.1f} s", flush=True)
    results = pd.DataFrame(rows)
    results.round(4).to_csv(args.csv, index=False)
    return report(results, args.choose, widths)


def width_rules(table: pd.DataFrame, widths: dict[str, int]) -> pd.DataFrame:
    """Mean AUROC by half of the default score when narrow tables get a wider bottleneck.

    Rule ``d1 <= 12``: a table of at most 12 columns gets the ``d1`` model's two terms
    (mean fusion) instead of the default's; wider tables keep the default.
    """
    columns = table.index.get_level_values("dataset").map(widths)
    rules = {}
    for bottleneck in ("d4", "d1"):
        for most in sorted(set(columns)):
            score = np.where(
                columns <= most, table[f"{bottleneck}.col+{bottleneck}.lat|mean"], table[DEFAULT]
            )
            rules[f"{bottleneck} <= {most}"] = pd.Series(score, index=table.index)
    return pd.DataFrame(rules).groupby(level="half").mean().T


def report(results: pd.DataFrame, choose: str, widths: dict[str, int]) -> int:
    """Print the choice made on one half and what it gives on the other."""
    table = results.drop(columns="seed").groupby(["half", "dataset"]).mean()
    means = table.groupby(level="half").mean().T
    other = "odd" if choose == "even" else "even"
    chosen = means[choose].idxmax()
    if SUMMARY.exists():  # the best measured peers (anomaly.py)
        peers = pd.read_csv(SUMMARY, index_col=0)["best_peer"]
        best = {h: peers[table.loc[h].index].mean() for h in (choose, other)}
        print(f"best peers' mean: {choose} {best[choose]:.3f}, {other} {best[other]:.3f}")
    print(f"top five on the {choose} half:")
    print(means.sort_values(choose, ascending=False).head(5).round(3).to_string())
    print(f"\nchosen on {choose}: {chosen}")
    for label, name in (("default", DEFAULT), ("chosen", chosen)):
        ours, theirs = means.loc[name, choose], means.loc[name, other]
        print(f"  {label:8} {choose} {ours:.3f}  {other} {theirs:.3f}")
    holds = all(means.loc[chosen, h] > means.loc[DEFAULT, h] for h in (choose, other))
    print(f"holds on both halves: {'yes' if holds else 'no'}")
    print("\nevery view, no selection:")
    print(means.loc[[f"all|{fusion}" for fusion in FUSIONS]].round(3).to_string())
    if widths:  # a bottleneck that adapts to the table's width, chosen the same way
        rules = width_rules(table, widths)
        tied = rules[rules[choose] >= rules[choose].max() - 1e-9]  # the half cannot tell them
        print(f"\nnarrow tables, a wider bottleneck: chosen on {choose} (ties: every one):")
        print(tied.round(3).to_string())
    with pd.option_context("display.width", 200):
        print(table[[DEFAULT, chosen]].round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
