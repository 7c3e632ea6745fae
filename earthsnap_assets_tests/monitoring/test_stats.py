"""PSI, KS, chi-square and the small summaries, against hand-computed values."""

import math

import numpy as np
import pytest

from earthsnap_assets.monitoring import stats


def test_psi_matches_the_formula_and_is_zero_for_equal_distributions():
    a, e = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    expected = (0.5 - 0.4) * math.log(0.5 / 0.4) + (0.3 - 0.4) * math.log(0.3 / 0.4)
    assert stats.psi(a, e) == pytest.approx(expected)
    assert stats.psi(e, e) == 0.0


def test_psi_floors_empty_bins_instead_of_going_infinite():
    value = stats.psi(np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    floor = stats.PSI_FLOOR
    assert math.isfinite(value)
    assert value == pytest.approx((1 - 0.5) * math.log(1 / 0.5) + (floor - 0.5) * math.log(floor / 0.5))
    with pytest.raises(ValueError, match="same bins"):
        stats.psi(np.array([1.0]), np.array([0.5, 0.5]))


def test_categorical_psi_puts_unknown_classes_in_one_bin():
    reference = {"a": 50, "b": 50}
    assert stats.categorical_psi({"a": 10, "b": 10}, reference) == pytest.approx(0.0)
    shifted = stats.categorical_psi({"a": 10, "b": 10, "new": 20}, reference)
    by_hand = stats.psi(np.array([0.25, 0.25, 0.5]), np.array([0.5, 0.5, 0.0]))
    assert shifted == pytest.approx(by_hand) and shifted > 1.0


def test_chi_square_separates_fit_from_misfit():
    reference = {"a": 600, "b": 300, "c": 100}
    fit = stats.chi_square({"a": 61, "b": 29, "c": 10}, reference)
    misfit = stats.chi_square({"a": 10, "b": 10, "c": 80}, reference)
    assert fit["p_value"] > 0.5 and misfit["p_value"] < 1e-6
    assert fit["dof"] == 3  # three known classes and the bin of unknown ones
    assert stats.chi_square({}, reference)["statistic"] is None


def test_numeric_psi_and_ks_see_a_shift_and_not_a_resample():
    rng = np.random.default_rng(0)
    baseline = rng.normal(0.5, 0.1, 5000)
    same = rng.normal(0.5, 0.1, 2000)
    darker = rng.normal(0.3, 0.1, 2000)
    assert stats.numeric_psi(same, baseline) < 0.05 < 1.0 < stats.numeric_psi(darker, baseline)
    assert stats.ks(same, baseline)["p_value"] > 0.01
    shifted = stats.ks(darker, baseline)
    assert shifted["p_value"] < 1e-10 and shifted["statistic"] > 0.5


def test_quantiles_histogram_and_sample():
    values = np.arange(101, dtype=float) / 100
    q = stats.quantiles(values)
    assert (
        q["p50"] == pytest.approx(0.5)
        and q["p95"] == pytest.approx(0.95)
        and set(q)
        == {
            "p5",
            "p25",
            "p50",
            "p75",
            "p95",
        }
    )
    assert stats.quantiles(np.array([])) == {}
    bins = stats.histogram(values, bins=4)
    assert [b["count"] for b in bins] == [25, 25, 25, 26]  # 1.0 falls in the last, closed bin
    assert (bins[0]["low"], bins[-1]["high"]) == (0.0, 1.0)
    drawn = stats.sample(values, 10, seed=3)
    assert len(drawn) == 10 and len(set(drawn)) == 10
    assert np.array_equal(drawn, stats.sample(values, 10, seed=3))
    assert len(stats.sample(values, 1000)) == 101
