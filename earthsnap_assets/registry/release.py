"""Which versions an alias may serve: only what the deploy job released, whatever moved the alias.

An alias is a pointer anyone with write access to MLflow can move ("Add alias" in the UI). Serving therefore
does not trust the pointer alone: a version is served at `staging` only if it passed the gate and a person
approved it, and at `production` only if it also passed the deploy job's stage tests. An alias that points
elsewhere is refused; the endpoint keeps its last good bundle and says why in `/ready`.

Tags alone can be set by anyone with EDIT on the model (`stage_test=passed` by hand). With a release key
(`EARTHSNAP_RELEASE_KEY`, one Secret shared by the Dagster pods and the endpoints, never given to people), the
deploy job also signs each release: tag `release_signature_<alias>` = HMAC-SHA256(key, model, version, alias),
and an endpoint that has the key serves only versions whose signature checks. Serving holds the key but only
read access to MLflow, so it cannot sign anything itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from earthsnap_assets.registry import names

APPROVED = "approved"
PASSED = "passed"
KEY_ENV = "EARTHSNAP_RELEASE_KEY"


def release_key(env: Mapping[str, str] | None = None) -> str | None:
    """The deploy job's signing key from the environment; None: releases are proven by tags alone."""
    return (os.environ if env is None else env).get(KEY_ENV) or None


def signature_tag(alias: str) -> str:
    return f"release_signature_{alias}"


def sign(key: str, model: str, version: str, alias: str) -> str:
    """What the deploy job writes when it releases `model` `version` at `alias`."""
    return hmac.new(key.encode(), f"{model}\n{version}\n{alias}".encode(), hashlib.sha256).hexdigest()


def required(alias: str) -> dict[str, str]:
    """The tag values a version needs to be served at `alias`."""
    proof = {names.GATE: PASSED, names.APPROVAL: APPROVED}
    if alias == "production":
        proof[names.STAGE_TEST] = PASSED
    return proof


def refusal(
    alias: str, tags: Mapping[str, str], model: str = "", version: str = "", key: str | None = None
) -> str | None:
    """Why `model` `version` with `tags` may not be served at `alias`; None when it may.

    With `key`, the version must also carry the deploy job's signature for this alias.
    """
    missing = [
        f"{tag}={tags.get(tag) or 'unset'} (needs {value})"
        for tag, value in required(alias).items()
        if tags.get(tag) != value
    ]
    if key is not None:
        found = tags.get(signature_tag(alias), "")
        if not hmac.compare_digest(found, sign(key, model, version, alias)):
            missing.append(f"{signature_tag(alias)} {'invalid' if found else 'unset'} (not signed by the deploy job)")
    return "; ".join(missing) or None


def released_tags(alias: str) -> dict[str, str]:
    """The tags the deploy job leaves on a version it released at `alias` (for tests and benchmarks that
    register versions by hand and point an alias at them)."""
    return required(alias) | {names.GATE_REASON: "set by hand", names.APPROVED_BY: "test"}
