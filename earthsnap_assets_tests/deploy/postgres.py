"""A real, throwaway PostgreSQL server for instance tests (Debian's postgresql package).

PostgreSQL refuses to run as root, so when the tests run as root (CI, containers) the server's
commands run as the `postgres` system user through `runuser`, in a temp directory handed to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from earthsnap_assets.stack.ports import free_port

USER = "earthsnap"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries: `make test` installs Debian's `postgresql` package."""


def bin_dir() -> Path:
    """The directory with initdb/pg_ctl: PATH first, then Debian's versioned location."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise PostgresUnavailable("PostgreSQL not found: install Debian's `postgresql` package (make test does)")
    return Path(candidates[-1]).parent


@dataclass
class PostgresServer:
    root: Path
    port: int
    as_user: list[str]
    bin: Path
    host: str = "127.0.0.1"
    user: str = USER

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}\n{log[-2000:]}")

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses={self.host} -p {self.port} -k {self.root} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database; returns its name."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def env(self, db_name: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for one database."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_DB": db_name,
        }


def start_postgres() -> PostgresServer:
    """initdb + start on a free loopback port; the caller stops it and removes `root`."""
    binaries = bin_dir()
    root = Path(tempfile.mkdtemp(prefix="earthsnap-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(root=root, port=free_port(), as_user=as_user, bin=binaries)
    server.start()
    return server
