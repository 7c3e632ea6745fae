import pytest

from earthsnap_assets.ml.tuning import SearchSpace, TuningBudget, tune

SPACE = SearchSpace(backbones=("small", "large"), epochs=(2, 4))


def _objective(params, should_prune):
    """A known optimum: 'large' with lr near 1e-2; reports a learning curve per epoch."""
    quality = (0.5 if params["backbone"] == "large" else 0.2) - abs(params["lr"] - 1e-2) * 10
    value = 0.0
    for epoch in range(params["epochs"]):
        value = quality * (epoch + 1) / params["epochs"]
        if should_prune(epoch, value):
            break
    return value


def test_search_finds_the_better_region_and_records_every_trial():
    seen = []
    result = tune(_objective, SPACE, TuningBudget(trials=12, seconds=60, seed=1), on_trial=seen.append)
    assert len(seen) == len(result.trials) == 12
    assert result.best_params["backbone"] == "large"
    assert result.best_value == max(t.value for t in result.trials if t.state == "COMPLETE")


def test_same_seed_same_trials():
    a = tune(_objective, SPACE, TuningBudget(trials=6, seconds=60, seed=3))
    b = tune(_objective, SPACE, TuningBudget(trials=6, seconds=60, seed=3))
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_no_completed_trial_is_an_error_not_a_zero():
    def failing(params, should_prune):
        raise ValueError("diverged")

    with pytest.raises(ValueError, match="diverged"):
        tune(failing, SPACE, TuningBudget(trials=2, seconds=10))
