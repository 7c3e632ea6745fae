"""Change capture at bucket scale: does a sensor tick cost more when the bucket holds more objects?

Starts its own stack (SeaweedFS, MLflow, and with --latency `dagster dev`) on free ports in a temporary
home, and prints one JSON object on stdout (progress on stderr):

  tick_seconds      `raw_change_sensor`'s work (`lake.capture.capture` on the real filer subscription) for a
                    batch of 100 new photos, with 10^3 and with 10^5 objects already in the bucket (median of
                    5 ticks each); the target is no growth, since a tick never lists the bucket
  events_to_run_s   with --latency: from the upload of 10 photos of one group to the start of the automation
                    run of that group's intake in the real daemon (sensor interval 15 s, automation 30 s)

    .venv/bin/python bench/capture.py                 # ~4 min on 2 cores (10^5 small PUTs)
    .venv/bin/python bench/capture.py --latency       # + dagster dev, ~3 min more
    .venv/bin/python bench/capture.py --large 20000   # a quicker, smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import dagster_dev, stack_down, stack_up
from earthsnap_assets.stack.ports import free_stack_env


def log(message: str) -> None:
    print(f"[capture {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fill(store, count: int, start: int) -> None:
    """`count` tiny objects under one species folder of a group: what the bucket holds, not what is new."""
    with ThreadPoolExecutor(32) as pool:
        list(
            pool.map(
                lambda i: store.write(store.raw_bucket, f"images/oak/{i:07d}.jpg", b"x"), range(start, start + count)
            )
        )


def _source(store):
    from earthsnap_assets.resources.raw_events import RawEvents

    return RawEvents().source(store.raw_bucket)


def drain(store, cursor: str | None) -> str | None:
    """Capture until the subscription has nothing older than now (a first call only starts watching)."""
    from earthsnap_assets.lake.capture import capture

    source = _source(store)
    while True:
        result = capture(source, store, store.lake_bucket, cursor, max_events=10_000, timeout_s=60)
        if cursor is not None and result.exhausted:
            return result.cursor
        cursor = result.cursor


def ticks(store, cursor: str | None, rounds: int = 5, batch: int = 100) -> tuple[list[float], str | None]:
    """`rounds` ticks, each after `batch` new photos: the tick's seconds (the bucket's size must not matter)."""
    from earthsnap_assets.lake.capture import capture

    source = _source(store)
    seconds = []
    for r in range(rounds):
        for i in range(batch):
            store.write(store.raw_bucket, f"images/birch/tick-{r}-{i:03d}.jpg", b"y")
        started = time.perf_counter()
        result = capture(source, store, store.lake_bucket, cursor, max_events=10_000, timeout_s=60)
        seconds.append(time.perf_counter() - started)
        assert result.events >= batch, f"a tick saw {result.events} of {batch} new events"
        cursor = result.cursor
    return seconds, cursor


def latency(settings: Settings, store) -> float:
    """Upload -> the automation run of the touched group's intake exists (created by the daemon)."""
    import dagster as dg

    from earthsnap_assets.api import trigger, wait

    url = f"http://127.0.0.1:{settings.dagster_port}"
    run = trigger(url, "taxonomy_update")
    assert wait(url, run, timeout=300) == "SUCCESS"
    with dg.DagsterInstance.from_config(str(dagster_dev.dagster_home(settings))) as instance:
        # the new taxonomy makes automation take in both groups first: wait until that is done
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = instance.get_runs(limit=50)
            if runs and all(r.is_finished for r in runs) and any(r.run_id != run for r in runs):
                break
            time.sleep(2)
        time.sleep(20)
        before = {r.run_id for r in instance.get_runs(limit=200)}
        started = time.time()
        for i in range(10):
            store.write(store.raw_bucket, f"images/robin/late-{i}.jpg", b"z")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for record in instance.get_run_records(limit=50):
                r = record.dagster_run
                intake = {k.path[-1] for k in r.asset_selection or []} == {"raw_images"}
                if r.run_id not in before and intake and r.tags.get("dagster/partition") == "birds":
                    return record.create_timestamp.timestamp() - started
            time.sleep(1)
    raise TimeoutError("no intake run for the uploaded group within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--latency", action="store_true", help="also measure events -> run with dagster dev")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="earthsnap-capture-"))
    os.environ.update(free_stack_env(home))
    settings = Settings.from_env()
    report: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2)}}
    try:
        log("starting the stack")
        stack_up(settings, dagster=args.latency)
        from earthsnap_assets.lake.taxonomy import Taxonomy
        from earthsnap_assets.lake.versions import save_taxonomy
        from earthsnap_assets.resources.object_store import ObjectStore

        store = ObjectStore()
        taxonomy = b"species,group\noak,trees\nbirch,trees\nrobin,birds\n"
        store.write(store.raw_bucket, "taxonomy.csv", taxonomy)
        save_taxonomy(store, store.lake_bucket, Taxonomy({"oak": "trees", "birch": "trees", "robin": "birds"}))
        fill(store, args.small, 0)
        log(f"{args.small} objects in the bucket; ticking")
        cursor = drain(store, drain(store, None))  # start watching, then take in what is there
        small, cursor = ticks(store, cursor)
        log(f"filling the bucket to {args.large} objects")
        started = time.perf_counter()
        fill(store, args.large - args.small, args.small)
        report["fill_seconds"] = round(time.perf_counter() - started, 1)
        cursor = drain(store, cursor)  # the fill's own events, so the timed ticks see only their 100
        large, cursor = ticks(store, cursor)
        report["tick_seconds"] = {
            str(args.small): {"median": round(statistics.median(small), 3), "all": [round(s, 3) for s in small]},
            str(args.large): {"median": round(statistics.median(large), 3), "all": [round(s, 3) for s in large]},
        }
        ratio = statistics.median(large) / statistics.median(small)
        report["tick_growth"] = {
            "objects_ratio": args.large / args.small,
            "seconds_ratio": round(ratio, 2),
            "no_growth": ratio < 1.5,
        }
        if args.latency:
            log("measuring events -> run with the real daemon")
            report["events_to_run_s"] = round(latency(settings, store), 1)
    finally:
        stack_down(settings)
    report["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
