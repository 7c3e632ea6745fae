"""One real PostgreSQL server per test session, for the production instance tests."""

import shutil
from collections.abc import Iterator

import pytest

from earthsnap_assets_tests.deploy.postgres import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.root, ignore_errors=True)
