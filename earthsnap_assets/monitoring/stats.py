"""Drift and distribution statistics: PSI, KS, chi-square, quantiles, histograms (numpy + scipy.stats).

Why not Evidently (issue 14 asks to use a well-kept library where it fits): `evidently==0.7.23` installs
without conflicts but brings ~25 packages into the serving/Dagster image (litestar, plotly, statsmodels,
nltk, ...) for what monitoring needs here, which is three formulas. Its drift presets take whole pandas
DataFrames of current and reference rows, while our reference is a table of *training counts* (per group
and species, from the dataset version's QA reports) and our baseline for inputs is a capped sample kept in
each day's report: feeding Evidently would mean materialising synthetic reference rows from counts. The
statistics that have a tail to get wrong are scipy's (`scipy.stats.ks_2samp`, `scipy.stats.chisquare`),
already a dependency and as well kept as it gets; PSI is a documented one-line formula with an explicit
floor, tested below against hand-computed values. If we later want Evidently's HTML reports for people,
they can be built from the stored report offline, without it being in the pinned runtime set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

PSI_FLOOR = 1e-4  # proportion given to an empty bin on either side, so a missing class costs, never infinity
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
OTHER = "__other__"  # predictions of a class the reference does not know (a group or species added since)


def proportions(counts: Mapping[str, float], keys: Sequence[str]) -> np.ndarray:
    """Counts over `keys` (missing keys count 0) as proportions; all zeros when there is nothing."""
    values = np.array([float(counts.get(k, 0.0)) for k in keys])
    total = values.sum()
    return values / total if total > 0 else values


def psi(actual: np.ndarray, expected: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of two proportion vectors over the same bins.

    Empty bins take `floor` on both sides (so PSI stays finite and a class never predicted, or never
    trained on, still counts). Rule of thumb: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant.
    """
    a = np.maximum(np.asarray(actual, dtype=float), floor)
    e = np.maximum(np.asarray(expected, dtype=float), floor)
    if a.shape != e.shape or a.size == 0:
        raise ValueError(f"PSI needs two non-empty vectors over the same bins, got {a.shape} and {e.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def categorical_psi(observed: Mapping[str, int], reference: Mapping[str, float], floor: float = PSI_FLOOR) -> float:
    """PSI of observed category counts against reference counts; unknown categories share one `OTHER` bin."""
    keys = sorted(reference)
    known = {k: v for k, v in observed.items() if k in reference}
    unknown = sum(v for k, v in observed.items() if k not in reference)
    actual = proportions({**known, OTHER: unknown}, [*keys, OTHER])
    expected = proportions(reference, [*keys, OTHER])
    return psi(actual, expected, floor)


def null_psi(reference: Mapping[str, float], n: int, draws: int = 50, q: float = 0.95, seed: int = 0) -> float:
    """The `q` quantile of the PSI of `n` answers drawn from the reference itself: what sampling noise alone gives.

    PSI grows with the number of classes per answer (roughly (classes - 1) / n), so tens of thousands of
    species over a day's traffic can pass 0.2 with no drift at all; a check compares PSI with this too.
    """
    if n <= 0 or not reference:
        return 0.0
    keys = sorted(reference)
    expected = proportions(reference, [*keys, OTHER])
    rng = np.random.default_rng(seed)
    values = [psi(rng.multinomial(n, expected) / n, expected) for _ in range(draws)]
    return float(np.quantile(values, q))


def chi_square(observed: Mapping[str, int], reference: Mapping[str, float], floor: float = PSI_FLOOR) -> dict:
    """Chi-square goodness of fit of observed counts to the reference shares (floored, renormalised).

    Categories the reference does not know share one `OTHER` bin whose expected share is the floor.
    """
    keys = [*sorted(reference), OTHER]
    unknown = sum(v for k, v in observed.items() if k not in reference)
    counts = np.array([observed.get(k, 0) for k in keys[:-1]] + [unknown])
    n = counts.sum()
    if n == 0 or len(keys) < 2:
        return {"statistic": None, "p_value": None, "dof": len(keys) - 1}
    shares = np.maximum(proportions(reference, keys), floor)
    expected = shares / shares.sum() * n
    result = stats.chisquare(counts.astype(float), expected)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "dof": len(keys) - 1}


def numeric_bins(baseline: np.ndarray, bins: int = 10) -> np.ndarray:
    """Edges at the baseline's deciles (unique), open at both ends: each bin holds ~1/bins of the baseline."""
    inner = np.unique(np.quantile(baseline, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.concatenate([[-np.inf], inner, [np.inf]])


def numeric_psi(current: np.ndarray, baseline: np.ndarray, bins: int = 10, floor: float = PSI_FLOOR) -> float:
    """PSI of a numeric feature over the baseline's quantile bins."""
    edges = numeric_bins(baseline, bins)
    a = np.histogram(current, edges)[0].astype(float)
    e = np.histogram(baseline, edges)[0].astype(float)
    return psi(a / a.sum(), e / e.sum(), floor)


def ks(current: np.ndarray, baseline: np.ndarray) -> dict:
    """Two-sample Kolmogorov-Smirnov test (scipy): statistic = largest CDF gap, p-value of 'same distribution'."""
    result = stats.ks_2samp(current, baseline)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}


def quantiles(values: np.ndarray, qs: Iterable[float] = QUANTILES) -> dict[str, float]:
    """{"p5": ..., "p50": ...}; empty input gives an empty dict (never zeros)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {}
    return {f"p{round(q * 100):d}": float(np.quantile(values, q)) for q in qs}


def histogram(values: np.ndarray, bins: int = 10, low: float = 0.0, high: float = 1.0) -> list[dict]:
    """Fixed-width bins over [low, high] (probabilities): [{"low", "high", "count"}], the last bin closed."""
    counts, edges = np.histogram(np.clip(np.asarray(values, dtype=float), low, high), bins=bins, range=(low, high))
    return [
        {"low": round(float(edges[i]), 6), "high": round(float(edges[i + 1]), 6), "count": int(counts[i])}
        for i in range(bins)
    ]


def sample(values: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most `size` values drawn without replacement (seeded: the same day gives the same sample)."""
    values = np.asarray(values)
    if values.size <= size:
        return values
    return np.random.default_rng(seed).choice(values, size, replace=False)
