"""Prediction-log and feedback rows as the endpoint writes them (PREDICTION_SCHEMA, FEEDBACK_SCHEMA), for tests."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from earthsnap_assets.lake import paths
from earthsnap_assets.monitoring.records import FEEDBACK_SCHEMA, PREDICTION_SCHEMA

DAY = "2026-11-30"
TS = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def prediction(
    photo: str,
    *,
    species: str | None = "quercus-robur",
    group: str = "trees",
    probability: float = 0.9,
    env: str = "production",
    kept: bool = True,
    top_k: list[tuple[str, str, float]] | None = None,
    day: str = DAY,
) -> dict[str, Any]:
    digest = sha(photo)
    top = top_k if top_k is not None else [(species or "quercus-robur", group, probability)]
    return {
        "request_id": uuid.uuid4().hex,
        "ts": TS,
        "env": env,
        "replica": "test-1",
        "model_versions": [("earthsnap-parent", "1"), (f"earthsnap-child-{group}", "3")],
        "dataset_version": "dv1",
        "level": "species" if species else "group",
        "species": species,
        "group": group,
        "probability": probability,
        "top_k": [{"species": s, "group": g, "probability": p} for s, g, p in top],
        "routed_groups": [group],
        "unexpanded_mass": 0.0,
        "latency_ms": 12.0,
        "image_sha256": digest,
        "image_bytes": 100,
        "width": 64,
        "height": 64,
        "brightness": 0.5,
        "photo_key": paths.request_photo(env, day, digest) if kept else None,
    }


def feedback(row: dict[str, Any], species: str, group: str, verdict: str = "corrected") -> dict[str, Any]:
    return {
        "request_id": row["request_id"],
        "ts": TS,
        "env": row["env"],
        "replica": "app",
        "verdict": verdict,
        "species": species,
        "group": group,
    }


def predictions_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def feedback_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=FEEDBACK_SCHEMA)
