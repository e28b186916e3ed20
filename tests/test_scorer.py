"""The fused anomaly score's parts: surprises, marginal tails, nested latents, the fusion."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from aecore.evaluate import make_scorer
from aecore.models import (
    DenoisingAutoencoder,
    Outputs,
    build_model,
    load_model,
    model_outputs,
    nested_widths,
    save_model,
)
from aecore.scorer import (
    CENTRES,
    ROWS_PER_CENTRE,
    AnomalyScorer,
    ClusterDistance,
    FusedScorer,
    MarginalTails,
    Reference,
    Surprise,
    agreement,
    blend_rows,
    share_below,
    training_constants,
)
from aecore.train import train


def test_surprise_is_minus_log_of_the_upper_share_and_keeps_rising_beyond_the_largest():
    values = np.random.default_rng(0).exponential(size=10_000)
    surprise = Surprise().fit(values)
    for q in (0.5, 0.9, 0.99, 0.999):
        assert surprise(np.quantile(values, [q]))[0] == pytest.approx(-np.log(1 - q), rel=0.02)
    top = values.max()
    beyond = surprise(np.array([top, top + 1, top + 10]))
    assert beyond[0] == pytest.approx(np.log(len(values) + 1), rel=0.05)
    assert beyond[0] < beyond[1] < beyond[2] and np.isfinite(beyond).all()
    ordered = surprise(np.sort(values))
    assert (np.diff(ordered) >= 0).all()  # monotone
    assert np.isnan(surprise(np.array([np.nan]))[0])
    again = Surprise.from_dict(surprise.to_dict())
    np.testing.assert_array_equal(again(values[:100]), surprise(values[:100]))


def test_surprise_and_tails_keep_their_order_on_a_handful_of_rows():
    values = np.array([0.3, 1.0, 2.0, 5.0, 9.0])
    surprise = Surprise().fit(values)
    assert (np.diff(surprise.values_) >= 0).all()
    assert (np.diff(surprise(np.linspace(0, 12, 50))) >= 0).all()
    tails = MarginalTails().fit(values[:, None])
    assert (np.diff(tails.probabilities_) > 0).all()
    low, median, high = tails.score(np.array([[-5.0], [2.0], [20.0]]))
    assert median < 1.5 < min(low, high)  # the median is typical, both far sides are not


def test_surprise_of_a_constant_view_is_finite_and_still_orders_larger_values():
    surprise = Surprise().fit(np.full(100, 2.0))
    scores = surprise(np.array([1.0, 2.0, 3.0, 4.0]))
    assert np.isfinite(scores).all() and scores[1] < scores[2] < scores[3]


def ecod(train_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """ECOD's outlyingness from its definition: exact empirical tails of every column."""
    n = len(train_rows)
    left = np.stack(
        [(train_rows[None, :, j] <= rows[:, j, None]).sum(1) for j in range(rows.shape[1])], 1
    )
    right = np.stack(
        [(train_rows[None, :, j] >= rows[:, j, None]).sum(1) for j in range(rows.shape[1])], 1
    )
    low, high = -np.log(np.maximum(left, 1) / n), -np.log(np.maximum(right, 1) / n)
    centred = train_rows - train_rows.mean(0)
    skew = (centred**3).mean(0) / (centred**2).mean(0) ** 1.5
    auto = np.where(skew < 0, low, high).sum(1)
    return np.maximum(np.maximum(low.sum(1), high.sum(1)), auto)


def test_marginal_tails_rank_rows_as_ecod_does():
    generator = np.random.default_rng(1)
    train_rows = np.column_stack(
        [
            generator.normal(size=3000),
            generator.exponential(size=3000),
            -generator.gamma(2, size=3000),
        ]
    )
    rows = np.column_stack(
        [generator.normal(0, 2, 500), generator.exponential(2, 500), -generator.gamma(2, 2, 500)]
    )
    tails = MarginalTails().fit(train_rows)
    ours = tails.score(rows)
    assert spearmanr(ours, ecod(train_rows, rows)).statistic > 0.98
    far = rows[:1] + np.array([[0.0, 50.0, 0.0]])  # far out in one column's right tail
    farther = rows[:1] + np.array([[0.0, 100.0, 0.0]])
    assert tails.score(far)[0] > tails.score(rows[:1])[0]
    # beyond every training value, the tail grows by the distance past the largest
    assert tails.score(farther)[0] - tails.score(far)[0] == pytest.approx(50.0, rel=1e-5)
    low, lower = (rows[:1] - np.array([[shift, 0.0, 0.0]]) for shift in (100.0, 130.0))
    assert tails.score(lower)[0] - tails.score(low)[0] == pytest.approx(30.0, rel=1e-5)
    assert np.sign(tails.skew_).tolist() == [pytest.approx(0, abs=1), 1.0, -1.0]
    broken = rows[:2].copy()
    broken[0, 1] = np.nan
    assert np.isnan(tails.score(broken)[0]) and np.isfinite(tails.score(broken)[1])
    again = MarginalTails.from_dict(tails.to_dict())
    np.testing.assert_array_equal(again.score(rows), ours)


def test_nested_widths_add_a_quarter_and_every_input_up_to_the_last_hidden_width():
    assert nested_widths(64, 8, (128, 64)) == (16, 64)
    assert nested_widths(12, 2, (64, 32)) == (3, 12)
    assert nested_widths(166, 21, (64, 32)) == (32,)  # wide tables: capped
    assert nested_widths(4, 2, (64, 32)) == (4,)  # a quarter is not wider than k
    assert nested_widths(16, 16, (64, 32)) == ()


def test_a_nested_model_keeps_its_embedding_and_rebuilds_from_each_prefix(params, tmp_path):
    model = build_model(params.model, 24)
    assert model.prefixes == (3, 6, 24) and model.k == 3
    x = torch.randn(50, 24)
    model.eval()
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (50, 24)
        moved = z.clone()
        moved[:, 3:] += 5.0  # the latents beyond k do not reach the embedding's rebuild
        torch.testing.assert_close(model.decode(moved), model(x))
        assert not torch.allclose(model.decode(moved, 24), model.decode(z, 24))
    outputs = model_outputs(model, x.numpy())
    assert outputs.embedding.shape == (50, 3) and len(outputs.errors) == 3
    flat = build_model(dataclasses.replace(params.model, nested=False), 24)
    assert flat.prefixes == (3,) and model_outputs(flat, x.numpy()).latents.shape == (50, 3)
    again = load_model(save_model(model, tmp_path / "model.pt"))
    assert again.prefixes == model.prefixes
    again_outputs = model_outputs(again, x.numpy())
    for ours, theirs in zip(outputs.errors, again_outputs.errors, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_a_model_saved_before_nesting_loads_as_one_latent_width(tmp_path):
    model = DenoisingAutoencoder(6, 2, (16, 8), noise_std=0.1, mask_rate=0.1)
    state = {k: v for k, v in model.state_dict().items()}
    spec = {"kind": "denoising", "d": 6, "k": 2, "hidden": [16, 8], "blocks": [["num", 1]] * 6}
    torch.save(
        {"spec": spec | {"noise_std": 0.1, "mask_rate": 0.1}, "state_dict": state},
        tmp_path / "m.pt",
    )
    assert load_model(tmp_path / "m.pt").prefixes == (2,)


def test_a_model_saved_before_its_gelu_was_recorded_keeps_the_exact_form(tmp_path):
    torch.manual_seed(0)
    exact = DenoisingAutoencoder(6, 2, (16, 8), gelu="none", noise_std=0.1, mask_rate=0.1)
    spec = {k: v for k, v in exact.spec.items() if k != "gelu"}  # as saved before
    torch.save(
        {"spec": {"kind": "denoising", **spec}, "state_dict": exact.state_dict()},
        tmp_path / "m.pt",
    )
    loaded = load_model(tmp_path / "m.pt")
    x = torch.randn(50, 6) * 3
    assert torch.equal(loaded(x), exact.eval()(x))  # the same outputs, bit for bit
    tanh = DenoisingAutoencoder(6, 2, (16, 8), noise_std=0.1, mask_rate=0.1)
    tanh.load_state_dict(exact.state_dict())
    assert not torch.equal(tanh.eval()(x), loaded(x))  # the two forms differ


def test_training_draws_a_prefix_per_row(params):
    torch.manual_seed(0)
    model = build_model(params.model, 16)
    x = torch.randn(400, 16)
    model.train()
    z = model.encode(x)
    drawn = model.decode(z)
    rebuilt = {width: model.decode(z, width) for width in model.prefixes}
    which = torch.stack([(drawn - rebuilt[w]).abs().amax(dim=1) < 1e-6 for w in model.prefixes])
    assert (which.sum(dim=0) >= 1).all()  # every row rebuilt from one of the prefixes
    shares = which.float().mean(dim=1)
    assert (shares > 0.2).all()  # each prefix drawn about a third of the time


def views_of(x: np.ndarray, odd_latent: np.ndarray) -> Outputs:
    """Outputs of a pretend nested model: latents of width 4, errors from k=2 and 4."""
    errors = np.abs(x[:, :3]) * 0.1 + 0.01
    latents = np.column_stack([odd_latent, x[:, 3], x[:, 4], x[:, 5]])
    return Outputs(latents, (errors, errors * 0.5), np.zeros(len(x)), (2, 4))


def test_fused_score_flags_a_row_odd_in_any_one_view():
    generator = np.random.default_rng(3)
    x = generator.normal(size=(2000, 6))
    scorer = FusedScorer(trim=0.2).fit_rows(views_of(x, x[:, 0]), x)
    rows = generator.normal(size=(4, 6))
    odd_latent = rows[:, 0].copy()
    odd_latent[1] = 40.0  # far out in latent space only (its errors and inputs typical)
    rows[2, 4] = 40.0  # far out in one input: the tails, and the width-4 latent distance
    scores = scorer.score_rows(views_of(rows, odd_latent), rows)
    typical = scorer.score_rows(views_of(x, x[:, 0]), x)
    assert scores[1] > typical.max() and scores[2] > typical.max()
    assert scores[0] < np.quantile(typical, 0.999) and scores[3] < np.quantile(typical, 0.999)
    assert typical.dtype == np.float32
    with pytest.raises(ValueError, match="latent widths"):
        scorer.score_rows(Outputs(x[:, :2], (x[:, :3],), np.zeros(len(x)), (2,)), x)


def test_a_latent_distance_needs_ten_training_rows_per_latent():
    """100 rows, 80 after the trim: widths 4 and 8 keep their latent distance, 30 does not
    (a covariance of 30 latents from 80 rows is mostly noise)."""
    generator = np.random.default_rng(4)
    x = generator.normal(size=(100, 30))
    outputs = Outputs(x, (x**2, x**2, x**2), np.zeros(len(x)), (4, 8, 30))
    scorer = FusedScorer(trim=0.2).fit_rows(outputs, x)
    assert scorer.distances_ == (True, True, False)
    assert len(scorer.views(outputs, x)) == len(scorer.surprises_) == 6  # 3 + 2 + the tails
    far = x[:1].copy()
    far[0, 20] = 50.0  # far out in the latent code beyond width 8, nowhere else
    same_errors = Outputs(far, (x[:1] ** 2,) * 3, np.zeros(1), (4, 8, 30))
    first = Outputs(x[:1], (x[:1] ** 2,) * 3, np.zeros(1), (4, 8, 30))
    score = scorer.score_rows(same_errors, x[:1])
    assert score[0] == pytest.approx(scorer.score_rows(first, x[:1])[0])  # not flagged
    many = np.tile(x, (4, 1))  # 320 rows after the trim: width 30 counts again
    wide = FusedScorer(trim=0.2).fit_rows(
        Outputs(many, (many**2,) * 3, np.zeros(400), (4, 8, 30)), many
    )
    assert wide.distances_ == (True, True, True)
    assert wide.score_rows(same_errors, x[:1])[0] > wide.score_rows(first, x[:1])[0] + 5
    older = wide.to_dict()
    del older["fused"]["distances"]  # a reference written before the rule: all counted
    again = FusedScorer.from_dict(older)
    assert again.distances_ == (True, True, True)
    np.testing.assert_array_equal(again.score_rows(outputs, x), wide.score_rows(outputs, x))


def test_blends_lie_between_two_training_rows_and_repeat_with_the_seed():
    generator = np.random.default_rng(6)
    groups = np.where(generator.random(1000) < 0.5, -5.0, 5.0)
    x = np.column_stack([groups + generator.normal(0, 0.3, 1000), generator.normal(size=1000)])
    blends = blend_rows(x.astype(np.float32), rows=500, seed=1)
    assert blends.shape == (500, 2) and blends.dtype == np.float32
    np.testing.assert_array_equal(blends, blend_rows(x.astype(np.float32), rows=500, seed=1))
    assert (blends >= x.min(axis=0) - 1e-6).all() and (blends <= x.max(axis=0) + 1e-6).all()
    between = np.abs(blends[:, 0]) < 1.5  # where no training row lies
    assert 0.35 < between.mean() < 0.65 and not (np.abs(x[:, 0]) < 1.5).any()
    assert blend_rows(x[:0]).shape == (0, 2)


def test_share_below_is_how_far_above_the_training_values_others_rank():
    values = np.random.default_rng(7).normal(size=1000)
    assert share_below(values, values) == pytest.approx(0.5)
    assert share_below(values, values + 100) == 1.0 and share_below(values, values - 100) == 0.0
    assert share_below(np.ones(4), np.ones(2)) == 0.5  # ties count half
    assert share_below(np.array([0.0, 1.0, np.nan]), np.array([0.5, np.nan])) == 0.5
    assert share_below(np.zeros(0), values) == 0.5  # nothing to rank against


def two_groups(x: np.ndarray, odd_latent: np.ndarray | None = None) -> Outputs:
    """Outputs of a pretend model of rows in two groups along input 0 (at -3 and 3): its
    errors grow with the distance to the nearer group, its latents are the inputs, so
    that a latent distance from the centre finds a row between the groups typical."""
    off = (np.abs(x[:, :1]) - 3) ** 2
    errors = np.column_stack([off, 0.01 * x[:, 1:3] ** 2]) + 0.01
    latents = x[:, :4].copy()
    if odd_latent is not None:
        latents[:, 1] = odd_latent
    return Outputs(latents, (errors, errors * 0.5), np.zeros(len(x)), (2, 4))


def test_the_views_that_find_blends_typical_do_not_count():
    generator = np.random.default_rng(8)
    x = generator.normal(size=(3000, 6))
    x[:, 0] += np.where(generator.random(3000) < 0.5, -3.0, 3.0)
    blends = blend_rows(x)
    chosen = FusedScorer(trim=0.2, margin=0.15).fit_rows(
        two_groups(x), x, (two_groups(blends), blends)
    )
    every = FusedScorer(trim=0.2).fit_rows(two_groups(x), x)
    # the views: column error and latent distance at widths 2 and 4, then the tails
    errors, distances = chosen.sensitivity_[0::2], chosen.sensitivity_[1::2]
    assert min(errors) > 0.6 and max(distances) < 0.4  # half the blends join two groups
    assert chosen.kept_ == (True, False, True, False, True)
    assert every.kept_ == () and every.sensitivity_ == ()
    rows = generator.normal(size=(3, 6))
    rows[:, 0] = [3.0, 3.0, 0.0]  # in a group; in a group; between the groups
    odd_latent = rows[:, 1].copy()
    odd_latent[1] = 20.0  # far out in the latent code alone (a dropped view)
    typical = chosen.score_rows(two_groups(x), x)
    scores = chosen.score_rows(two_groups(rows, odd_latent), rows)
    assert scores[0] < np.quantile(typical, 0.99) and scores[1] < np.quantile(typical, 0.99)
    assert scores[2] > np.quantile(typical, 0.99)  # between the groups: the column error
    flagged = every.score_rows(two_groups(rows, odd_latent), rows)[1]
    assert flagged > every.score_rows(two_groups(x), x).max()  # where every view counts
    again = FusedScorer.from_dict(json.loads(json.dumps(chosen.to_dict())))
    assert (again.margin, again.kept_, again.sensitivity_) == (
        0.15,
        chosen.kept_,
        pytest.approx(chosen.sensitivity_),
    )
    np.testing.assert_array_equal(again.score_rows(two_groups(x), x), typical)
    one_group = generator.normal(size=(3000, 6))  # a blend averages two rows' noise away
    blends = blend_rows(one_group)
    flat = FusedScorer(trim=0.2, margin=0.05).fit_rows(
        two_groups(one_group), one_group, (two_groups(blends), blends)
    )
    assert max(flat.sensitivity_[0::2]) < 0.5  # so the column errors rank blends low,
    assert all(flat.kept_[0::2])  # and count all the same, as the tails do
    older = every.to_dict()
    for key in ("margin", "sensitivity", "kept"):
        del older["fused"][key]  # a reference written before views were chosen: all count
    np.testing.assert_array_equal(
        FusedScorer.from_dict(older).score_rows(two_groups(x), x),
        every.score_rows(two_groups(x), x),
    )


def test_cluster_distance_finds_rows_between_the_groups_on_inputs_of_any_scale():
    generator = np.random.default_rng(11)
    groups = np.array([[-6.0, -6.0, 0.0], [6.0, 6.0, 0.0]])
    x = groups[generator.integers(2, size=3000)] + generator.normal(0, 0.5, (3000, 3))
    x[:, 2] *= 100  # noise on a large scale: divided by its spread, it counts as the rest
    distance = ClusterDistance().fit(x.astype(np.float32))
    assert distance.centres_.shape == (CENTRES, 3)
    typical = distance.score(x)
    rows = np.array(
        [[6.0, 6.0, 0.0], [0.0, 0.0, 0.0], [6.0, 6.0, 100.0], [np.nan, 0, 0], [np.inf, 0, 0]]
    )
    scores = distance.score(rows)  # in a group; between two; in a group; missing; infinite
    assert scores[0] < np.median(typical) * 2 and scores[2] < np.quantile(typical, 0.99)
    assert scores[1] > typical.max() and np.isnan(scores[3]) and scores[4] == np.inf
    again = ClusterDistance.from_dict(json.loads(json.dumps(distance.to_dict())))
    np.testing.assert_allclose(again.score(rows), scores)
    assert ClusterDistance().fit(x[:160]).centres_.shape == (160 // ROWS_PER_CENTRE, 3)
    wide = np.random.default_rng(15).normal(size=(9000, 1000)).astype(np.float32)
    distance = ClusterDistance().fit(wide[:500])  # scored in slices of fewer rows, as wide
    scaled = wide / distance.scale_
    direct = np.min([((scaled - centre) ** 2).sum(axis=1) for centre in distance.centres_], 0)
    np.testing.assert_allclose(distance.score(wide), np.sqrt(direct), rtol=1e-3, atol=1e-2)


def test_agreement_is_the_rank_correlation_with_the_anchor():
    anchor = np.random.default_rng(12).normal(size=5000)
    views = [
        anchor**3,
        -anchor,
        np.ones(5000),
        anchor + np.random.default_rng(13).normal(size=5000),
    ]
    found = agreement(views, anchor, rows=4000)
    assert found[:3] == [pytest.approx(1.0), pytest.approx(-1.0), 0.0]
    assert 0.6 < found[3] < 0.8
    gappy = anchor**3
    gappy[::2] = np.nan  # read where both are finite: a NaN drops no view
    assert agreement([gappy], anchor)[0] == pytest.approx(1.0)
    no_evidence = [np.isnan(a) for a in agreement([anchor], anchor[:10])]  # too few rows
    assert no_evidence == [True] and np.isnan(agreement([anchor], np.ones(5000))[0])


def local_model(x: np.ndarray, informed: bool, seed: int = 0) -> Outputs:
    """Outputs of a pretend model of rows in two groups along input 0: its column errors
    grow with input 0's distance to the nearer group (``informed``) or are noise."""
    generator = np.random.default_rng(seed)
    off = (np.abs(x[:, :1]) - 3) ** 2 if informed else generator.exponential(size=(len(x), 1))
    errors = np.column_stack([off, 0.01 * generator.exponential(size=(len(x), 2))]) + 0.01
    return Outputs(x[:, :4].copy(), (errors, errors * 0.5), np.zeros(len(x)), (2, 4))


def test_the_cluster_distance_counts_and_drops_the_views_that_rank_rows_unlike_it():
    generator = np.random.default_rng(14)
    x = generator.normal(size=(3000, 6))
    x += np.where(generator.random(3000) < 0.5, -3.0, 3.0)[:, None]  # two groups, each input
    local = FusedScorer(trim=0.2, cluster_weight=0.9, min_agreement=0.2)
    local.fit_rows(local_model(x, informed=False), x)
    plain = FusedScorer(trim=0.2).fit_rows(local_model(x, informed=False), x)
    # the views: column error and latent distance at widths 2 and 4, then the tails
    assert local.kept_[0::2][:2] == (False, False) and local.kept_[1::2] == (True, True)
    assert max(local.agreement_[0::2][:2]) < 0.1 and plain.clusters_ is None
    rows = generator.normal(size=(3, 6)) + np.array([[3.0], [-3.0], [0.0]])
    rows[2] = 0.0  # in a group; in the other; between them
    typical = local.score_rows(local_model(x, informed=False), x)
    scores = local.score_rows(local_model(rows, informed=False, seed=1), rows)
    assert scores[0] < np.quantile(typical, 0.99) and scores[1] < np.quantile(typical, 0.99)
    assert scores[2] > np.quantile(typical, 0.999)  # between the groups: the cluster distance
    unseen = plain.score_rows(local_model(rows, informed=False, seed=1), rows)[2]
    assert unseen < np.quantile(plain.score_rows(local_model(x, informed=False), x), 0.99)
    informed = FusedScorer(trim=0.2, cluster_weight=0.9, min_agreement=0.2)
    informed.fit_rows(local_model(x, informed=True), x)
    assert informed.kept_[0] and informed.agreement_[0] > 0.2  # an error that agrees counts
    blends = blend_rows(x)
    pair = (local_model(blends, informed=False, seed=1), blends)
    rival = FusedScorer(trim=0.2, margin=0.3, cluster_weight=0.9, min_agreement=-1.0)
    rival.fit_rows(local_model(x, informed=False), x, pair)
    alone = FusedScorer(trim=0.2, margin=0.3).fit_rows(local_model(x, informed=False), x, pair)
    # blends between the groups lie far from every centre: the cluster distance ranks them
    # highest, and the latent distances (blends sit at the code's centre) fall out of its margin
    assert rival.cluster_sensitivity_ > max(rival.sensitivity_) + 0.1
    assert alone.kept_[1::2] == (True, True) and rival.kept_[1::2] == (False, False)
    assert all(rival.kept_[0::2])  # agreement -1: every column error and the tails count
    again = FusedScorer.from_dict(json.loads(json.dumps(rival.to_dict())))
    assert again.cluster_sensitivity_ == rival.cluster_sensitivity_
    assert again.kept_ == rival.kept_
    again = FusedScorer.from_dict(json.loads(json.dumps(local.to_dict())))
    assert (again.cluster_weight, again.min_agreement, again.kept_) == (0.9, 0.2, local.kept_)
    np.testing.assert_allclose(again.score_rows(local_model(x, informed=False), x), typical)
    older = plain.to_dict()
    for key in ("cluster_weight", "min_agreement", "agreements", "clusters"):
        del older["fused"][key]  # a reference written before the cluster distance: none
    assert FusedScorer.from_dict(older).clusters_ is None
    np.testing.assert_array_equal(
        FusedScorer.from_dict(older).score_rows(local_model(x, informed=False), x),
        plain.score_rows(local_model(x, informed=False), x),
    )


@pytest.mark.parametrize("rows", [1, 3, 20, 200])
def test_the_cluster_distance_on_tiny_or_constant_tables_drops_no_view_on_no_evidence(rows):
    x = np.ones((rows, 6)) if rows == 200 else np.random.default_rng(rows).normal(size=(rows, 6))
    x[:, 5] = np.nan if rows == 20 else x[:, 5]  # a column never seen: NaN
    outputs = Outputs(x[:, :2], (np.abs(x[:, :3]) + 0.1,), np.zeros(rows), (2,))
    scorer = FusedScorer(trim=0.2, cluster_weight=0.9, min_agreement=0.2, kl=True)
    scorer.fit_rows(outputs, x)
    assert scorer.view_kinds()[-1] == "kl" and len(scorer.kept_) == len(scorer.agreement_)
    assert all(scorer.kept_) and all(np.isnan(scorer.agreement_))  # too few rows, or constant
    assert scorer.clusters_.centres_.shape[0] == max(rows // ROWS_PER_CENTRE, 1)
    again = FusedScorer.from_dict(json.loads(json.dumps(scorer.to_dict(), allow_nan=False)))
    np.testing.assert_array_equal(again.score_rows(outputs, x), scorer.score_rows(outputs, x))


def test_fused_score_survives_the_scoring_reference(tmp_path):
    generator = np.random.default_rng(5)
    x = generator.normal(size=(500, 6))
    outputs = views_of(x, x[:, 0])
    scorer = FusedScorer(trim=0.2).fit_rows(outputs, x)
    reference = Reference(
        features=list("abc"),
        types=dict.fromkeys("abc", "double"),
        kinds=dict.fromkeys("abc", "numeric"),
        id_col="row_id",
        label_col=None,
        threshold=3.0,
        error_quantiles=[0.0, 1.0],
        scorer=scorer,
        constants={"c": {"inputs": [2], "values": [0.0]}},
    )
    again = Reference.read(reference.write(tmp_path / "reference.json"))
    assert isinstance(again.scorer, FusedScorer)
    assert again.constants == reference.constants
    older = json.loads((tmp_path / "reference.json").read_text())
    del older["constants"]  # written before aepipe kept the training constants
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert Reference.read(tmp_path / "older.json").constants == {}
    np.testing.assert_array_equal(
        again.scorer.score_rows(outputs, x), scorer.score_rows(outputs, x)
    )
    np.testing.assert_array_equal(again.scorer.latent_mean_, scorer.terms_[1].latent_mean_)
    # a reference written by the weighted score reads as one
    weighted = dataclasses.replace(
        reference, scorer=AnomalyScorer(0.5).fit(outputs.embedding, outputs.errors[0])
    )
    assert isinstance(Reference.read(weighted.write(tmp_path / "w.json")).scorer, AnomalyScorer)


def test_the_fused_score_finds_planted_outliers_through_a_trained_nested_model(params):
    """Rows on a curved 2-d sheet in 12 columns, 3% pushed off it: the score ranks them top."""
    from sklearn.metrics import roc_auc_score

    generator = np.random.default_rng(2)
    t = generator.uniform(-2, 2, size=(1500, 2))
    x = np.column_stack(
        [t, np.sin(t), t**2, np.cos(t), t[:, :1] * t[:, 1:], t[:, :1] ** 3, t[:, 1:] ** 3]
    )
    x += generator.normal(0, 0.05, x.shape)
    labels = np.zeros(len(x), dtype=int)
    planted = generator.choice(len(x), 45, replace=False)
    x[planted] += generator.normal(0, 1.0, (45, x.shape[1]))
    labels[planted] = 1
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    torch.manual_seed(0)
    model = build_model(params.model, x.shape[1])
    config = dataclasses.replace(params.train, device="cpu")
    train(model, torch.from_numpy(x[:1200]), torch.from_numpy(x[1200:]), config)
    scorer = FusedScorer(trim=0.2).fit_rows(model_outputs(model, x[:1200]), x[:1200])
    scores = scorer.score_rows(model_outputs(model, x), x)
    assert roc_auc_score(labels, scores) > 0.95
    blends = blend_rows(x[:1200])  # the views chosen as the evaluate stage chooses them
    chosen = make_scorer(
        params.evaluate
    ).fit_rows(  # the defaults, as the evaluate stage
        model_outputs(model, x[:1200]), x[:1200], (model_outputs(model, blends), blends)
    )
    assert chosen.clusters_ is not None and sum(chosen.kept_) >= 2  # views of the model too
    assert roc_auc_score(labels, chosen.score_rows(model_outputs(model, x), x)) > 0.95


def test_training_constants_are_the_columns_whose_inputs_never_change():
    x = np.array(
        [  # a varies; b is constant; c is one-hot of one category; d's indicator varies
            [0.1, 0.0, 1.0, 0.0, 0.0, 0.0],
            [0.7, 0.0, 1.0, 0.0, 0.0, 1.0],
            [0.3, 0.0, 1.0, 0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    blocks = [("num", 1), ("num", 1), ("cat", 2), ("num", 2)]
    constants = training_constants(x, ["a", "b", "c", "d"], blocks)
    assert constants == {
        "b": {"inputs": [1], "values": [0.0]},
        "c": {"inputs": [2, 3], "values": [1.0, 0.0]},
    }
    reference = Reference(
        ["a", "b", "c", "d"], {}, {}, "id", None, 1.0, [0.0], AnomalyScorer(0.0), constants
    )
    rows = np.array(
        [[5.0, 0.0, 1.0, 0.0, 0.0, 0.0], [5.0, 2.0, 0.0, 1.0, np.nan, 1.0]], dtype=np.float32
    )
    np.testing.assert_array_equal(
        reference.at_constants(rows), [[False, True, True, False], [False, False, False, False]]
    )
    assert training_constants(x[:0], ["a", "b", "c", "d"], blocks) == {}


def test_marginal_tails_fit_in_blocks_as_column_by_column():
    """Blocks of inputs at once, a column with NaN on its own: the same quantiles and skews."""
    generator = np.random.default_rng(6)
    x = generator.gamma(2.0, size=(300, 150))  # skewed, and more inputs than a block
    x[[3, 40], 70] = np.nan  # a column with missing values
    x[:, 140] = np.nan  # one with none at all
    tails = MarginalTails().fit(x)
    for j in (0, 70, 100, 140):
        column = x[:, j][~np.isnan(x[:, j])]
        expected = np.quantile(column, tails.probabilities_) if len(column) else 0.0
        np.testing.assert_array_equal(tails.quantiles_[:, j], expected)
    centred = x[:, 100] - x[:, 100].mean()
    skew = np.mean(centred**3) / np.mean(centred**2) ** 1.5
    assert tails.skew_[100] == pytest.approx(skew, rel=1e-12) and tails.skew_[140] == 0
