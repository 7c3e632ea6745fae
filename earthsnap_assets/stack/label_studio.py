"""Label Studio, the review queue's UI: pinned, in its own virtual environment, data in the stack's home.

Label Studio pins Django and friends tightly; in its own venv (built once, outside any stack home, see
`Settings.review_venv`) those pins never meet ours. The platform talks to it only over HTTP with the
official SDK (`review/client.py`).

At first start Label Studio creates the admin (`EARTHSNAP_REVIEW_USER` / `_PASSWORD`) and sets its API
token to `EARTHSNAP_REVIEW_TOKEN` (LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN; the token is a
"legacy" token, so legacy tokens are enabled for the organization it creates).

Photos: the review projects read them from the lake through an S3 source storage that names only the
bucket and prefix. The endpoint and credentials are the *server's* (LABEL_STUDIO_S3_ENDPOINT,
LABEL_STUDIO_AWS_ACCESS_KEY_ID/...), which Label Studio trusts as the operator's; an endpoint stored in a
project would be refused as an SSRF risk when it is local. Photos are proxied through Label Studio
(presign off), so a reviewer's browser never needs to reach the object store. On AWS the same storage works
with the server's IAM role (no endpoint, no keys in the Label Studio database).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack.process import ManagedProcess, Port, StackError

NAME = "label-studio"
VERSION = "1.23.2"  # pinned: the SDK (label-studio-sdk 2.1.2) and the labeling config are tested against it
# First start migrates a fresh SQLite database: ~80 s on 2 busy cores; later starts take ~15 s.
START_TIMEOUT = 420.0
STOP_TIMEOUT = 10.0
READY = ".earthsnap-ready"  # written into the venv once `pip install` succeeded


def url(settings: Settings) -> str:
    return settings.review_url


def ports(settings: Settings) -> list[Port]:
    return [Port(settings.review_port, "label studio", "EARTHSNAP_REVIEW_PORT")]


def data_dir(settings: Settings) -> Path:
    return settings.home / "label-studio"


def executable(venv: Path) -> Path:
    return venv / "bin" / "label-studio"


def _progress(line: str) -> None:
    print(f"[label-studio venv] {line}", file=sys.stderr, flush=True)


def ensure_venv(venv: Path) -> Path:
    """Create `venv` with label-studio==VERSION unless a finished install is there; returns its executable.

    A lock serialises concurrent first starts (two test sessions, a CLI and a test); an install that failed
    halfway leaves no ready marker and is simply redone.
    """
    ready = venv / READY
    if ready.is_file() and ready.read_text().strip() == VERSION and executable(venv).is_file():
        return executable(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file() and ready.read_text().strip() == VERSION and executable(venv).is_file():
            return executable(venv)
        _progress(f"creating {venv} with label-studio=={VERSION} (once; a few minutes)")
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", f"label-studio=={VERSION}"],
        ]
        log = venv.parent / f"{venv.name}-install.log"
        with log.open("w") as out:
            for step in steps:
                _run_step(step, out, log)
        ready.write_text(VERSION + "\n")
        _progress(f"installed ({log})")
    return executable(venv)


def _run_step(cmd: list[str], out, log: Path) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        out.write(line)
        tail = [*tail[-19:], line.rstrip()]
        if line.startswith(("Collecting label-studio", "Installing collected", "Successfully installed")):
            _progress(line.strip()[:160])
    if proc.wait() != 0:
        raise StackError(
            f"installing Label Studio failed ({' '.join(cmd[-3:])} exited {proc.returncode}); full log {log}:\n"
            + "\n".join(tail)
        )


def environment(settings: Settings) -> dict[str, str]:
    """Label Studio's settings: admin and token, no phoning home, the lake readable through the operator's S3."""
    env = {
        key: value
        for key, value in {**os.environ, **settings.env}.items()
        # Label Studio reads bare names (HOST, PORT, USERNAME...) as fallbacks: only explicit values reach it.
        if not key.startswith(("LABEL_STUDIO_", "HEARTEX_", "DJANGO_")) and key not in ("HOST", "PORT", "USERNAME")
    }
    env.update(
        {
            "LABEL_STUDIO_USERNAME": settings.review_user,
            "LABEL_STUDIO_PASSWORD": settings.review_password,
            "LABEL_STUDIO_USER_TOKEN": settings.review_token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_HOST": url(settings),
            # also read before `--data-dir` is applied: without it a first import creates ~/.local/share/label-studio
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir(settings)),
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_AWS_ACCESS_KEY_ID": settings.access_key,
            "LABEL_STUDIO_AWS_SECRET_ACCESS_KEY": settings.secret_key,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.s3_endpoint:
        env["LABEL_STUDIO_S3_ENDPOINT"] = settings.s3_endpoint
    return env


def command(settings: Settings, label_studio: str = "label-studio") -> list[str]:
    return [
        label_studio,
        "start",
        "--no-browser",
        "--data-dir",
        str(data_dir(settings)),
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(settings.review_port),
    ]


def launch(settings: Settings) -> ManagedProcess:
    exe = ensure_venv(settings.review_venv)
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(NAME, settings.home)
    proc.start(command(settings, str(exe)), env=environment(settings), cwd=data_dir(settings))
    return proc


def healthy(settings: Settings) -> bool:
    """`/health` answers and the platform's token is accepted (the admin exists)."""
    try:
        with urllib.request.urlopen(f"{url(settings)}/health", timeout=2) as response:
            if response.status != 200:
                return False
        request = urllib.request.Request(
            f"{url(settings)}/api/current-user/whoami", headers={"Authorization": f"Token {settings.review_token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except Exception:
        return False


def after_healthy(settings: Settings) -> None:
    """Nothing to do: review projects are created by the review queue when it first needs them."""


def after_stop(settings: Settings) -> None:
    """Nothing to clean up."""
