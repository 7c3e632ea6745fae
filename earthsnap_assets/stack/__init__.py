"""The local stack: SeaweedFS (S3), MLflow, `dagster dev` (and Label Studio, endpoints) as background processes.

`stack_up` is idempotent and returns only when every service answers its health check, so scripts and
tests can call it unconditionally; `stack_down` is safe when nothing runs. State (data, logs, PID
files) lives under `Settings.home`, so several stacks with different homes and ports can coexist.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import dagster_dev, label_studio, mlflow_server, seaweed
from earthsnap_assets.stack.process import ManagedProcess, Port, StackError, check_ports_free
from earthsnap_assets.stack.serving import PRODUCTION, STAGING

__all__ = ["ServiceStatus", "StackError", "stack_down", "stack_status", "stack_up"]


class _Service(Protocol):
    """What each service module provides (seaweed, mlflow_server, dagster_dev, label_studio)."""

    NAME: str
    START_TIMEOUT: float
    STOP_TIMEOUT: float

    def url(self, settings: Settings) -> str: ...
    def ports(self, settings: Settings) -> list[Port]: ...
    def launch(self, settings: Settings) -> ManagedProcess: ...
    def healthy(self, settings: Settings) -> bool: ...
    def after_healthy(self, settings: Settings) -> None: ...
    def after_stop(self, settings: Settings) -> None: ...


# Start order: MLflow needs S3 for artifacts; Dagster's code may talk to both; Label Studio reads the lake.
_SERVICES: tuple[_Service, ...] = (seaweed, mlflow_server, label_studio, dagster_dev, STAGING, PRODUCTION)


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `stack status` sees it."""

    name: str
    running: bool  # our process (from the PID file) is alive
    healthy: bool  # running and answering its health check
    url: str
    pid: int | None
    log: Path
    expected: bool  # `up` started it and `down` has not stopped it (its PID file exists)


def _selected(dagster: bool, serving: bool = False, review: bool = False) -> tuple[_Service, ...]:
    skipped = (
        ([] if dagster else [dagster_dev])
        + ([] if serving else [STAGING, PRODUCTION])
        + ([] if review else [label_studio])
    )
    return tuple(s for s in _SERVICES if all(s is not x for x in skipped))


def _check_distinct(services: tuple[_Service, ...], settings: Settings) -> None:
    ports = [port for service in services for port in service.ports(settings)]
    counts = Counter(port.number for port in ports)
    for number, count in counts.items():
        if count > 1:
            labels = " and ".join(p.label for p in ports if p.number == number)
            raise StackError(f"port {number} is configured for both {labels}; give each its own port")


def _ensure(service: _Service, settings: Settings) -> None:
    """Leave a healthy service alone; otherwise start it and wait for health (stopping it on failure)."""
    proc = ManagedProcess(service.NAME, settings.home)
    ports = service.ports(settings)
    started = False
    if not proc.is_running():
        check_ports_free(ports)
        service.launch(settings)
        started = True
    try:
        proc.wait_healthy(lambda: service.healthy(settings), service.START_TIMEOUT, port=ports[0].number)
        service.after_healthy(settings)
    except BaseException:
        if started:
            proc.stop(service.STOP_TIMEOUT)
        raise


def _status(service: _Service, settings: Settings) -> ServiceStatus:
    proc = ManagedProcess(service.NAME, settings.home)
    pid = proc.pid()
    return ServiceStatus(
        name=service.NAME,
        running=pid is not None,
        healthy=pid is not None and service.healthy(settings),
        url=service.url(settings),
        pid=pid,
        log=proc.log_path,
        expected=proc.pid_path.exists(),
    )


def stack_up(
    settings: Settings, *, dagster: bool = True, serving: bool = False, review: bool = False
) -> list[ServiceStatus]:
    """Start what is not running (SeaweedFS, MLflow, Dagster, endpoints, Label Studio); return once all are healthy."""
    services = _selected(dagster, serving, review)
    _check_distinct(services, settings)
    for service in services:  # all ports first: a conflict should not leave half a stack running
        proc = ManagedProcess(service.NAME, settings.home)
        if not proc.is_running():
            proc.stop(service.STOP_TIMEOUT)  # workers a crashed leader left behind, stale PID file
            check_ports_free(service.ports(settings))
    settings.home.mkdir(parents=True, exist_ok=True)
    for service in services:
        _ensure(service, settings)
    return [_status(service, settings) for service in services]


def stack_down(settings: Settings) -> list[str]:
    """Stop every service of this home, in reverse start order; the names of those that ran."""
    stopped = []
    for service in reversed(_SERVICES):
        if ManagedProcess(service.NAME, settings.home).stop(service.STOP_TIMEOUT):
            service.after_stop(settings)
            stopped.append(service.NAME)
    return stopped


def stack_status(settings: Settings) -> list[ServiceStatus]:
    """Every service of this home, running or not, with its URL and log."""
    return [_status(service, settings) for service in _SERVICES]
