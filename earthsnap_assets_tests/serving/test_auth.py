"""Optional bearer-token auth of the endpoint (issue 13): protected routes, open probes, token rotation.

Most tests need no stack: no model is loaded (`NoRegistry`, a stand-in bundle); the last ones answer a real
prediction and the deploy job's `Endpoints` against tiny models on the session's MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from starlette.testclient import TestClient

from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.resources.endpoints import Endpoints
from earthsnap_assets.serving import auth
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.auth import AuthTokens, bearer_token
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.production import Lake
from earthsnap_assets_tests.serving.conftest import Deployed
from earthsnap_assets_tests.serving.helpers import GREEN, photo, serving, wait_ready
from earthsnap_assets_tests.serving.test_hostile import NoRegistry, endpoint

OLD, NEW = "old-token-0123456789abcdef", "new-token-fedcba9876543210"
PROTECTED = [("POST", "/predict"), ("POST", "/feedback"), ("GET", "/models"), ("GET", "/stats")]


def client_for(tmp_path: Path, tokens: AuthTokens) -> TestClient:
    config = ServeConfig(poll_interval_s=3600.0, log_predictions=False, spool_dir=str(tmp_path), auth_tokens=tokens)
    return TestClient(create_app("staging", registry=NoRegistry(), config=config, lake=Lake(MemoryBlobs(), "lake")))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_refuse_no_token_and_a_wrong_one_with_json_401(tmp_path: Path, method: str, path: str) -> None:
    with client_for(tmp_path, AuthTokens([NEW])) as client:
        missing = client.request(method, path, content=b"x")
        wrong = client.request(method, path, content=b"x", headers=bearer(OLD))
        other_scheme = client.request(method, path, content=b"x", headers={"Authorization": f"Basic {NEW}"})
    for refused in (missing, wrong, other_scheme):
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert set(refused.json()) == {"error"}
    assert "missing bearer token" in missing.json()["error"]
    assert wrong.json() == {"error": "invalid bearer token"}
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_the_right_token_passes_probes_stay_open(tmp_path: Path) -> None:
    with client_for(tmp_path, AuthTokens([NEW])) as client:
        stats = client.get("/stats", headers=bearer(NEW))
        lower_scheme = client.get("/stats", headers={"Authorization": f"bearer {NEW}"})
        feedback = client.post("/feedback", content=b"not json", headers=bearer(NEW))  # past auth: its own 4xx
        health = client.get("/health")
        ready = client.get("/ready")  # not ready (no model), but answered: the kubelet probe needs no token
    assert stats.status_code == 200 and "recent_answers" in stats.json()
    assert lower_scheme.status_code == 200
    assert 400 <= feedback.status_code < 500 and feedback.status_code != 401
    assert health.status_code == 200 and health.json() == {"status": "alive"}
    assert ready.status_code == 503 and ready.json()["auth"] == "bearer"


def test_without_tokens_nothing_changes_and_ready_says_auth_is_off(tmp_path: Path) -> None:
    assert not ServeConfig().auth_tokens and ServeConfig().auth_tokens.mode == "off"
    with client_for(tmp_path, AuthTokens()) as client:
        stats = client.get("/stats")
        ready = client.get("/ready")
    assert stats.status_code == 200
    assert ready.json()["auth"] == "off"


def test_a_token_is_checked_before_the_body_is_read(tmp_path: Path) -> None:
    """Over a real uvicorn: an unauthenticated upload is refused at once, not after 408 or 413 checks."""
    with endpoint(tmp_path, auth_tokens=AuthTokens([NEW]), max_bytes=1000) as url:
        refused = requests.post(f"{url}/predict", data=b"x" * 5000, timeout=10)
        passed = requests.post(f"{url}/predict", data=b"x" * 5000, headers=bearer(NEW), timeout=10)
        open_health = requests.get(f"{url}/health", timeout=10)
    assert refused.status_code == 401 and refused.json() == {"error": auth_missing_message()}
    assert passed.status_code == 413  # past auth: refused by the size limit
    assert open_health.status_code == 200


def auth_missing_message() -> str:
    return "missing bearer token: send `Authorization: Bearer <token>`"


def test_token_file_holds_several_tokens_for_rotation(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# rotation: the new token first, the old one until every client moved\n{NEW}\n\n{OLD}\n")
    tokens = AuthTokens.load(tokens_file, environ={})
    assert len(tokens) == 2 and tokens.accepts(NEW) and tokens.accepts(OLD)
    assert not tokens.accepts("third-token-0123456789abcdef") and not tokens.accepts(NEW[:-1])
    with client_for(tmp_path, tokens) as client:
        assert [client.get("/stats", headers=bearer(t)).status_code for t in (NEW, OLD, NEW + "x")] == [200, 200, 401]
    dropped = tmp_path / "dropped"
    dropped.write_text(NEW)  # the old token is retired
    assert not AuthTokens.load(dropped, environ={}).accepts(OLD)


def test_tokens_come_from_the_file_and_the_environment_together(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(NEW)
    both = AuthTokens.load(tokens_file, environ={auth.TOKENS_ENV: f" {OLD} , third-token-0123456789abcdef,"})
    assert len(both) == 3 and both.accepts(OLD) and both.accepts(NEW)
    assert not AuthTokens.load(None, environ={})  # neither: auth off
    assert AuthTokens.load(None, environ={auth.TOKENS_ENV: OLD}) == AuthTokens([OLD])


def test_tokens_that_mean_auth_was_wanted_but_are_unusable_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        AuthTokens.load(empty, environ={})
    with pytest.raises(ValueError, match="holds no token"):
        AuthTokens.load(None, environ={auth.TOKENS_ENV: " , "})
    with pytest.raises(ValueError, match="at least 16"):
        AuthTokens.load(None, environ={auth.TOKENS_ENV: "short"})
    with pytest.raises(ValueError, match="AuthTokens"):
        ServeConfig(auth_tokens=(NEW,))  # type: ignore[arg-type]  # raw tokens are not accepted


def test_only_digests_are_kept_and_shown(tmp_path: Path) -> None:
    tokens = AuthTokens([NEW, OLD])
    config = ServeConfig(auth_tokens=tokens)
    assert NEW not in repr(config) and NEW not in repr(tokens) and "2 tokens" in repr(tokens)
    assert set(tokens._digests) == {hashlib.sha256(t.encode()).digest() for t in (NEW, OLD)}
    assert not any(NEW in str(value) for value in vars(config).values())
    assert dataclasses.replace(config, max_batch=2).auth_tokens == tokens  # replace() keeps the same digests


def test_comparison_is_constant_time_against_every_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stored digest goes through hmac.compare_digest, also after a match (no early exit), and never `==`
    on the token: the sha256 of the presented token is what is compared."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = AuthTokens([NEW, OLD, "third-token-0123456789abcdef"])
    for presented, expected in ((NEW, True), (OLD, True), ("nope-nope-nope-nope-nope", False)):
        calls.clear()
        assert tokens.accepts(presented) is expected
        assert len(calls) == 3  # one per stored digest, whichever matched
        assert {a for a, _ in calls} == {hashlib.sha256(presented.encode()).digest()}
        assert {b for _, b in calls} == set(tokens._digests)


def test_bearer_header_parsing() -> None:
    assert bearer_token(f"Bearer {NEW}") == NEW and bearer_token(f"  bearer   {NEW} ") == NEW
    assert bearer_token(None) is None and bearer_token("") is None and bearer_token("Bearer") is None
    assert bearer_token(f"Basic {NEW}") is None and bearer_token(NEW) is None


def test_serve_command_wires_the_token_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from earthsnap_assets.serving.cli import serve

    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{NEW}\n")
    args = ["--env", "staging", "--port", "0", "--auth-token-file", str(tokens_file)]
    result = CliRunner().invoke(serve, args, env={auth.TOKENS_ENV: OLD})
    assert result.exit_code == 0, result.output
    assert started["app"].state.config.auth_tokens == AuthTokens([NEW, OLD])
    result = CliRunner().invoke(serve, ["--env", "staging", "--port", "0"], env={auth.TOKENS_ENV: None})
    assert result.exit_code == 0 and not started["app"].state.config.auth_tokens  # neither: auth off
    result = CliRunner().invoke(serve, ["--env", "staging", "--port", "0"], env={auth.TOKENS_ENV: "short"})
    assert result.exit_code == 2 and "at least 16" in result.output


@pytest.mark.stack
def test_with_the_token_a_prediction_is_answered_and_the_deploy_job_sends_it(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app("staging", config=deployed.models.config(auth_tokens=AuthTokens([NEW, OLD])))
    with serving(app) as url:
        wait_ready(url)  # /ready: open
        refused = requests.post(f"{url}/predict", data=photo(GREEN), timeout=30)
        answered = requests.post(f"{url}/predict", data=photo(GREEN), headers=bearer(OLD), timeout=30)
        models = requests.get(f"{url}/models", headers=bearer(NEW), timeout=10)
        monkeypatch.delenv(auth.CLIENT_TOKEN_ENV, raising=False)
        with pytest.raises(PermissionError, match="no token"):
            Endpoints(staging_url=url).served_versions("staging")  # fails at once, not after a wait
        configured = Endpoints(staging_url=url, token=NEW).served_versions("staging")
        monkeypatch.setenv(auth.CLIENT_TOKEN_ENV, OLD)
        from_env = Endpoints(staging_url=url).served_versions("staging")
    assert refused.status_code == 401
    assert answered.status_code == 200 and answered.json()["species"] == "rose"
    assert models.status_code == 200 and models.json()["auth"] == "bearer"
    assert configured == from_env == deployed.model_versions
