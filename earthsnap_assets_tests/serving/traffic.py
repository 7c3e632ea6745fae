"""Client traffic against a real endpoint, and the prediction-log rows it left in the lake (outage tests)."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pyarrow.parquet as pq
import requests

from earthsnap_assets.lake.s3 import S3Blobs
from earthsnap_assets.settings import Settings
from earthsnap_assets_tests.serving.helpers import BLUE, GREEN, RED, photo

PHOTOS = [photo(GREEN), photo(BLUE), photo(RED), photo((40, 200, 60), size=(120, 90)), photo((30, 40, 210))]


class Traffic:
    """Client threads posting photos until stopped; every answer's request id and every failure kept."""

    def __init__(self, url: str, threads: int = 6) -> None:
        self.url = url
        self.answered: list[str] = []
        self.kept_photo: list[str] = []  # request ids answered at the group level (their photo is kept)
        self.failures: list[str] = []
        self.connection_errors: list[str] = []  # refused or reset connections: kept apart from HTTP answers
        self.answered_at: dict[str, float] = {}  # request id -> when its answer arrived (monotonic)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def count(self) -> int:
        with self.lock:
            return len(self.answered)

    def _run(self, index: int) -> None:
        session = requests.Session()
        sent = index
        while not self.stop.is_set():
            data = PHOTOS[sent % len(PHOTOS)]
            sent += 1
            try:
                response = session.post(f"{self.url}/predict", data=data, timeout=30)
                body = response.json()
            except requests.ConnectionError as exc:  # nothing listening (a replica being restarted)
                with self.lock:
                    self.connection_errors.append(f"{type(exc).__name__}: {exc}")
                self.stop.wait(0.05)
                continue
            except (requests.RequestException, ValueError) as exc:
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self.lock:
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {body}")
                    continue
                self.answered.append(body["request_id"])
                self.answered_at[body["request_id"]] = time.monotonic()
                if body["level"] == "group":
                    self.kept_photo.append(body["request_id"])
            self.stop.wait(0.01)  # a few hundred requests per phase, not thousands


def lake_rows(settings: Settings, env: str, bucket: str | None = None) -> list[dict[str, Any]]:
    """Every prediction-log row of `env` in the lake of `settings` (or another `bucket` on its S3)."""
    blobs = S3Blobs.from_settings(settings)
    bucket = bucket or settings.lake_bucket
    rows = []
    for key in blobs.list_keys(bucket, f"predictions/{env}/"):
        rows += pq.read_table(io.BytesIO(blobs.read(bucket, key))).to_pylist()
    return rows
