"""The automated gate a new model version must pass before a person is asked to approve it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str

    @property
    def tag(self) -> str:
        return "passed" if self.passed else "failed"


def evaluate_gate(
    accuracy: float, min_accuracy: float, production_accuracy: float | None, tolerance: float
) -> GateResult:
    """Pass when accuracy >= the minimum and not below production by more than `tolerance`."""
    if accuracy < min_accuracy:
        return GateResult(False, f"accuracy {accuracy:.4f} < minimum {min_accuracy:.4f}")
    if production_accuracy is not None and accuracy < production_accuracy - tolerance:
        return GateResult(
            False, f"accuracy {accuracy:.4f} < production {production_accuracy:.4f} - tolerance {tolerance:.4f}"
        )
    against = "no production version" if production_accuracy is None else f"production {production_accuracy:.4f}"
    return GateResult(True, f"accuracy {accuracy:.4f} >= minimum {min_accuracy:.4f}; {against}")
