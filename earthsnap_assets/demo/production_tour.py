"""The demo's last act: the app's users answer back, and the platform watches production and asks people.

After the showcase photos (`demo/showcase.py`), each answer gets the feedback an app user would give (the
true species: a confirmation or a correction). Once the endpoint's logs reached the lake, the CLI runs the
day's monitoring and review-queue jobs (`cli._demo_monitoring_and_review`); this module holds the plain
HTTP parts and the lines printed from the jobs' metadata.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import requests

from earthsnap_assets.demo.showcase import Showcase
from earthsnap_assets.serving.auth import bearer_headers, client_token

# what the demo prints of the monitoring asset's metadata, in this order
MONITORING_FIELDS = (
    "volume",
    "back_off_rate",
    "psi_group",
    "psi_species",
    "latency_p50_ms",
    "latency_p95_ms",
    "feedback_accuracy",
    "feedback_count",
)


def send_feedback(base_url: str, showcase: Showcase, timeout: float = 10.0) -> Counter:
    """POST /feedback with the true species of every showcase answer; counts by verdict (or HTTP status)."""
    counts: Counter = Counter()
    for answer in showcase.answers:
        if not answer.request_id:
            continue
        reply = requests.post(
            f"{base_url}/feedback",
            json={"request_id": answer.request_id, "species": answer.species},
            headers=bearer_headers(client_token()),  # EARTHSNAP_SERVE_TOKEN, when the endpoint needs one
            timeout=timeout,
        )
        counts[reply.json().get("verdict", "ok") if reply.status_code == 202 else f"HTTP {reply.status_code}"] += 1
    return counts


def wait_logged(base_url: str, timeout: float = 60.0) -> dict[str, Any]:
    """Until the endpoint's prediction and feedback logs have nothing pending (both in the lake); their stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = requests.get(f"{base_url}/stats", headers=bearer_headers(client_token()), timeout=10).json()
        logs = [stats.get("prediction_log") or {}, stats.get("feedback_log") or {}]
        if all(log.get("pending", 0) == 0 for log in logs) or time.monotonic() > deadline:
            return {"prediction_log": logs[0], "feedback_log": logs[1]}
        time.sleep(1.0)


def monitoring_lines(metadata: Mapping[str, Any]) -> list[str]:
    """The day's headline numbers, as the Dagster UI shows them on the asset."""
    shown = [f"{name} {_fmt(metadata[name])}" for name in MONITORING_FIELDS if name in metadata]
    return [", ".join(shown)] if shown else ["(no monitoring numbers recorded)"]


def review_lines(metadata: Mapping[str, Any], shown: int = 5) -> list[str]:
    """How many tasks the queue created, why, and the URLs a reviewer opens."""
    urls = list(metadata.get("task_urls") or [])
    lines = [f"{metadata.get('tasks_created', 0)} review tasks created, by reason {metadata.get('by_reason', {})}"]
    lines += [f"task: {url}" for url in urls[:shown]]
    if len(urls) > shown:
        lines.append(f"... and {len(urls) - shown} more (all in the asset's metadata in Dagster)")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
