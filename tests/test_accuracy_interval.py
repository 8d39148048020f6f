"""Accuracy intervals: Wilson for one top-1, Newcombe's paired interval for two models scored on
the same images; checked against textbook values and by simulated coverage."""
import numpy as np
import pytest

from pipeline.measure.accuracy_interval import describe, paired_difference, wilson


def test_wilson_matches_its_closed_form_at_the_edges():
    z2 = 1.959963984540054 ** 2
    assert wilson(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))          # k = 0: [0, z²/(n+z²)]
    assert wilson(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    low, high = wilson(155, 175)
    assert low < 155 / 175 < high and 0.05 < high - low < 0.1
    with pytest.raises(ValueError, match="at least one image"):
        wilson(0, 0)


def _table(rng, cells, n):
    """Per-image correctness of two models drawn from (both, a only, b only, neither) rates."""
    kind = rng.choice(4, size=n, p=cells)
    return (kind == 0) | (kind == 1), (kind == 0) | (kind == 2)


@pytest.mark.parametrize("cells", [(0.85, 0.04, 0.02, 0.09), (0.60, 0.15, 0.10, 0.15)])
def test_paired_interval_covers_the_true_difference_95_percent_of_the_time(cells):
    rng, n, runs = np.random.default_rng(0), 175, 1000
    true = 100 * (cells[1] - cells[2])
    hits = 0
    for _ in range(runs):
        d = paired_difference(*_table(rng, cells, n))
        hits += d["low"] <= true <= d["high"]
    assert 0.93 <= hits / runs <= 0.975


def test_pairing_is_what_makes_the_interval_narrow():
    """Two models right on mostly the same images: the paired interval is far narrower than
    comparing two independent percentages would be."""
    a = np.zeros(175, bool)
    a[:160] = True
    b = a.copy()
    b[150:160] = False                       # b is wrong on 10 images a gets right, nothing else
    d = paired_difference(a, b)
    assert d["points"] == pytest.approx(100 * 10 / 175, abs=1e-3)
    assert (d["a_only"], d["b_only"], d["images"]) == (10, 0, 175)
    assert d["verdict"] == "higher" and d["low"] > 0
    (l1, u1), (l2, u2) = wilson(160, 175), wilson(150, 175)
    unpaired = 100 * ((u1 - l1) ** 2 + (u2 - l2) ** 2) ** 0.5
    assert d["high"] - d["low"] < 0.6 * unpaired
    assert paired_difference(b, a)["verdict"] == "lower"


def test_the_same_predictions_differ_by_nothing_within_the_noise():
    a = np.arange(175) % 9 != 0
    d = paired_difference(a, a)
    assert d["points"] == 0 and d["low"] < 0 < d["high"] and d["verdict"] == "within noise"
    assert describe(d, "distilled", "alone") == (
        f"+0.00 points [95% CI {d['low']:+.1f}, {d['high']:+.1f}] on 175 val images, within the "
        "noise (0 images right only for distilled, 0 only for alone)")


def test_results_of_different_images_are_refused():
    with pytest.raises(ValueError, match="same images"):
        paired_difference(np.ones(10, bool), np.ones(11, bool))
