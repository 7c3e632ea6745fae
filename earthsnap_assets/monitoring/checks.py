"""What the daily checks decide, from a day's headline numbers (`summary.report_metrics`) and thresholds.

Thresholds come from the environment, read when a check runs (never at import), so changing them needs no
deploy of code: set the variable on the Dagster run worker / code location and the next run uses it.

Environment variables (defaults in brackets):
  EARTHSNAP_MONITOR_WARN_PSI [0.2]        drift check WARNs when group or class PSI is above this (and above
                                          the PSI that sampling noise alone reaches that day, `psi_*_null_p95`)
  EARTHSNAP_MONITOR_WARN_BACK_OFF [0.3]   back_off_rate check WARNs when the group-level answer rate is above
  EARTHSNAP_MONITOR_BLOCK_PSI [unset]     set: the blocking check fails with ERROR when group PSI is above it
                                          (blocks downstream assets of the run); unset or empty: check is off
  EARTHSNAP_MONITOR_MIN_PREDICTIONS [100] below this many predictions a day, PSI is noise: checks do not judge
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class Thresholds:
    warn_psi: float = 0.2
    warn_back_off: float = 0.3
    block_psi: float | None = None  # None: the blocking check is off
    min_predictions: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Thresholds:
        env = os.environ if env is None else env
        return cls(
            warn_psi=_float(env, "EARTHSNAP_MONITOR_WARN_PSI", cls.warn_psi),
            warn_back_off=_float(env, "EARTHSNAP_MONITOR_WARN_BACK_OFF", cls.warn_back_off),
            block_psi=_float(env, "EARTHSNAP_MONITOR_BLOCK_PSI", None),
            min_predictions=int(_float(env, "EARTHSNAP_MONITOR_MIN_PREDICTIONS", cls.min_predictions)),
        )


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    judged: bool = True  # False: too little data (or the check is off); passed says nothing about drift


def _unjudged(metrics: Mapping[str, float], thresholds: Thresholds) -> Verdict | None:
    volume = int(metrics.get("volume", 0))
    if volume < thresholds.min_predictions:
        return Verdict(True, f"{volume} predictions, fewer than {thresholds.min_predictions}: not judged", False)
    return None


def _no_reference(metrics: Mapping[str, float]) -> str | None:
    if "psi_group" not in metrics:
        return "no training reference for the day's dataset versions: drift cannot be measured"
    return None


def over_threshold(metrics: Mapping[str, float], threshold: float) -> tuple[dict[str, float], list[str]]:
    """({level: PSI} above `threshold` and above sampling noise, [levels above `threshold` only by noise])."""
    over, noisy = {}, []
    for level in ("group", "species"):
        value = metrics.get(f"psi_{level}")
        if value is None or value <= threshold:
            continue
        if value > metrics.get(f"psi_{level}_null_p95", 0.0):
            over[level] = round(value, 4)
        else:
            noisy.append(level)
    return over, noisy


def judge_drift(metrics: Mapping[str, float], thresholds: Thresholds) -> Verdict:
    """Fails (WARN) when group or class PSI is over the warn threshold, or when there is no reference."""
    unjudged = _unjudged(metrics, thresholds)
    if unjudged:
        return unjudged
    missing = _no_reference(metrics)
    if missing:
        return Verdict(False, missing)
    over, noisy = over_threshold(metrics, thresholds.warn_psi)
    note = f"; {noisy} above it only as much as sampling noise gives" if noisy else ""
    if over:
        return Verdict(False, f"PSI above {thresholds.warn_psi}: {over}{note}")
    return Verdict(True, f"PSI within {thresholds.warn_psi}{note}")


def judge_back_off(metrics: Mapping[str, float], thresholds: Thresholds) -> Verdict:
    rate = metrics.get("back_off_rate")
    if rate is None:
        return Verdict(True, "no predictions that day", False)
    passed = rate <= thresholds.warn_back_off
    word = "within" if passed else "above"
    return Verdict(passed, f"back-off rate {rate:.1%} {word} {thresholds.warn_back_off:.0%}")


def judge_blocking(metrics: Mapping[str, float], thresholds: Thresholds) -> Verdict:
    """Group PSI over EARTHSNAP_MONITOR_BLOCK_PSI (off when unset; little data or no reference pass, the
    drift check warns about those)."""
    if thresholds.block_psi is None:
        return Verdict(True, "EARTHSNAP_MONITOR_BLOCK_PSI is unset: the check is off", False)
    unjudged = _unjudged(metrics, thresholds)
    missing = _no_reference(metrics)
    if unjudged or missing:
        return Verdict(True, unjudged.description if unjudged else str(missing), False)
    over, _ = over_threshold({k: v for k, v in metrics.items() if "group" in k}, thresholds.block_psi)
    psi = metrics["psi_group"]
    return Verdict(not over, f"group PSI {psi:.3f} {'above' if over else 'within'} {thresholds.block_psi}")
