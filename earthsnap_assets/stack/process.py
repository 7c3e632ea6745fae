"""Detached, PID-file managed processes: the plumbing under `earthsnap stack up|down|status`.

Each service runs in its own session (so one signal reaches the server and every worker it forked),
writes stdout+stderr to `<home>/logs/<name>.log` and leaves `<home>/run/<name>.pid`, so a later
`earthsnap` process can find, check and stop what an earlier one started.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Popen objects of the services this interpreter started: reaped (no live-looking zombies), never GC'd.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class StackError(RuntimeError):
    """A service of the local stack could not be started, reached or stopped."""


def find_executable(name: str) -> str | None:
    """The venv's own copy first (the wheels install next to the interpreter), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not bind host:port now (SO_REUSEADDR, as servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class Port:
    """A TCP port a service listens on, and the variable that moves it."""

    number: int
    label: str
    env_var: str


def check_ports_free(ports: Sequence[Port]) -> None:
    """Fail before starting anything, naming the first port that is out of range or taken."""
    for port in ports:
        if not 0 < port.number < 65536:
            raise StackError(f"port {port.number} for {port.label} is out of range; set {port.env_var}")
        if port_in_use(port.number):
            raise StackError(
                f"port {port.number} for {port.label} is already in use by another process; "
                f"set {port.env_var} to a free port, or stop what listens there"
            )


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None off Linux or if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str:
    """Kernel start time of a process, to tell our PID from a recycled one ("" where unknown)."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) member left in the process group that a service leads."""
    _alive(pgid)  # reaps the leader if it is our child
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(int(entry.name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _wait_group(pgid: int, seconds: float) -> bool:
    """Wait up to `seconds` for the group to empty; True if it did."""
    deadline = time.monotonic() + seconds
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _terminate_group(pgid: int, *, leader_alive: bool, timeout: float) -> None:
    """SIGTERM the leader, then its stragglers once it is gone, then SIGKILL the group at `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        (os.kill if leader_alive else os.killpg)(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while leader_alive and _alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)  # what the leader left behind gets a short grace
    if not _wait_group(pgid, min(3.0, max(0.0, deadline - time.monotonic()))):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        if not _wait_group(pgid, 5.0):
            raise StackError(f"process group {pgid} survived SIGKILL")


def _restore_interrupts() -> None:
    # A shell starts background jobs with SIGINT ignored; Dagster maps SIGTERM onto SIGINT's handler,
    # so without this it would ignore our SIGTERM too.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True)
class ManagedProcess:
    """One named service's process, log and PID file under the stack's home."""

    name: str
    home: Path

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    def _recorded(self) -> tuple[int, str] | None:
        try:
            lines = self.pid_path.read_text().split()
            return int(lines[0]), (lines[1] if len(lines) > 1 else "")
        except (OSError, ValueError, IndexError):
            return None

    def pid(self) -> int | None:
        """PID of the running service, None if it is not running (stale PID files do not count)."""
        recorded = self._recorded()
        if recorded is None or not _alive(recorded[0]):
            return None
        pid, started = recorded
        return pid if not started or _start_time(pid) in ("", started) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        """Launch `cmd` detached in a new session; the previous run's log is kept as `<name>.log.1`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(f"{self.name}.log.1"))
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with self.log_path.open("wb") as log:
            child = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
                preexec_fn=_restore_interrupts if ignored else None,
            )
        _CHILDREN[child.pid] = child
        self.pid_path.write_text(f"{child.pid}\n{_start_time(child.pid)}\n")
        return child.pid

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the service and every process it forked; True if anything was running.

        SIGTERM goes to the leader first, since `dagster dev` and `mlflow server` shut their workers
        down in order (signalled all at once, dagster restarts its code server). Stragglers get SIGTERM
        once the leader is gone, and whatever is left at `timeout` gets SIGKILL.
        """
        pgid = (self._recorded() or (-1, ""))[0]
        leader = self.pid()
        ran = pgid > 0 and (leader is not None or _group_alive(pgid))
        if ran:
            _terminate_group(pgid, leader_alive=leader is not None, timeout=timeout)
        _CHILDREN.pop(pgid, None)
        self.pid_path.unlink(missing_ok=True)
        return ran

    def log_tail(self, n: int = 30) -> str:
        """Last `n` lines of the service log, colour codes removed, for error messages."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(_ANSI.sub("", text).splitlines()[-n:])

    def error(self, problem: str, port: int | None = None) -> StackError:
        """A StackError naming the service, its port and the end of its log."""
        where = f" (port {port})" if port is not None else ""
        return StackError(f"{self.name}{where} {problem}.\nLast lines of {self.log_path}:\n{self.log_tail()}")

    def wait_healthy(self, check: Callable[[], bool], timeout: float, *, port: int | None = None) -> None:
        """Poll `check` until it holds; fail early, with the log, if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except Exception:  # a health probe that raises is simply "not yet"
                pass
            if not self.is_running():
                child = _CHILDREN.get((self._recorded() or (-1, ""))[0])  # exit code if we started it
                code = f" with exit code {child.returncode}" if child and child.returncode is not None else ""
                raise self.error(f"exited{code} before becoming healthy", port)
            if time.monotonic() > deadline:
                raise self.error(f"did not become healthy within {timeout:.0f} s", port)
            time.sleep(0.25)
