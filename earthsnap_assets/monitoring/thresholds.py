"""Alert thresholds of the daily monitoring checks, from the environment (read at call time, never at import).

Environment variables (defaults in brackets):
  EARTHSNAP_MONITOR_WARN_PSI [0.2]        drift check WARNs when group or class PSI is above this
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
