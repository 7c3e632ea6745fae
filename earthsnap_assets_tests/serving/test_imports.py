"""The endpoint does not carry the orchestrator: serving imports no Dagster module, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from earthsnap_assets_tests.serving.helpers import WITHOUT_DAGSTER

CHECK = """
import json, sys
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.cli import serve
import earthsnap_assets.cli
app = create_app("staging")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "dagster" or m.startswith("dagster_"))))
"""


def test_serving_imports_no_dagster() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_endpoint_builds_where_dagster_cannot_be_imported() -> None:
    blocked = WITHOUT_DAGSTER + "import dagster\n"
    refused = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "must not import Dagster" in refused.stderr  # the blocker works
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_DAGSTER + CHECK], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
