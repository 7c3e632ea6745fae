"""`earthsnap stack up|down|status`: the local stack from a terminal (mounted by the main CLI)."""

from __future__ import annotations

import time

import click

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import (
    ServiceStatus,
    StackError,
    dagster_dev,
    label_studio,
    stack_down,
    stack_status,
    stack_up,
)


def _state(status: ServiceStatus) -> str:
    if status.healthy:
        return "healthy"
    if status.running:
        return "unhealthy"
    return "exited" if status.expected else "stopped"


OPTIONAL = {dagster_dev.NAME, label_studio.NAME, "serve-staging", "serve-production"}


def _failing(status: ServiceStatus) -> bool:
    """Dagster, Label Studio and the endpoints are optional; SeaweedFS and MLflow are the stack."""
    return not status.healthy and (status.expected or status.name not in OPTIONAL)


def _table(statuses: list[ServiceStatus]) -> str:
    rows = [("SERVICE", "STATE", "PID", "URL", "LOG")]
    rows += [(s.name, _state(s), str(s.pid or "-"), s.url, str(s.log)) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]) for row in rows
    )


@click.group(name="stack")
def stack() -> None:
    """Run SeaweedFS (S3), MLflow and Dagster (and Label Studio) locally; state lives in EARTHSNAP_HOME."""


@stack.command()
@click.option("--no-dagster", is_flag=True, help="Start only SeaweedFS and MLflow.")
@click.option("--serving", is_flag=True, help="Also start the staging and production endpoints.")
@click.option("--review", is_flag=True, help="Also start Label Studio (the review queue; its venv is built once).")
def up(no_dagster: bool, serving: bool, review: bool) -> None:
    """Start what is not running and wait until every service is healthy."""
    settings = Settings.from_env()
    began = time.monotonic()
    try:
        statuses = stack_up(settings, dagster=not no_dagster, serving=serving, review=review)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(_table(statuses))
    click.echo(f"\nstack ready in {time.monotonic() - began:.1f} s (home {settings.home})")


@stack.command()
def down() -> None:
    """Stop every service of this EARTHSNAP_HOME (safe when nothing runs)."""
    settings = Settings.from_env()
    try:
        stopped = stack_down(settings)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack.command()
def status() -> None:
    """Show each service; exit 1 if SeaweedFS, MLflow or a started Dagster/Label Studio is not healthy."""
    statuses = stack_status(Settings.from_env())
    click.echo(_table(statuses))
    if any(_failing(s) for s in statuses):
        raise SystemExit(1)
