"""The endpoint's side of the production loop: the lake it logs to, its prediction and feedback writers.

Built at app startup (lifespan), never at import: building it reads the environment and opens the spool.
Nothing here contacts the lake synchronously, so a lake that is down at startup does not stop the endpoint
from serving: the writers spool, the taxonomy falls back to the deployed models' species.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.s3 import S3Blobs
from earthsnap_assets.lake.storage import Blobs
from earthsnap_assets.monitoring.records import FEEDBACK_SCHEMA, PREDICTION_SCHEMA
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.deployment import Deployment
from earthsnap_assets.serving.feedback import TaxonomySource
from earthsnap_assets.serving.inputs import Prepared
from earthsnap_assets.serving.models import Prediction
from earthsnap_assets.serving.prediction_log import LogWriter, Spool, replica_name
from earthsnap_assets.settings import Settings

log = logging.getLogger(__name__)

RECENT_PHOTOS = 10_000  # kept photo keys remembered, so a photo sent again is not uploaded again


@dataclass(frozen=True)
class Lake:
    """Where the logs go: a `Blobs` and the lake bucket."""

    blobs: Blobs
    bucket: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        return cls(S3Blobs.from_settings(settings), settings.lake_bucket)


class ProductionLog:
    """One replica's prediction log (optional), feedback log and taxonomy, sharing one spool."""

    def __init__(self, env: str, config: ServeConfig, lake: Lake, deployment: Deployment) -> None:
        self.env, self.config, self.deployment = env, config, deployment
        self.replica = replica_name()
        root = Path(config.spool_dir) if config.spool_dir else Settings.from_env().home / "spool"
        self.spool = Spool(root, env, self.replica)
        options: dict[str, Any] = {
            "flush_interval_s": config.log_flush_interval_s,
            "batch_rows": config.log_batch_rows,
            "max_pending": max(50_000, config.log_batch_rows),
        }
        self.predictions = (
            LogWriter(
                lake.blobs,
                lake.bucket,
                PREDICTION_SCHEMA,
                paths.predictions_batch,
                env,
                self.replica,
                self.spool,
                object_folders=("photos",),
                **options,
            )
            if config.log_predictions
            else None
        )
        self.feedback = LogWriter(
            lake.blobs, lake.bucket, FEEDBACK_SCHEMA, paths.feedback_batch, env, self.replica, self.spool, **options
        )
        self.taxonomy = TaxonomySource(lake.blobs, lake.bucket, config.taxonomy_refresh_s, self._deployed_species)
        self._deployed: tuple[object, Mapping[str, str]] | None = None
        self._kept: OrderedDict[str, None] = OrderedDict()
        self._kept_lock = threading.Lock()

    def start(self) -> None:
        for writer in (self.predictions, self.feedback):
            if writer is not None:
                writer.start()
        self.taxonomy.start()

    def close(self, timeout: float = 30.0) -> None:
        """Flush both logs (what the lake refuses stays in the spool for the next start)."""
        self.taxonomy.stop()
        for writer in (self.predictions, self.feedback):
            if writer is not None:
                writer.close(timeout)
        self.spool.close()

    def stats(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "prediction_log": self.predictions.stats() if self.predictions is not None else None,
            "feedback_log": self.feedback.stats(),
            "taxonomy": self.taxonomy.as_dict(),
        }

    def keeps_photo(self, answer: Mapping[str, Any]) -> bool:
        """The privacy switch: `all`, or `uncertain` = backed off to the group or below the threshold."""
        keep = self.config.keep_photos
        uncertain = answer["level"] == "group" or answer["probability"] < self.config.confidence_threshold
        return keep == "all" or (keep == "uncertain" and uncertain)

    def record_prediction(
        self,
        request_id: str,
        answered_at: datetime,
        latency_ms: float,
        prediction: Prediction,
        answer: Mapping[str, Any],
        upload: Prepared,
        data: bytes,
        traffic: str = "app",
    ) -> None:
        """One PREDICTION_SCHEMA row (and the photo, where kept: app traffic only); hands over and returns at once."""
        writer = self.predictions
        if writer is None:
            return
        photo_key = None
        if traffic == "app" and self.keeps_photo(answer):
            photo_key = paths.request_photo(self.env, answered_at.date().isoformat(), upload.sha256)
            if self._first_time(photo_key):
                writer.put(photo_key, data)
        children = prediction.bundle.children
        writer.record(
            {
                "request_id": request_id,
                "ts": answered_at,
                "env": self.env,
                "replica": self.replica,
                "model_versions": answer["model_versions"],
                "dataset_version": prediction.bundle.dataset_version,
                "level": answer["level"],
                "species": answer["species"],
                "group": answer["group"],
                "probability": answer["probability"],
                "top_k": answer["top_k"],
                "routed_groups": [g["group"] for g in answer["groups_evaluated"] if g["group"] in children],
                "unexpanded_mass": answer["unexpanded_mass"],
                "latency_ms": latency_ms,
                "image_sha256": upload.sha256,
                "image_bytes": len(data),
                "width": upload.width,
                "height": upload.height,
                "brightness": upload.brightness,
                "photo_key": photo_key,
                "traffic": traffic,
            }
        )

    def _first_time(self, key: str) -> bool:
        """Whether `key` was not kept recently (the same photo, the same day: same key, same bytes)."""
        with self._kept_lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return False
            self._kept[key] = None
            if len(self._kept) > RECENT_PHOTOS:
                self._kept.popitem(last=False)
            return True

    def record_feedback(self, record: dict[str, Any]) -> None:
        self.feedback.record(record)

    def _deployed_species(self) -> Mapping[str, str] | None:
        """species -> group of the deployed bundle (built once per bundle): the taxonomy's fallback."""
        bundle = self.deployment.current
        if bundle is None:
            return None
        if self._deployed is None or self._deployed[0] is not bundle:
            self._deployed = (bundle, bundle.hierarchy.group_of())
        return self._deployed[1]
