"""Label Studio as a stack service, without starting it: command, environment, install errors, the CLI flag."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import _selected, label_studio
from earthsnap_assets.stack.cli import stack
from earthsnap_assets.stack.process import StackError


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"EARTHSNAP_HOME": str(tmp_path / "home"), **env})


def test_settings_defaults_and_overrides(tmp_path: Path) -> None:
    plain = _settings(tmp_path)
    assert (plain.review_port, plain.review_url) == (8180, "http://127.0.0.1:8180")
    assert plain.review_venv == Path.home() / ".cache" / "earthsnap" / f"label-studio-{label_studio.VERSION}"
    moved = _settings(
        tmp_path,
        EARTHSNAP_REVIEW_PORT="9999",
        EARTHSNAP_REVIEW_URL="https://review.example.org/",
        EARTHSNAP_REVIEW_TOKEN="t0ken-123",
        EARTHSNAP_REVIEW_VENV=str(tmp_path / "lsvenv"),
    )
    assert (moved.review_port, moved.review_url, moved.review_token) == (
        9999,
        "https://review.example.org",
        "t0ken-123",
    )
    assert moved.review_venv == tmp_path / "lsvenv"


def test_command_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "somewhere-else")  # bare names Label Studio would read as its own settings
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", "stray")
    settings = _settings(tmp_path, EARTHSNAP_REVIEW_PORT="8199", EARTHSNAP_S3_PORT="9000")
    cmd = label_studio.command(settings, "/venv/bin/label-studio")
    assert cmd[:3] == ["/venv/bin/label-studio", "start", "--no-browser"]
    assert cmd[cmd.index("--data-dir") + 1] == str(settings.home / "label-studio")
    assert cmd[cmd.index("--port") + 1] == "8199" and cmd[cmd.index("--internal-host") + 1] == "127.0.0.1"
    env = label_studio.environment(settings)
    assert "HOST" not in env
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(settings.home / "label-studio")
    assert env["LABEL_STUDIO_USERNAME"] == settings.review_user
    assert env["LABEL_STUDIO_PASSWORD"] == settings.review_password
    assert env["LABEL_STUDIO_USER_TOKEN"] == settings.review_token
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    # the lake is read with the operator's S3 settings; nothing phones home
    assert env["LABEL_STUDIO_S3_ENDPOINT"] == "http://127.0.0.1:9000"
    assert env["LABEL_STUDIO_AWS_ACCESS_KEY_ID"] == settings.access_key
    assert env["LABEL_STUDIO_LATEST_VERSION_CHECK"] == "false" and env["LABEL_STUDIO_SENTRY_DSN"] == ""
    on_aws = label_studio.environment(_settings(tmp_path, EARTHSNAP_S3_ENDPOINT="aws"))
    assert "LABEL_STUDIO_S3_ENDPOINT" not in on_aws


def test_a_failed_install_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    failing = [sys.executable, "-c", "import sys; print('No matching distribution found'); sys.exit(3)"]
    with log.open("w") as out, pytest.raises(StackError, match=r"(?s)exited 3.*No matching distribution found"):
        label_studio._run_step(failing, out, log)
    assert "No matching distribution found" in log.read_text()


def test_an_installed_venv_is_reused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    label_studio.executable(venv).parent.mkdir(parents=True)
    label_studio.executable(venv).write_text("#!/bin/sh\n")
    (venv / label_studio.READY).write_text(label_studio.VERSION + "\n")
    assert label_studio.ensure_venv(venv) == label_studio.executable(venv)  # no pip, no output


def test_review_is_opt_in() -> None:
    assert label_studio not in _selected(dagster=True, serving=True)
    assert label_studio in _selected(dagster=False, review=True)
    assert "--review" in CliRunner().invoke(stack, ["up", "--help"]).output
