"""Knobs of the serving endpoint, in one frozen value passed to `create_app` (nothing read at import)."""

from __future__ import annotations

from dataclasses import dataclass, field

from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.registry import names
from earthsnap_assets.serving.auth import AuthTokens

ENVIRONMENTS = names.ALIASES  # each one is served from the MLflow alias of the same name
KEEP_PHOTOS = ("none", "uncertain", "all")  # which request photos the endpoint keeps in the lake


@dataclass(frozen=True)
class ServeConfig:
    """How the endpoint finds its models, routes and batches forward passes, holds children, refuses bad uploads.

    `model_prefix` names the registered models (`<prefix>parent`, `<prefix>child-<group>`); tests use a
    unique prefix so they never touch the pipeline's own models on a shared MLflow.
    `routing` decides which children a photo costs (`ml/routing.py`). Children load on first use into a
    cache of at most `cache_max_children` networks and/or `cache_max_bytes` of weights (least recently used
    go first), so a replica's memory follows these settings, not the number of groups. Before a new
    deployment is swapped in, the children of `preload_groups` and of the `preload_most_requested` groups
    requested most so far are loaded, so an alias move does not turn hot groups cold.
    `rules` are data QA's per-image rules: a photo the training pipeline would reject for its format, its
    pixel count (decompression bombs) or its size is refused by the endpoint too.
    Every answer is logged to the lake (`log_predictions`; `serving/prediction_log.py`) in batches cut
    every `log_flush_interval_s` or `log_batch_rows` rows; what the lake refuses waits in a local spool under
    `spool_dir` (None: `$EARTHSNAP_HOME/spool`). Request photos are kept only if `keep_photos` says so
    (privacy: off by default): `uncertain` keeps those whose answer backed off to the group level or whose
    probability is below `confidence_threshold` (what the review queue needs), `all` keeps every one.
    `/feedback` checks species against the lake's taxonomy, re-read every `taxonomy_refresh_s`, and derives
    the verdict for the last `recent_answers` requests this replica answered.
    Hostile clients (README "Bad input gets a 4xx"): a body must arrive whole within `body_timeout_s` of the
    first read (else 408), so a stalled or trickled upload cannot hold a worker; request headers larger
    than `max_header_bytes` are refused by uvicorn's h11 parser (400, connection closed; `server_options`).
    An image whose decoding would cost more than `max_decode_bytes` (its pixels times the measured peak
    bytes per pixel of its mode, from the header: `inputs.decode_cost`) is refused with 413 before decoding;
    the default, 512 MiB, refuses a 6300x6300 16-bit PNG (~1.1 GB) and passes any JPEG within QA's pixel
    limit (decoded at reduced scale) and 8-bit RGB PNGs up to ~50 MP. At most `max_concurrent_decodes`
    photos decode at once (memory follows this bound, ~2 GiB by default, not the number of connections);
    a request that waits more than `decode_queue_timeout_s` for a slot gets 503 with Retry-After.
    `auth_tokens` (empty: auth off) are the bearer tokens, as sha256 digests, that every route but `/health`
    and `/ready` requires (`serving/auth.py`); without one a request gets 401 before its body is read.
    """

    model_prefix: str = names.DEFAULT_PREFIX
    poll_interval_s: float = 2.0  # how often the alias versions are checked for a move
    retry_failed_s: float = 60.0  # a set of versions that failed to load is tried again only after this
    release_key: str | None = field(default=None, repr=False)  # EARTHSNAP_RELEASE_KEY: signed releases only
    recheck_refused_s: float = 10.0  # an alias refused as not released (`registry/release.py`) is read again after
    max_batch: int = 16  # most items in one forward pass
    max_wait_ms: float = 5.0  # longest an item waits for companions (only while other requests are decoding)
    max_bytes: int = 10 * 1024 * 1024  # largest accepted request body
    confidence_threshold: float = 0.5  # child's top P(species | group) below this -> answer at group level
    default_top_k: int = 5
    max_top_k: int = 100
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    cache_max_children: int | None = 128  # ~2 MB each for the demo's networks; see README "Children on demand"
    cache_max_bytes: int | None = None
    preload_groups: tuple[str, ...] = ()
    preload_most_requested: int = 8
    rules: QualityRules = field(default_factory=QualityRules)
    log_predictions: bool = True
    log_flush_interval_s: float = 5.0
    log_batch_rows: int = 5000
    spool_dir: str | None = None
    keep_photos: str = "none"
    taxonomy_refresh_s: float = 300.0
    recent_answers: int = 100_000
    body_timeout_s: float = 15.0  # whole body, from the first read: a slow-loris trickle gets 408
    max_header_bytes: int = 16 * 1024  # request line + headers (uvicorn's h11 limit)
    max_decode_bytes: int = 512 * 1024 * 1024  # estimated peak memory of decoding one photo
    max_concurrent_decodes: int = 4
    decode_queue_timeout_s: float = 10.0  # longest wait for a decode slot before 503
    auth_tokens: AuthTokens = field(default_factory=AuthTokens)  # digests only; empty = no auth

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.max_wait_ms < 0 or self.poll_interval_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and poll_interval_s > 0")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError("confidence_threshold must be within [0, 1]")
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ValueError("default_top_k must be within [1, max_top_k]")
        if self.cache_max_children is not None and self.cache_max_children < 1:
            raise ValueError("cache_max_children must be at least 1 (or None)")
        if self.cache_max_bytes is not None and self.cache_max_bytes < 1:
            raise ValueError("cache_max_bytes must be positive (or None)")
        if self.preload_most_requested < 0:
            raise ValueError("preload_most_requested must be >= 0")
        if self.keep_photos not in KEEP_PHOTOS:
            raise ValueError(f"keep_photos must be one of {list(KEEP_PHOTOS)}, got {self.keep_photos!r}")
        if self.keep_photos != "none" and not self.log_predictions:
            raise ValueError("keep_photos needs log_predictions: a kept photo is found through its log row")
        if self.log_flush_interval_s <= 0 or self.log_batch_rows < 1 or self.taxonomy_refresh_s <= 0:
            raise ValueError("log_flush_interval_s and taxonomy_refresh_s must be > 0, log_batch_rows >= 1")
        if self.recent_answers < 0:
            raise ValueError("recent_answers must be >= 0")
        if self.body_timeout_s <= 0 or self.decode_queue_timeout_s <= 0:
            raise ValueError("body_timeout_s and decode_queue_timeout_s must be > 0")
        if self.max_header_bytes < 1024 or self.max_decode_bytes < 1 or self.max_concurrent_decodes < 1:
            raise ValueError("max_header_bytes must be >= 1024, max_decode_bytes and max_concurrent_decodes >= 1")
        if not isinstance(self.auth_tokens, AuthTokens):
            raise ValueError("auth_tokens must be an AuthTokens (digests), not the tokens themselves")

    def server_options(self) -> dict[str, object]:
        """uvicorn options enforcing `max_header_bytes`: the h11 parser (httptools has no header limit)."""
        return {"http": "h11", "h11_max_incomplete_event_size": self.max_header_bytes}

    @property
    def parent_name(self) -> str:
        return names.parent_name(self.model_prefix)

    def child_name(self, group: str) -> str:
        return names.child_name(group, self.model_prefix)


def alias_for(env: str) -> str:
    """The registry alias an environment serves; refuses unknown environments early, with the choices."""
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}; expected one of {list(ENVIRONMENTS)}")
    return env
