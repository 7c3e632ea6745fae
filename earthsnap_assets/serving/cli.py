"""`earthsnap serve --env staging|production`: the endpoint under uvicorn (mounted by the main CLI)."""

from __future__ import annotations

import logging
import os

import click

from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.registry import release
from earthsnap_assets.serving.auth import TOKENS_ENV, AuthTokens
from earthsnap_assets.serving.config import ENVIRONMENTS, KEEP_PHOTOS, ServeConfig

DEFAULTS = ServeConfig()
ROUTING = DEFAULTS.routing


@click.command("serve")
@click.option("--env", "env", type=click.Choice(ENVIRONMENTS), required=True, help="alias to serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", default=None, type=click.IntRange(0, 65535), help="default: EARTHSNAP_STAGING_PORT / _PRODUCTION_PORT"
)
@click.option("--model-prefix", default=DEFAULTS.model_prefix, show_default=True, help="registered model names")
@click.option("--poll-interval", default=DEFAULTS.poll_interval_s, show_default=True, help="seconds between checks")
@click.option("--confidence-threshold", default=DEFAULTS.confidence_threshold, show_default=True, type=float)
@click.option("--max-bytes", default=DEFAULTS.max_bytes, show_default=True, help="largest accepted upload")
@click.option("--max-batch", default=DEFAULTS.max_batch, show_default=True)
@click.option("--max-wait-ms", default=DEFAULTS.max_wait_ms, show_default=True, type=float)
@click.option("--route-min-groups", default=ROUTING.min_groups, show_default=True, help="groups a photo always expands")
@click.option("--route-mass", default=ROUTING.mass, show_default=True, help="expand until P(groups) reaches this")
@click.option("--route-max-groups", default=ROUTING.max_groups, show_default=True, help="most groups a photo expands")
@click.option("--cache-max-children", default=DEFAULTS.cache_max_children, show_default=True, type=int)
@click.option("--cache-max-bytes", default=None, type=int, help="bound on loaded children's weights (bytes)")
@click.option("--preload-group", "preload_groups", multiple=True, help="load this group's child before serving")
@click.option("--preload-most-requested", default=DEFAULTS.preload_most_requested, show_default=True)
@click.option(
    "--log-predictions/--no-log-predictions",
    default=DEFAULTS.log_predictions,
    show_default=True,
    help="log every answer to the lake (predictions/<env>/day=...)",
)
@click.option("--log-flush-interval", default=DEFAULTS.log_flush_interval_s, show_default=True, help="seconds")
@click.option("--log-batch-rows", default=DEFAULTS.log_batch_rows, show_default=True, help="rows per log batch at most")
@click.option("--spool-dir", default=None, help="where logs wait while the lake is down [$EARTHSNAP_HOME/spool]")
@click.option(
    "--keep-photos",
    default=DEFAULTS.keep_photos,
    envvar="EARTHSNAP_KEEP_PHOTOS",
    show_default=True,
    type=click.Choice(KEEP_PHOTOS),
    help="request photos kept in the lake (privacy); uncertain = group-level or below the threshold",
)
@click.option("--taxonomy-refresh", default=DEFAULTS.taxonomy_refresh_s, show_default=True, help="seconds")
@click.option("--body-timeout", default=DEFAULTS.body_timeout_s, show_default=True, help="seconds for a whole body")
@click.option("--max-header-bytes", default=DEFAULTS.max_header_bytes, show_default=True, help="request headers")
@click.option("--max-decode-bytes", default=DEFAULTS.max_decode_bytes, show_default=True, help="est. memory per decode")
@click.option("--max-concurrent-decodes", default=DEFAULTS.max_concurrent_decodes, show_default=True)
@click.option("--decode-queue-timeout", default=DEFAULTS.decode_queue_timeout_s, show_default=True, help="then 503")
@click.option(
    "--auth-token-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help=f"bearer tokens, one a line, all but /health and /ready need one (with {TOKENS_ENV}, comma-separated)",
)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="one log line per request")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"]))
def serve(
    env: str,
    host: str,
    port: int | None,
    model_prefix: str,
    poll_interval: float,
    confidence_threshold: float,
    max_bytes: int,
    max_batch: int,
    max_wait_ms: float,
    route_min_groups: int,
    route_mass: float,
    route_max_groups: int,
    cache_max_children: int,
    cache_max_bytes: int | None,
    preload_groups: tuple[str, ...],
    preload_most_requested: int,
    log_predictions: bool,
    log_flush_interval: float,
    log_batch_rows: int,
    spool_dir: str | None,
    keep_photos: str,
    taxonomy_refresh: float,
    body_timeout: float,
    max_header_bytes: int,
    max_decode_bytes: int,
    max_concurrent_decodes: int,
    decode_queue_timeout: float,
    auth_token_file: str | None,
    access_log: bool,
    log_level: str,
) -> None:
    """Serve the hierarchical classifier that the `env` alias points to; follows the alias when it moves."""
    import uvicorn

    from earthsnap_assets.serving.app import create_app

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a server logs, it has no terminal
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        auth_tokens = AuthTokens.load(auth_token_file)  # and EARTHSNAP_SERVE_TOKENS; neither: auth off
        config = ServeConfig(
            model_prefix=model_prefix,
            poll_interval_s=poll_interval,
            confidence_threshold=confidence_threshold,
            max_bytes=max_bytes,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            routing=RoutingConfig(min_groups=route_min_groups, mass=route_mass, max_groups=route_max_groups),
            cache_max_children=cache_max_children,
            cache_max_bytes=cache_max_bytes,
            preload_groups=tuple(preload_groups),
            preload_most_requested=preload_most_requested,
            log_predictions=log_predictions,
            log_flush_interval_s=log_flush_interval,
            log_batch_rows=log_batch_rows,
            spool_dir=spool_dir,
            keep_photos=keep_photos,
            taxonomy_refresh_s=taxonomy_refresh,
            body_timeout_s=body_timeout,
            max_header_bytes=max_header_bytes,
            max_decode_bytes=max_decode_bytes,
            max_concurrent_decodes=max_concurrent_decodes,
            decode_queue_timeout_s=decode_queue_timeout,
            auth_tokens=auth_tokens,
            release_key=release.release_key(),  # EARTHSNAP_RELEASE_KEY: serve only releases the deploy job signed
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    logging.getLogger(__name__).info("endpoint auth: %s (%s)", auth_tokens.mode, auth_tokens)
    signed = "signed by the deploy job" if config.release_key else "tags only (EARTHSNAP_RELEASE_KEY unset)"
    logging.getLogger(__name__).info("releases served: %s", signed)
    app = create_app(env, config=config)
    if port is None:
        from earthsnap_assets.settings import Settings

        port = Settings.from_env().endpoint_port(env)
    options: dict = config.server_options()  # h11 with the header size limit
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, workers=1, **options)
