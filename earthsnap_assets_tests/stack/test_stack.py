"""The local stack against the real SeaweedFS, MLflow and Dagster processes."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import StackError, dagster_dev, stack_down, stack_status, stack_up
from earthsnap_assets.stack.cli import stack as stack_cli
from earthsnap_assets.stack.process import ManagedProcess, port_in_use

MakeSettings = Callable[[Path], Settings]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _group_members(pgid: int) -> set[int]:
    members = {pgid}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            if entry.read_text().rsplit(")", 1)[1].split()[2] == str(pgid):
                members.add(int(entry.parent.name))
        except (OSError, IndexError):
            continue
    return members


@pytest.mark.stack
def test_up_is_idempotent(stack: Settings) -> None:
    # Label Studio (`review_stack`, an optional service) may run in the session's home too: `up` without
    # --review neither reports nor touches it
    before = {s.name: s.pid for s in stack_status(stack) if s.running}
    began = time.monotonic()
    statuses = stack_up(stack, dagster=False)
    assert time.monotonic() - began < 5
    core = {name: pid for name, pid in before.items() if name != "label-studio"}
    assert {s.name: s.pid for s in statuses} == core
    assert set(core) == {"seaweedfs", "mlflow"}
    after = {s.name: s.pid for s in stack_status(stack) if s.running}
    assert after == before


@pytest.mark.stack
def test_status_reports_healthy_services_with_urls(stack: Settings) -> None:
    by_name = {s.name: s for s in stack_status(stack)}
    assert by_name["seaweedfs"].healthy and by_name["seaweedfs"].url == f"http://127.0.0.1:{stack.s3_port}"
    assert by_name["mlflow"].healthy and by_name["mlflow"].url == f"http://127.0.0.1:{stack.mlflow_port}"
    assert by_name["mlflow"].log.is_file()
    assert not by_name["dagster"].running and not by_name["dagster"].expected  # started with dagster=False

    result = CliRunner().invoke(stack_cli, ["status"])  # reads the session's EARTHSNAP_* variables
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:{stack.mlflow_port}" in result.output
    healthy = {line.split()[0] for line in result.output.splitlines() if " healthy " in line}
    assert healthy - {"label-studio"} == {"seaweedfs", "mlflow"}  # Label Studio: when `review_stack` started it


@pytest.mark.stack
def test_buckets_exist(stack: Settings, s3_client: Any) -> None:
    names = {bucket["Name"] for bucket in s3_client.list_buckets()["Buckets"]}
    assert set(stack.buckets) <= names


@pytest.mark.stack
def test_mlflow_artifact_lands_in_seaweed(stack: Settings, s3_client: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_tracking_uri)
    experiment = client.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "round trip", "notes/hello.txt")
    client.set_terminated(run.info.run_id)

    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients need no S3 credentials
    local = client.download_artifacts(run.info.run_id, "notes/hello.txt", str(tmp_path))
    assert Path(local).read_text() == "round trip"
    listed = s3_client.list_objects_v2(Bucket=stack.mlflow_bucket, Prefix="artifacts/")
    key = next(o["Key"] for o in listed["Contents"] if run.info.run_id in o["Key"])
    assert key.endswith("notes/hello.txt")
    assert s3_client.get_object(Bucket=stack.mlflow_bucket, Key=key)["Body"].read() == b"round trip"


@pytest.mark.parametrize(
    "field, offset, label, variable",
    [
        ("s3_port", 0, "s3", "EARTHSNAP_S3_PORT"),
        ("s3_port", 10_000, "s3 gRPC", "EARTHSNAP_S3_PORT"),
        ("mlflow_port", 0, "mlflow", "EARTHSNAP_MLFLOW_PORT"),  # checked before SeaweedFS starts
    ],
)
def test_taken_port_is_named_and_nothing_starts(
    tmp_path: Path, make_stack_settings: MakeSettings, field: str, offset: int, label: str, variable: str
) -> None:
    settings = make_stack_settings(tmp_path / "home")
    port = getattr(settings, field) + offset
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StackError, match=rf"port {port} for {label}.*in use.*{variable}"):
            stack_up(settings, dagster=False)
    assert not any(s.running for s in stack_status(settings))
    assert not list((settings.home / "run").glob("*.pid"))


def test_exiting_process_shows_its_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess("boom", tmp_path)
    proc.start([sys.executable, "-c", "import sys; print('config line 7: bad value'); sys.exit(3)"])
    with pytest.raises(StackError) as failure:
        proc.wait_healthy(lambda: False, timeout=30, port=1234)
    message = str(failure.value)
    assert "boom (port 1234) exited with exit code 3" in message
    assert "config line 7: bad value" in message and str(proc.log_path) in message
    assert not proc.stop()  # nothing left to stop, PID file removed
    assert not proc.pid_path.exists()


@pytest.mark.stack
def test_separate_stack_fails_clearly_then_goes_up_and_down_cleanly(
    tmp_path: Path, make_stack_settings: MakeSettings
) -> None:
    settings = make_stack_settings(tmp_path / "home")
    database = settings.home / "mlflow" / "mlflow.db"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"not sqlite at all " * 64)
    try:
        with pytest.raises(StackError, match=rf"(?s)mlflow \(port {settings.mlflow_port}\) exited.*not a database"):
            stack_up(settings, dagster=False)
        by_name = {s.name: s for s in stack_status(settings)}
        assert by_name["seaweedfs"].healthy and not by_name["mlflow"].running  # the failed one is cleaned up

        database.unlink()
        statuses = stack_up(settings, dagster=False)
        assert all(s.healthy for s in statuses)
        assert statuses[0].pid == by_name["seaweedfs"].pid  # the healthy service was left alone
        pids = set().union(*(_group_members(s.pid) for s in statuses if s.pid))
        assert len(pids) >= 3  # weed, mlflow's CLI and its uvicorn worker
    finally:
        stopped = stack_down(settings)
    assert stopped == ["mlflow", "seaweedfs"]
    assert all(_gone(pid) for pid in pids)
    deadline = time.monotonic() + 10  # the kernel may take a moment to release a killed listener's port
    while (port_in_use(settings.s3_port) or port_in_use(settings.mlflow_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_in_use(settings.s3_port) and not port_in_use(settings.mlflow_port)
    assert not list((settings.home / "run").glob("*.pid"))
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{settings.s3_port}.sock"))  # weed's sockets removed
    assert stack_down(settings) == []


def test_dagster_command_line_and_environment(tmp_path: Path, make_stack_settings: MakeSettings) -> None:
    settings = make_stack_settings(tmp_path / "home")
    workspace = tmp_path / "workspace.yaml"
    port = str(settings.dagster_port)
    cmd = dagster_dev.command(settings, workspace, ["dagster"])
    assert cmd == ["dagster", "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", port]
    env = dagster_dev.environment(settings)
    assert env["DAGSTER_HOME"] == str(settings.home / "dagster")
    rebuilt = Settings.from_env(dagster_dev.settings_env(settings))
    assert rebuilt == settings  # code location sees the same
    assert (rebuilt.review_url, rebuilt.review_venv) == (settings.review_url, settings.review_venv)  # not in ==

    config = dagster_dev.prepare_home(settings) / "dagster.yaml"
    assert "telemetry:\n  enabled: false" in config.read_text()
    config.write_text("telemetry:\n  enabled: true\n")
    dagster_dev.prepare_home(settings)
    assert config.read_text() == "telemetry:\n  enabled: true\n"  # a user's edits are kept
    assert (dagster_dev.REPO_ROOT / "workspace.yaml").is_file()


@pytest.mark.stack
def test_dagster_dev_starts_and_stops(tmp_path: Path, make_stack_settings: MakeSettings) -> None:
    """A throwaway code location, so this measures `dagster dev` itself, not the project's imports."""
    (tmp_path / "tiny_defs.py").write_text("import dagster as dg\n\ndefs = dg.Definitions()\n")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("load_from:\n  - python_module:\n      module_name: tiny_defs\n      working_directory: .\n")
    settings = make_stack_settings(tmp_path / "home")
    proc = dagster_dev.launch(settings, workspace)
    pid = proc.pid()
    try:
        proc.wait_healthy(lambda: dagster_dev.healthy(settings), timeout=60, port=settings.dagster_port)
        assert (settings.home / "dagster" / "dagster.yaml").is_file()
        members = _group_members(pid or -1)
        assert len(members) >= 3  # dagster dev, its code server, webserver and daemon
    finally:
        assert proc.stop(dagster_dev.STOP_TIMEOUT)
    assert all(_gone(member) for member in members)
    assert not port_in_use(settings.dagster_port)
