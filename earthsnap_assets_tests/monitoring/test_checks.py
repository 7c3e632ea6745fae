"""What the daily checks decide, and where their thresholds come from."""

import numpy as np
import pytest

from earthsnap_assets.monitoring import stats
from earthsnap_assets.monitoring.checks import Thresholds, judge_back_off, judge_blocking, judge_drift

DEFAULTS = Thresholds()
CALM = {"volume": 1000, "psi_group": 0.01, "psi_species": 0.03, "psi_group_null_p95": 0.01, "back_off_rate": 0.1}


def test_thresholds_come_from_the_environment_when_asked():
    assert Thresholds.from_env({}) == DEFAULTS and DEFAULTS.block_psi is None
    env = {
        "EARTHSNAP_MONITOR_WARN_PSI": "0.1",
        "EARTHSNAP_MONITOR_WARN_BACK_OFF": "0.5",
        "EARTHSNAP_MONITOR_BLOCK_PSI": "0.4",
        "EARTHSNAP_MONITOR_MIN_PREDICTIONS": "10",
    }
    assert Thresholds.from_env(env) == Thresholds(0.1, 0.5, 0.4, 10)
    assert Thresholds.from_env({"EARTHSNAP_MONITOR_BLOCK_PSI": " "}).block_psi is None
    with pytest.raises(ValueError, match="EARTHSNAP_MONITOR_WARN_PSI"):
        Thresholds.from_env({"EARTHSNAP_MONITOR_WARN_PSI": "high"})


def test_drift_passes_calm_days_and_warns_on_either_level():
    assert judge_drift(CALM, DEFAULTS).passed
    group = judge_drift({**CALM, "psi_group": 0.5}, DEFAULTS)
    species = judge_drift({**CALM, "psi_species": 0.3}, DEFAULTS)
    assert not group.passed and "'group': 0.5" in group.description
    assert not species.passed and "species" in species.description


def test_drift_is_not_judged_on_little_data_and_warns_without_a_reference():
    few = judge_drift({**CALM, "volume": 20, "psi_group": 3.0}, DEFAULTS)
    assert few.passed and not few.judged
    blind = judge_drift({"volume": 1000, "back_off_rate": 0.1}, DEFAULTS)
    assert not blind.passed and "no training reference" in blind.description


def test_psi_that_sampling_noise_explains_does_not_warn():
    noisy = judge_drift({**CALM, "psi_species": 0.25, "psi_species_null_p95": 0.3}, DEFAULTS)
    assert noisy.passed and "sampling noise" in noisy.description
    # and the noise level is real: 2,000 species over 5,000 answers drawn from the reference itself
    reference = {f"s{i}": float(w) for i, w in enumerate(np.random.default_rng(0).gamma(1.0, 1.0, 2000))}
    expected = stats.proportions(reference, sorted(reference))
    drawn = np.random.default_rng(1).multinomial(5000, expected)
    observed = dict(zip(sorted(reference), drawn.tolist(), strict=True))
    assert stats.categorical_psi(observed, reference) > DEFAULTS.warn_psi
    assert stats.null_psi(reference, 5000) > DEFAULTS.warn_psi


def test_back_off_and_blocking():
    assert judge_back_off(CALM, DEFAULTS).passed
    assert not judge_back_off({**CALM, "back_off_rate": 0.31}, DEFAULTS).passed
    assert judge_back_off({"volume": 0}, DEFAULTS).judged is False
    drifted = {**CALM, "psi_group": 0.6}
    off = judge_blocking(drifted, DEFAULTS)
    assert off.passed and not off.judged
    on = Thresholds(block_psi=0.5)
    assert not judge_blocking(drifted, on).passed
    assert judge_blocking({**drifted, "psi_group": 0.4}, on).passed
    assert judge_blocking({**drifted, "volume": 5}, on).passed  # too little data: not blocked
