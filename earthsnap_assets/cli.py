"""`earthsnap`: the command line of the platform (stack, data in, runs, demo)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from earthsnap_assets.registry import names
from earthsnap_assets.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


@click.group()
def main() -> None:
    """EarthSnap: photos in S3 -> validated, versioned datasets -> hierarchical species classifiers."""


def _mount_subcommands() -> None:
    from earthsnap_assets.review.cli import review
    from earthsnap_assets.serving.cli import serve
    from earthsnap_assets.stack.cli import stack

    main.add_command(stack)
    main.add_command(serve)
    main.add_command(review)


@main.command("demo-data")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="local folder (default: <home>/demo-data)")
@click.option("--images-per-species", default=30, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--upload/--no-upload", default=True, show_default=True, help="ingest into the raw bucket")
def demo_data(out: Path | None, images_per_species: int, seed: int, upload: bool) -> None:
    """Generate the synthetic hierarchical dataset (with a few bad files) and upload it."""
    from earthsnap_assets.demo.synthetic import SyntheticSpec, generate_dataset

    settings = _settings()
    if out is None:  # our own folder of generated data: drawn again (deterministically) on every run
        out = settings.home / "demo-data"
        shutil.rmtree(out, ignore_errors=True)
    summary = generate_dataset(out, SyntheticSpec(images_per_species=images_per_species, seed=seed))
    groups = sorted(set(summary.species.values()))
    click.echo(f"generated {summary.good_images} images of {len(summary.species)} species in {len(groups)} groups")
    click.echo(f"  plus {len(summary.bad_files)} bad files QA must reject: {', '.join(sorted(summary.bad_files))}")
    if upload:
        _ingest(out, summary.taxonomy_csv)


def _ingest(root: Path, taxonomy_csv: Path) -> None:
    from earthsnap_assets.ingest import ingest
    from earthsnap_assets.resources.object_store import ObjectStore

    store = ObjectStore()
    summary = ingest(store, root, taxonomy_csv)
    click.echo(f"ingest into s3://{store.raw_bucket}/images/:")
    for line in summary.lines():
        click.echo(f"  {line}")
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} uploads failed")


@main.command("ingest")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--taxonomy", "taxonomy_csv", required=True, type=click.Path(exists=True, path_type=Path))
def ingest_command(directory: Path, taxonomy_csv: Path) -> None:
    """Upload DIRECTORY/<species>/<files> and the taxonomy CSV; unchanged objects are skipped."""
    from earthsnap_assets.lake.taxonomy import TaxonomyError

    try:
        _ingest(directory, taxonomy_csv)
    except TaxonomyError as exc:
        raise click.ClickException(f"{taxonomy_csv}: {exc}") from exc


def _dagster_home(settings: Settings) -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or settings.home / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _execute(job: str, partition: str | None = None) -> bool:
    """Run a job in this process, recorded in the stack's Dagster instance (seen in the UI)."""
    return _run_job(job, partition).success


def _run_job(job: str, partition: str | None = None) -> Any:
    """`_execute`, returning the ExecuteInProcessResult (its materializations' metadata) for the caller."""
    import warnings

    import dagster as dg

    from earthsnap_assets.definitions import defs

    warnings.filterwarnings("ignore", category=dg.BetaWarning)  # data versions on outputs: what we rely on
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance,
            partition_key=partition,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
    label = f"{job}[{partition}]" if partition else job
    for event in result.get_asset_materialization_events():
        click.echo(f"  materialized {event.asset_key.to_user_string()}{f' [{partition}]' if partition else ''}")
    for check in result.get_asset_check_evaluations():
        state = "passed" if check.passed else f"FAILED ({check.severity.value})"
        click.echo(f"  check {check.asset_key.to_user_string()}:{check.check_name} {state}")
    outcome = "succeeded" if result.success else "FAILED"
    click.echo(f"run {result.run_id[:8]} {label} {outcome} in {time.monotonic() - started:.1f} s")
    return result


def _species_groups() -> list[str]:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return sorted(instance.get_dynamic_partitions("species_group"))


@main.command("run")
@click.argument("job", default="data_pipeline")
@click.option("--partition", default=None, help="species group, for partitioned jobs (data_pipeline, child_training)")
def run_job(job: str, partition: str | None) -> None:
    """Run a Dagster job in this process, recorded in the stack's Dagster instance (seen in the UI).

    A partitioned job without --partition runs once per species group, like a backfill.
    """
    _dagster_home(_settings())
    from earthsnap_assets.definitions import defs

    partitioned = defs.resolve_job_def(job).partitions_def is not None
    targets = [partition] if partition or not partitioned else _species_groups()
    failed = [p for p in targets if not _execute(job, p)]
    if failed:
        raise click.ClickException(f"job {job} failed for {failed}; see the runs in the Dagster UI")


@main.command("data")
def prepare_data() -> None:
    """The data side once, in the order automation runs it: taxonomy, every group's intake, the global
    checks (one run for all groups), every group's manifest and shards, then the version and the sample."""
    _dagster_home(_settings())
    _must("taxonomy_update")
    groups = _species_groups()
    _must("intake", groups)
    _must("global_checks")
    _must("data_pipeline", groups)
    _must("dataset_release")


def _must(job: str, partitions: list[str] | None = None) -> None:
    failed = [p for p in partitions or [None] if not _execute(job, p)]
    if failed:
        where = f" for {failed}" if partitions else ""
        raise click.ClickException(f"{job} failed{where}; see the runs in the Dagster UI")


@main.command("trigger")
@click.argument("job")
@click.option("--partition", default=None, help="species group, for partitioned jobs (child_training)")
@click.option("--url", default=None, help="Dagster webserver (default: the local stack's)")
@click.option("--wait/--no-wait", "should_wait", default=True, show_default=True)
def trigger_command(job: str, partition: str | None, url: str | None, should_wait: bool) -> None:
    """Launch JOB through Dagster's GraphQL API, as another system would (runs on the Dagster daemon)."""
    from earthsnap_assets.api import trigger, wait

    url = url or f"http://127.0.0.1:{_settings().dagster_port}"
    run_id = trigger(url, job, partition=partition)
    click.echo(f"submitted {job}{f'[{partition}]' if partition else ''}: run {run_id} ({url}/runs/{run_id})")
    if should_wait:
        state = wait(url, run_id)
        click.echo(f"run {run_id} finished: {state}")
        if state != "SUCCESS":
            raise click.ClickException(f"run {run_id} ended {state}")


@main.command("train")
def train_all() -> None:
    """Parent, every species group's child (one run per partition, like a backfill), then the comparison."""
    _dagster_home(_settings())
    failed = [] if _execute("parent_training") else ["parent_training"]
    for group in _species_groups():
        if not _execute("child_training", group):
            failed.append(f"child_training[{group}]")
    if not _execute("hierarchy_report"):
        failed.append("hierarchy_report")
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}; see the runs in the Dagster UI")


def _registry_and_store():
    from earthsnap_assets.registry.client import RegistryClient
    from earthsnap_assets.resources.object_store import ObjectStore

    return RegistryClient(), ObjectStore()


@main.command("approve")
@click.argument("model")
@click.argument("version")
@click.option("--note", default="", help="why you approve (kept in the history)")
def approve_command(model: str, version: str, note: str) -> None:
    """Approve MODEL VERSION (tag approval=approved); the approval sensor deploys it."""
    from earthsnap_assets.deployment.approval import ApprovalError, RegistryUnavailable, approve

    try:
        decision = approve(*_registry_and_store(), model, version, note)
    except (ApprovalError, RegistryUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{model} v{version} approved by {decision['approved_by']} at {decision['approved_at']}")


@main.command("reject")
@click.argument("model")
@click.argument("version")
@click.option("--reason", required=True, help="why the version must not be deployed")
def reject_command(model: str, version: str, reason: str) -> None:
    """Reject MODEL VERSION (tag approval=rejected); it is never deployed."""
    from earthsnap_assets.deployment.approval import ApprovalError, RegistryUnavailable, reject

    try:
        decision = reject(*_registry_and_store(), model, version, reason)
    except (ApprovalError, RegistryUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{model} v{version} rejected by {decision['rejected_by']}: {reason}")


@main.command("rollback")
@click.argument("model")
def rollback_command(model: str) -> None:
    """Re-point MODEL's `production` alias to the version it served before."""
    from earthsnap_assets.deployment.approval import ApprovalError, RegistryUnavailable, rollback

    try:
        before, after = rollback(*_registry_and_store(), model)
    except (ApprovalError, RegistryUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{model}: production moved from v{before} back to v{after}")


@main.command("pending")
def pending_command() -> None:
    """Model versions waiting for a person: to approve, to approve again after a failed deploy, or refused."""
    from earthsnap_assets.deployment.approval import ApprovalError, RegistryUnavailable, pending

    try:
        waiting = pending(_registry_and_store()[0])
    except (ApprovalError, RegistryUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    if not waiting:
        click.echo("nothing waits for approval")
        return
    click.echo(f"{'MODEL':<32} {'VERSION':>7}  {'APPROVAL':<13} {'GATE':<6} {'TEST ACC':>8} {'PRODUCTION':>10}  WHY")
    for w in waiting:
        accuracy = w.test_accuracy[:8]
        click.echo(
            f"{w.model:<32} {w.version:>7}  {w.approval:<13} {w.gate:<6} {accuracy:>8} {w.production:>10}  {w.why}"
        )
    click.echo("approve: `earthsnap approve MODEL VERSION` or tag approval=approved in the MLflow UI")


@main.command("history")
@click.argument("model")
def history_command(model: str) -> None:
    """Deployment history of MODEL: approvals, staging, stage tests, production, rollbacks."""
    from earthsnap_assets.deployment.history import events, history_table

    registry, store = _registry_and_store()
    rows = history_table(events(store, store.lake_bucket, model))
    current = {alias: registry.alias_version(model, alias) for alias in ("staging", "production")}
    click.echo(f"{model}: staging -> v{current['staging'] or '-'}, production -> v{current['production'] or '-'}")
    if not rows:
        click.echo("  no deployment events yet")
    for when, version, action, by, detail in rows:
        click.echo(f"  {when}  v{version:<4} {action:<13} by {by:<12} {detail}")


def _demo_approve_and_deploy(timeout: float = 900.0) -> dict[str, str]:
    """DEMO ONLY: approve every gate-passed version, parent first, and wait for the sensor's deployments."""
    from earthsnap_assets.deployment.approval import approve

    registry, store = _registry_and_store()
    latest: dict[str, str] = {}
    for version in registry.search_versions(f"name LIKE '{names.DEFAULT_PREFIX}%'"):
        if int(version.version) > int(latest.get(version.name, "0")):
            latest[version.name] = str(version.version)
    deployed: dict[str, str] = {}
    children: dict[str, str] = {}
    for name, version in sorted(latest.items(), key=lambda kv: (kv[0] != names.PARENT, kv[0])):
        tags = registry.version_tags(name, version)
        if tags.get("gate") != "passed":
            click.echo(f"  {name} v{version}: gate {tags.get('gate')} ({tags.get('gate_reason')}): not approvable")
            continue
        approve(registry, store, name, version, note="earthsnap demo --auto-approve")
        click.echo(f"  approved {name} v{version}; the approval sensor will deploy it")
        if name == names.PARENT:  # children can only be staged next to a parent: wait for it first
            deployed |= _wait_production(registry, {name: version}, timeout)
        else:
            children[name] = version
    if names.PARENT in deployed:
        deployed |= _wait_production(registry, children, timeout)
    return deployed


def _wait_production(registry, wanted: dict[str, str], timeout: float) -> dict[str, str]:
    started = time.monotonic()
    done: dict[str, str] = {}
    while time.monotonic() - started < timeout:
        for name, version in wanted.items():
            deployed = registry.version_tags(name, version).get("deploy_status") == "production"
            if name not in done and deployed:  # set once the production endpoint serves it
                done[name] = version
                click.echo(f"  {name} v{version} is in production ({time.monotonic() - started:.0f} s)")
            elif name not in done and registry.version_tags(name, version).get("deploy_status") == "deploy_failed":
                done[name] = ""
                click.echo(f"  {name} v{version} failed its stage tests; production unchanged")
        if len(done) == len(wanted):
            break
        time.sleep(3)
    return {k: v for k, v in done.items() if v}


def _predict_sample(settings: Settings) -> Any:
    """Fresh photos of every species (never seen in training) through the production endpoint, scored."""
    from earthsnap_assets.demo import showcase
    from earthsnap_assets.deployment.stage_tests import post
    from earthsnap_assets.lake.taxonomy import parse_taxonomy
    from earthsnap_assets.serving.auth import client_token

    taxonomy = parse_taxonomy((settings.home / "demo-data" / "taxonomy.csv").read_text())
    url = f"{settings.endpoint_url('production')}/predict?top_k=3"
    token = client_token()  # EARTHSNAP_SERVE_TOKEN, for an endpoint started with tokens
    result = showcase.run(
        taxonomy.species_to_group, lambda data: post(url, data, content_type="image/jpeg", token=token)
    )
    for line in result.lines():
        click.echo(f"  {line}")
    return result


def _metadata(result: Any, asset: str) -> dict[str, Any]:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()} if events else {}


def _demo_monitoring_and_review(settings: Settings, showcase: Any) -> None:
    """App feedback on the showcase answers, then today's monitoring report and review queue, as jobs."""
    from datetime import UTC, datetime

    from earthsnap_assets.demo import production_tour

    production = settings.endpoint_url("production")
    verdicts = production_tour.send_feedback(production, showcase)
    click.echo(f"  app feedback on the showcase answers: {dict(verdicts)}")
    logs = production_tour.wait_logged(production)
    written = {name: log.get("written", 0) for name, log in logs.items()}
    click.echo(f"  in the lake's prediction log: {written} rows (pending {[v.get('pending') for v in logs.values()]})")
    day = datetime.now(UTC).date().isoformat()
    monitoring = _run_job("production_monitoring_daily", day)
    for line in production_tour.monitoring_lines(_metadata(monitoring, "production_monitoring")):
        click.echo(f"  monitoring {day}: {line}")
    queue = _run_job("review_queue_job", day)
    for line in production_tour.review_lines(_metadata(queue, "review_queue")):
        click.echo(f"  {line}")
    click.echo(
        f"  Label Studio: {settings.review_url} (user {settings.review_user}, password from EARTHSNAP_REVIEW_PASSWORD)"
    )


AUTOMATION_SENSORS = ("raw_change_sensor", "earthsnap_automation")


@contextlib.contextmanager
def _automation_paused(settings: Settings) -> Iterator[None]:
    """The demo drives the first build itself, step by step: change capture and automation wait meanwhile
    (otherwise they would build the same uploads a second time in the background), then resume."""
    from earthsnap_assets.api import set_sensor

    url = f"http://127.0.0.1:{settings.dagster_port}"
    for name in AUTOMATION_SENSORS:
        set_sensor(url, name, running=False)
    try:
        yield
    finally:
        for name in AUTOMATION_SENSORS:
            set_sensor(url, name, running=True)


def _assets_of(run) -> list[str]:
    return sorted(k.path[-1] for k in run.asset_selection or [])


def _demo_loop(settings: Settings, species: str, photos: int = 12, timeout: float = 420.0) -> None:
    """New photos of one species arrive; change capture and automation rebuild that group alone."""
    import io

    import dagster as dg
    import numpy as np

    from earthsnap_assets.demo.synthetic import render_image
    from earthsnap_assets.resources.object_store import ObjectStore

    store = ObjectStore()
    started, rng = time.time(), np.random.default_rng(int(time.time()))
    for i in range(photos):
        buffer = io.BytesIO()
        render_image(species, rng, (480, 360)).save(buffer, "JPEG", quality=90)
        store.write(store.raw_bucket, f"images/{species}/loop-{int(started)}-{i:02d}.jpg", buffer.getvalue())
    click.echo(f"  uploaded {photos} photos of {species}; waiting for the change sensor and automation ...")
    with dg.DagsterInstance.get() as instance:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = [r for r in instance.get_run_records(limit=50) if r.create_timestamp.timestamp() >= started]
            built = [r for r in records if "dataset_splits" in _assets_of(r.dagster_run)]
            if built and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in built):
                break
            time.sleep(5)
        for record in sorted(records, key=lambda r: r.create_timestamp):
            run = record.dagster_run
            partition = run.tags.get("dagster/partition", "-")
            click.echo(f"  run {run.run_id[:8]} [{partition}] {run.status.value:8s} {', '.join(_assets_of(run))}")
    if not built:
        click.echo(f"  (not done after {timeout:.0f} s: follow the runs in the Dagster UI)")


@main.command("demo")
@click.option("--images-per-species", default=120, show_default=True)
@click.option(
    "--auto-approve",
    is_flag=True,
    help="DEMO ONLY: approve gate-passed versions automatically. In production a person approves in MLflow.",
)
@click.option("--loop/--no-loop", default=True, show_default=True, help="end by uploading a few photos to one group")
@click.pass_context
def demo(ctx: click.Context, images_per_species: int, auto_approve: bool, loop: bool) -> None:
    """The whole story on a fresh machine: stack, data, training, approval, staging, production, a prediction."""
    from earthsnap_assets.stack import stack_up

    # DEMO ONLY: the endpoints keep every request photo (the default, `none`, keeps none: privacy), so the
    # review queue can show the photos users corrected; monitoring judges drift from 30 answers (default 100)
    os.environ.setdefault("EARTHSNAP_KEEP_PHOTOS", "all")
    os.environ.setdefault("EARTHSNAP_MONITOR_MIN_PREDICTIONS", "30")
    settings = _settings()
    _dagster_home(settings)
    started = time.monotonic()
    click.echo("== starting the local stack (SeaweedFS S3, MLflow, Dagster, Label Studio, staging + production)")
    for status in stack_up(settings, dagster=True, serving=True, review=True):
        click.echo(f"  {status.name:17s} {status.url}")
    with _automation_paused(settings):
        click.echo("== generating and ingesting demo data")
        ctx.invoke(demo_data, images_per_species=images_per_species)
        click.echo("== the data side: intake + QA per species group, global checks, manifests, shards, version, sample")
        ctx.invoke(prepare_data)
        click.echo("== tuning, training, evaluating and registering parent and child models")
        ctx.invoke(train_all)
    if auto_approve:
        click.echo("== approval: DEMO MODE approves automatically; in production a person sets approval=approved")
        click.echo("   in the MLflow UI or runs `earthsnap approve MODEL VERSION`")
        deployed = _demo_approve_and_deploy()
        if names.PARENT in deployed:
            click.echo("== predictions from the production endpoint on photos it never saw")
            showcase = _predict_sample(settings)
            click.echo("== production: app feedback, today's monitoring, photos queued for people in Label Studio")
            _demo_monitoring_and_review(settings, showcase)
    else:
        click.echo("== waiting for a person: approve versions with `earthsnap approve MODEL VERSION`")
    if loop:
        click.echo("== the loop: new photos of one species; Dagster rebuilds only that group (no command needed)")
        _demo_loop(settings, "coccinella-rotunda")
    click.echo(f"== done in {time.monotonic() - started:.0f} s")
    click.echo(f"  Dagster UI          : http://127.0.0.1:{settings.dagster_port}/asset-groups")
    click.echo(f"  MLflow UI           : {settings.mlflow_tracking_uri}/#/models")
    click.echo(f"  staging endpoint    : {settings.endpoint_url('staging')}/models")
    click.echo(f"  production endpoint : {settings.endpoint_url('production')}/models")
    click.echo(f"  S3 (lake)           : {settings.s3_endpoint}/{settings.lake_bucket}")
    click.echo(f"  Label Studio        : {settings.review_url} (reviewers label queued photos here)")
    click.echo("  stop everything with: .venv/bin/earthsnap stack down")


_mount_subcommands()
