import pytest

from benchmarks.report import aiq, cost_at_accuracy, hull


def test_hull_keeps_the_concave_nondecreasing_frontier():
    pts = [(1, 0.2), (2, 0.1), (3, 0.5), (4, 0.55), (5, 0.9), (6, 0.85)]
    # frontier (1,.2) (3,.5) (4,.55) (5,.9); (3,.5) and (4,.55) lie under the chord from (1,.2) to (5,.9)
    assert hull(pts) == [(1, 0.2), (5, 0.9)]
    assert hull([(1, 0.2), (2, 0.7), (5, 0.9)]) == [(1, 0.2), (2, 0.7), (5, 0.9)]  # concave: all kept


def test_aiq_of_a_single_point_and_a_curve():
    # one point at cost 2 on [0, 4]: zero before it, its accuracy after
    assert aiq([(2.0, 0.8)], 0.0, 4.0) == pytest.approx(0.8 * 2 / 4)
    # linear from (0, 0) to (4, 1): area 2 over range 4
    assert aiq([(0.0, 0.0), (4.0, 1.0)], 0.0, 4.0) == pytest.approx(0.5)
    # a dominated point changes nothing
    assert aiq([(0.0, 0.0), (4.0, 1.0), (3.0, 0.1)], 0.0, 4.0) == pytest.approx(0.5)


def test_cost_at_accuracy_interpolates_along_the_hull():
    curve = [(1.0, 0.2), (3.0, 0.6)]
    assert cost_at_accuracy(curve, 0.4) == pytest.approx(2.0)
    assert cost_at_accuracy(curve, 0.1) == pytest.approx(1.0)
    assert cost_at_accuracy(curve, 0.7) is None


def test_accuracy_at_cost_reads_the_hull():
    from benchmarks.report import accuracy_at_cost

    pts = [(1.0, 0.5), (3.0, 0.9), (2.0, 0.4)]  # (2, 0.4) is under the hull
    assert accuracy_at_cost(pts, 0.5) is None
    assert accuracy_at_cost(pts, 2.0) == pytest.approx(0.7)
    assert accuracy_at_cost(pts, 9.0) == pytest.approx(0.9)


def test_paired_bootstrap_interval_covers_the_value_and_shrinks_with_pairing():
    import numpy as np

    from benchmarks.report import paired_bootstrap

    rng = np.random.default_rng(0)
    base = rng.normal(size=400)
    a, b = base + 0.1 + rng.normal(scale=0.01, size=400), base  # paired: the difference is nearly constant
    out = paired_bootstrap(a, b, lambda x, y: x.mean() - y.mean())
    lo, hi = out["ci95"]
    assert lo <= out["value"] <= hi and 0.09 < lo and hi < 0.11
