"""The prediction log's writer against an in-memory lake that fails, hangs and recovers (no stack needed)."""

from __future__ import annotations

import io
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.monitoring.records import FEEDBACK_SCHEMA, PREDICTION_SCHEMA
from earthsnap_assets.serving.prediction_log import LogWriter, Spool
from earthsnap_assets_tests.polling import wait_until

BUCKET = "lake"
ENV = "staging"
NOON = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def row(ts: datetime = NOON, **overrides: Any) -> dict[str, Any]:
    """A complete PREDICTION_SCHEMA row with a fresh request id."""
    values = {
        "request_id": uuid.uuid4().hex,
        "ts": ts,
        "env": ENV,
        "replica": "test-1",
        "model_versions": {"parent": "1"},
        "dataset_version": "dv-test",
        "level": "species",
        "species": "rose",
        "group": "flowers",
        "probability": 0.9,
        "top_k": [{"species": "rose", "group": "flowers", "probability": 0.9}],
        "routed_groups": ["flowers"],
        "unexpanded_mass": 0.01,
        "latency_ms": 3.5,
        "image_sha256": "0" * 64,
        "image_bytes": 1234,
        "width": 96,
        "height": 80,
        "brightness": 0.5,
        "photo_key": None,
    }
    return values | overrides


class FlakyBlobs(MemoryBlobs):
    """A lake whose writes fail while `down` is set and block while `hold` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.hold = threading.Event()
        self.hold.set()
        self.attempts = 0

    def write(self, bucket: str, key: str, data: bytes) -> None:
        self.attempts += 1
        self.hold.wait()
        if self.down:
            raise ConnectionError("lake unreachable")
        super().write(bucket, key, data)


def writer(lake: MemoryBlobs, spool: Spool, replica: str = "test-1", **options: Any) -> LogWriter:
    settings = {"flush_interval_s": 0.05, "batch_rows": 20, "retry_initial_s": 0.01, "retry_max_s": 0.05}
    return LogWriter(
        lake, BUCKET, PREDICTION_SCHEMA, paths.predictions_batch, ENV, replica, spool, **(settings | options)
    )


def lake_ids(lake: MemoryBlobs, prefix: str = "predictions/") -> Counter:
    """request_id -> how many rows of the lake hold it."""
    found: Counter = Counter()
    for key in lake.list_keys(BUCKET, prefix):
        table = pq.read_table(io.BytesIO(lake.objects[(BUCKET, key)]))
        assert table.schema.equals(PREDICTION_SCHEMA if prefix.startswith("predictions") else FEEDBACK_SCHEMA)
        found.update(table.column("request_id").to_pylist())
    return found


def test_rows_land_once_in_batches_named_by_the_contract(tmp_path: Path) -> None:
    lake = MemoryBlobs()
    log = writer(lake, Spool(tmp_path, ENV, "test-1"))
    log.start()
    rows = [row() for _ in range(55)]
    for r in rows:
        log.record(r)
    log.close()
    assert lake_ids(lake) == Counter(r["request_id"] for r in rows)
    for key in lake.list_keys(BUCKET, ""):
        assert key.startswith(paths.predictions_prefix(ENV, "2026-03-01") + "120000-test-1-")
    stats = log.stats()
    assert (stats["written"], stats["pending"], stats["spooled"], stats["last_error"]) == (55, 0, 0, None)


def test_an_outage_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    lake = FlakyBlobs()
    log = writer(lake, Spool(tmp_path, ENV, "test-1"))
    log.start()
    rows = [row() for _ in range(300)]
    for r in rows[:100]:
        log.record(r)
    wait_until(lambda: log.stats()["written"] == 100, 20)
    lake.down = True
    for r in rows[100:200]:
        log.record(r)
    wait_until(lambda: log.stats()["pending_in_spool"] == 100, 20)  # nothing written while down
    assert not log.stats()["lake_up"] and "unreachable" in log.stats()["last_error"]
    lake.down = False
    for r in rows[200:]:
        log.record(r)
    log.close()
    assert lake_ids(lake) == Counter(r["request_id"] for r in rows)  # each exactly once
    assert log.stats()["pending"] == 0 and log.stats()["spool_files"] == 0
    assert list(tmp_path.rglob("*.parquet")) == []


def test_close_while_the_lake_is_down_spools_and_the_next_process_uploads(tmp_path: Path) -> None:
    lake = FlakyBlobs()
    lake.down = True
    first_spool = Spool(tmp_path, ENV, "host-1")
    first = writer(lake, first_spool, replica="host-1")
    first.start()
    rows = [row() for _ in range(50)]
    for r in rows:
        first.record(r)
    first.close()
    assert lake.objects == {} and first.stats()["pending_in_spool"] == 50
    first_spool.close()  # the process ends (or dies: the kernel releases its lock the same way)
    lake.down = False
    second_spool = Spool(tmp_path, ENV, "host-2")
    assert second_spool.adopted > 0 and not (tmp_path / f"{ENV}-host-1").exists()
    second = writer(lake, second_spool, replica="host-2")
    assert second.stats()["pending_in_spool"] == 50
    second.start()
    second.close()
    assert lake_ids(lake) == Counter(r["request_id"] for r in rows)
    assert all("-host-1-" in key for key in lake.list_keys(BUCKET, ""))  # named by the replica that answered


def test_a_crashed_process_spool_is_flushed_by_the_next_one(tmp_path: Path) -> None:
    lake = FlakyBlobs()
    lake.down = True
    crashed_spool = Spool(tmp_path, ENV, "host-1")
    crashed = writer(lake, crashed_spool, replica="host-1")
    crashed.start()
    rows = [row() for _ in range(40)]
    for r in rows:
        crashed.record(r)
    wait_until(lambda: crashed.stats()["pending_in_spool"] == 40, 20)
    (crashed_spool.dir / "predictions" / ".half-written.parquet.tmp").write_bytes(b"PAR1 trunc")  # a crash mid-write
    with pytest.raises(RuntimeError, match="locked"):
        Spool(tmp_path, ENV, "host-1")  # a live owner's spool is never taken
    crashed_spool.close()  # the crash: never closed, its lock released by the kernel
    lake.down = False
    lake_after = writer(lake, Spool(tmp_path, ENV, "host-2"), replica="host-2")
    lake_after.start()
    lake_after.close()
    assert lake_ids(lake) == Counter(r["request_id"] for r in rows)
    assert not [k for k in lake.list_keys(BUCKET, "") if "half-written" in k]


def test_a_hanging_lake_fills_the_queue_and_the_rest_goes_to_the_spool(tmp_path: Path) -> None:
    lake = FlakyBlobs()
    lake.hold.clear()  # every write blocks: a lake that hangs rather than refuses
    log = writer(lake, Spool(tmp_path, ENV, "test-1"), max_queued=1, batch_rows=10, max_pending=10)
    log.start()
    rows = [row() for _ in range(100)]
    for r in rows:
        log.record(r)
    wait_until(lambda: log.stats()["spooled"] >= 80, 20)  # one batch in flight, one queued, the rest spooled
    assert len(list(tmp_path.rglob("*.parquet"))) == log.stats()["spool_files"] >= 8
    lake.hold.set()
    log.close()
    assert lake_ids(lake) == Counter(r["request_id"] for r in rows)


def test_rows_over_max_pending_spill_to_the_spool(tmp_path: Path) -> None:
    lake = MemoryBlobs()
    log = writer(lake, Spool(tmp_path, ENV, "test-1"), batch_rows=10, max_pending=30)
    rows = [row() for _ in range(75)]
    for r in rows:  # not started: nothing drains the buffer, as when the flusher falls behind
        log.record(r)
    assert log.stats()["pending"] == 75
    log.start()
    wait_until(lambda: log.stats()["spooled"] == 60, 20)  # two full buffers of 30 went to the spool
    log.close()
    assert lake_ids(lake) == Counter(r["request_id"] for r in rows)


def test_batches_split_by_utc_day(tmp_path: Path) -> None:
    lake = MemoryBlobs()
    log = writer(lake, Spool(tmp_path, ENV, "test-1"), batch_rows=100)
    late = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    paris = datetime(2026, 3, 2, 0, 30, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    rows = [row(late), row(late + timedelta(seconds=2)), row(paris)]
    for r in rows:
        log.record(r)
    log.close()
    first = lake_ids(lake, paths.predictions_prefix(ENV, "2026-03-01"))
    second = lake_ids(lake, paths.predictions_prefix(ENV, "2026-03-02"))
    assert first == Counter([rows[0]["request_id"]]) and second == Counter(r["request_id"] for r in rows[1:])
    assert [k.rsplit("/", 1)[1][:6] for k in lake.list_keys(BUCKET, "")] == ["235959", "000001"]


def test_a_row_that_does_not_fit_the_schema_does_not_sink_its_batch(tmp_path: Path) -> None:
    lake = MemoryBlobs()
    log = writer(lake, Spool(tmp_path, ENV, "test-1"))
    good = [row() for _ in range(5)]
    for r in [*good[:2], row(width="wide"), *good[2:]]:
        log.record(r)
    log.close()
    assert lake_ids(lake) == Counter(r["request_id"] for r in good)
    assert log.stats()["rejected"] == 1


def test_kept_objects_take_the_same_path_and_the_feedback_log_the_same_class(tmp_path: Path) -> None:
    lake = FlakyBlobs()
    lake.down = True
    spool = Spool(tmp_path, ENV, "test-1")
    predictions = writer(lake, spool, object_folders=("photos",))
    feedback = LogWriter(
        lake, BUCKET, FEEDBACK_SCHEMA, paths.feedback_batch, ENV, "test-1", spool, flush_interval_s=0.05
    )
    predictions.start()
    feedback.start()
    key = paths.request_photo(ENV, "2026-03-01", "a" * 64)
    predictions.put(key, b"jpeg bytes")
    verdict = {"request_id": uuid.uuid4().hex, "ts": NOON, "env": ENV, "replica": "test-1"}
    feedback.record(verdict | {"verdict": "corrected", "species": "tulip", "group": "flowers"})
    wait_until(lambda: predictions.stats()["objects_spooled"] == 1 and feedback.stats()["spooled"] == 1, 20)
    lake.down = False
    predictions.close()
    feedback.close()
    assert lake.objects[(BUCKET, key)] == b"jpeg bytes"
    assert lake_ids(lake, "feedback/") == Counter([verdict["request_id"]])
    assert predictions.stats()["objects_written"] == 1 and feedback.stats()["written"] == 1


def test_photos_are_kept_only_with_a_log_and_a_known_switch() -> None:
    from earthsnap_assets.serving.config import ServeConfig

    assert ServeConfig().keep_photos == "none" and ServeConfig().log_predictions  # privacy: off by default
    with pytest.raises(ValueError, match="keep_photos must be one of"):
        ServeConfig(keep_photos="some")
    with pytest.raises(ValueError, match="needs log_predictions"):
        ServeConfig(keep_photos="all", log_predictions=False)
