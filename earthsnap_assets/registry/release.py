"""Which versions an alias may serve: only what the deploy job released, whatever moved the alias.

An alias is a pointer anyone with write access to MLflow can move ("Add alias" in the UI). Serving therefore
does not trust the pointer alone: a version is served at `staging` only if it passed the gate and a person
approved it, and at `production` only if it also passed the deploy job's stage tests. An alias that points
elsewhere is refused; the endpoint keeps its last good bundle and says why in `/ready`.
"""

from __future__ import annotations

from collections.abc import Mapping

from earthsnap_assets.registry import names

APPROVED = "approved"
PASSED = "passed"


def required(alias: str) -> dict[str, str]:
    """The tag values a version needs to be served at `alias`."""
    proof = {names.GATE: PASSED, names.APPROVAL: APPROVED}
    if alias == "production":
        proof[names.STAGE_TEST] = PASSED
    return proof


def refusal(alias: str, tags: Mapping[str, str]) -> str | None:
    """Why a version with `tags` may not be served at `alias`; None when it may."""
    missing = [
        f"{key}={tags.get(key) or 'unset'} (needs {value})"
        for key, value in required(alias).items()
        if tags.get(key) != value
    ]
    return "; ".join(missing) or None


def released_tags(alias: str) -> dict[str, str]:
    """The tags the deploy job leaves on a version it released at `alias` (for tests and benchmarks that
    register versions by hand and point an alias at them)."""
    return required(alias) | {names.GATE_REASON: "set by hand", names.APPROVED_BY: "test"}
