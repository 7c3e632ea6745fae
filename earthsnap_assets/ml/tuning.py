"""Hyperparameter search: Optuna TPE over a small space, Hyperband stops bad trials after an epoch or two.

The objective is any function of (params, should_prune) -> validation accuracy, so the search knows
nothing of models or data; the caller trains a short run on a subset and reports epochs through
`should_prune`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

log = logging.getLogger(__name__)

Objective = Callable[[dict, Callable[[int, float], bool]], float]


@dataclass(frozen=True)
class SearchSpace:
    backbones: tuple[str, ...]
    lr: tuple[float, float] = (3e-4, 3e-2)
    weight_decay: tuple[float, float] = (1e-5, 1e-1)
    epochs: tuple[int, ...] = (3, 5, 8)


@dataclass(frozen=True)
class TuningBudget:
    trials: int = 8
    seconds: float = 300.0
    seed: int = 0


@dataclass
class TrialRecord:
    number: int
    params: dict
    value: float | None
    state: str
    seconds: float


@dataclass
class TuningResult:
    best_params: dict
    best_value: float
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def pruned(self) -> int:
        return sum(1 for t in self.trials if t.state == "PRUNED")


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict:
    return {
        "backbone": trial.suggest_categorical("backbone", list(space.backbones)),
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "epochs": trial.suggest_categorical("epochs", list(space.epochs)),
    }


def tune(
    objective: Objective,
    space: SearchSpace,
    budget: TuningBudget,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> TuningResult:
    """Run up to `budget.trials` trials or `budget.seconds`, whichever ends first; deterministic sampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"earthsnap-tuning-{budget.seed}",  # Hyperband buckets trials by a hash of this name
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=budget.seed, n_startup_trials=min(4, budget.trials)),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(space.epochs), reduction_factor=3),
    )
    records: list[TrialRecord] = []

    def run_trial(trial: optuna.Trial) -> float:
        params = suggest(trial, space)

        def should_prune(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        started = time.monotonic()
        try:
            value = objective(params, should_prune)
        finally:
            trial.set_user_attr("seconds", time.monotonic() - started)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return value

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        item = TrialRecord(
            trial.number, dict(trial.params), trial.value, trial.state.name, trial.user_attrs.get("seconds", 0)
        )
        records.append(item)
        log.info("trial %d %s value=%s params=%s", item.number, item.state, item.value, item.params)
        if on_trial:
            on_trial(item)

    study.optimize(run_trial, n_trials=budget.trials, timeout=budget.seconds, callbacks=[record])
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"no tuning trial completed within {budget.trials} trials / {budget.seconds} s")
    return TuningResult(best_params=dict(study.best_params), best_value=float(study.best_value), trials=records)
