"""The code version recorded on every registered model: git commit, else the package version."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path


def code_version() -> str:
    """EARTHSNAP_CODE_VERSION (set in images), else `git describe` of this checkout, else the package version."""
    if os.environ.get("EARTHSNAP_CODE_VERSION"):
        return os.environ["EARTHSNAP_CODE_VERSION"]
    root = Path(__file__).resolve().parent.parent
    try:
        described = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5
        )
        if described.returncode == 0 and described.stdout.strip():
            return described.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return metadata.version("earthsnap")
    except metadata.PackageNotFoundError:
        return "unknown"
