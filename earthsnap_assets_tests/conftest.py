"""Session-wide fixtures: one real local stack (SeaweedFS + MLflow) per test run, on free ports.

The stack gets a temporary EARTHSNAP_HOME and ports picked at random, never the defaults (8333, 5000,
3000), so a developer's own stack keeps running undisturbed. The EARTHSNAP_* variables (and
MLFLOW_TRACKING_URI) are exported for the whole session, so code under test that builds
`Settings.from_env()` reaches the test stack.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import StackError, label_studio, seaweed, stack_down, stack_up
from earthsnap_assets.stack.ports import free_port, free_stack_env
from earthsnap_assets.stack.process import ManagedProcess


def stack_env(home: Path) -> dict[str, str]:
    """EARTHSNAP_* variables for a stack in `home` on fresh free ports."""
    return free_stack_env(home)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The running test stack's Settings; started on first use, stopped at the end of the session."""
    # change capture and automation tick every 5 s (instead of 15 s and 30 s) in the test stack's dagster dev
    env = {**stack_env(tmp_path_factory.mktemp("stack-home")), "EARTHSNAP_SENSOR_INTERVAL_S": "5"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = Settings.from_env()
        try:
            stack_up(settings, dagster=False)
            yield settings
        finally:
            stack_down(settings)


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_kept() -> Iterator[None]:
    """`mlflow.set_tracking_uri` also rewrites MLFLOW_TRACKING_URI in os.environ, and `RegistryVerbs` calls it
    with its own URI: a test that points a registry at a dead server (an outage test) would leave every later
    test, and `Settings.from_env()`, talking to that dead server. Put the session's value back after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is not None and os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # sets os.environ too
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def s3_client(stack: Settings) -> Any:
    """A boto3 S3 client for the test stack."""
    return seaweed.client(stack)


@pytest.fixture
def make_stack_settings() -> Callable[[Path], Settings]:
    """Settings for an extra, separate stack in a given home, on its own free ports (env untouched)."""

    def make(home: Path) -> Settings:
        return Settings.from_env({**os.environ, **stack_env(home)})

    return make


@pytest.fixture(scope="session")
def review_stack(stack: Settings) -> Iterator[Settings]:
    """The test stack plus Label Studio (the review queue) on a free port; EARTHSNAP_REVIEW_* point at it.

    Its venv is built once per machine (`Settings.review_venv`, ~3 min the first time); a fresh home's first
    start migrates SQLite (~50-120 s). A start that fails fails the test with the end of Label Studio's log.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EARTHSNAP_REVIEW_PORT", str(free_port()))
        patch.delenv("EARTHSNAP_REVIEW_URL", raising=False)
        settings = Settings.from_env()
        began = time.monotonic()
        try:
            stack_up(settings, dagster=False, review=True)
        except StackError as exc:
            pytest.fail(f"Label Studio did not start:\n{exc}", pytrace=False)
        print(f"\nLabel Studio healthy after {time.monotonic() - began:.1f} s (venv {settings.review_venv})")
        try:
            yield settings
        finally:
            ManagedProcess(label_studio.NAME, settings.home).stop(label_studio.STOP_TIMEOUT)


@pytest.fixture(scope="session")
def review_client(review_stack: Settings) -> Any:
    """A `review.client.ReviewClient` for the session's Label Studio, as the platform's token."""
    from earthsnap_assets.review.client import ReviewClient

    return ReviewClient(review_stack.review_url, review_stack.review_token)
