"""Synthetic prediction logs, feedback and dataset-version references written into a lake (any Blobs)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import numpy as np
import pyarrow as pa

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.storage import Blobs
from earthsnap_assets.lake.tables import content_digest, table_bytes
from earthsnap_assets.monitoring.records import FEEDBACK_SCHEMA, PREDICTION_SCHEMA

# train counts per group and species of the synthetic dataset version
TRAIN = {
    "birds": {"robin": 300, "wren": 100},
    "flowers": {"daisy": 200, "rose": 200},
    "insects": {"ant": 100, "bee": 50, "wasp": 50},
}
DATASET_VERSION = "dv-0123456789abcdef"


def write_version(blobs: Blobs, bucket: str, train: dict = TRAIN, version: str = DATASET_VERSION) -> None:
    """A dataset version manifest pointing at one QA report per group, as `lake/versions.py` writes them."""
    groups = {}
    for group, species in train.items():
        report_key = paths.manifest_file(group, f"report-{version}", "json")
        report = {"group": group, "splits": {"train": species, "val": {s: 1 for s in species}, "test": {}}}
        blobs.write(bucket, report_key, json.dumps(report).encode())
        groups[group] = {"group_version": f"gv-{group}", "segment": "unused", "report": report_key}
    manifest = {"dataset_version": version, "groups": groups, "totals": {}}
    blobs.write(bucket, paths.version_manifest(version), json.dumps(manifest).encode())


def rows(
    day: str,
    n: int,
    *,
    seed: int = 0,
    env: str = "production",
    train: dict = TRAIN,
    only_group: str | None = None,
    back_off: float = 0.05,
    models: dict[str, str] | None = None,
    brightness: float = 0.5,
) -> list[dict]:
    """`n` answers drawn from the training distribution (or all in `only_group`), `back_off` of them at group level."""
    rng = np.random.default_rng(seed)
    pairs = [(g, s, c) for g, per in train.items() for s, c in per.items() if only_group in (None, g)]
    weights = np.array([c for _, _, c in pairs], dtype=float)
    picks = rng.choice(len(pairs), n, p=weights / weights.sum())
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    models = models or {"earthsnap-parent": "1"}
    out = []
    for i, pick in enumerate(picks):
        group, species, _ = pairs[pick]
        backed = rng.random() < back_off
        out.append(
            {
                "request_id": uuid.UUID(int=int(rng.integers(0, 2**63)) + i).hex,
                "ts": start + dt.timedelta(seconds=int(i * 86_000 / max(n, 1))),
                "env": env,
                "replica": "host-1",
                "model_versions": list(models.items()),
                "dataset_version": DATASET_VERSION,
                "level": "group" if backed else "species",
                "species": None if backed else species,
                "group": group,
                "probability": float(rng.uniform(0.2, 0.5) if backed else rng.uniform(0.6, 1.0)),
                "top_k": [{"species": species, "group": group, "probability": 0.9}],
                "routed_groups": [group],
                "unexpanded_mass": 0.01,
                "latency_ms": float(rng.gamma(4.0, 10.0)),
                "image_sha256": "0" * 64,
                "image_bytes": int(rng.normal(200_000, 20_000)),
                "width": int(rng.normal(1000, 100)),
                "height": int(rng.normal(800, 80)),
                "brightness": float(np.clip(rng.normal(brightness, 0.1), 0, 1)),
                "photo_key": None,
            }
        )
    return out


def write_predictions(blobs: Blobs, bucket: str, day: str, records: list[dict], batches: int = 2) -> list[str]:
    """The rows as `batches` Parquet files under the day's prefix, named as the endpoint names them."""
    keys = []
    for b, chunk in enumerate(np.array_split(np.arange(len(records)), batches)):
        table = pa.Table.from_pylist([records[i] for i in chunk], schema=PREDICTION_SCHEMA)
        data = table_bytes(table)
        env = records[0]["env"]
        key = paths.predictions_batch(env, day, f"{b:02d}0000", "host-1", content_digest(data, 12))
        blobs.write(bucket, key, data)
        keys.append(key)
    return keys


def write_feedback(blobs: Blobs, bucket: str, env: str, day: str, items: list[dict]) -> str:
    table = pa.Table.from_pylist(items, schema=FEEDBACK_SCHEMA)
    data = table_bytes(table)
    key = paths.feedback_batch(env, day, "120000", "host-1", content_digest(data, 12))
    blobs.write(bucket, key, data)
    return key


def verdict(prediction: dict, day: str, correct_species: str | None = None, minute: int = 0) -> dict:
    """Feedback on `prediction`: confirmed, or corrected to `correct_species`."""
    species = correct_species or prediction["species"]
    return {
        "request_id": prediction["request_id"],
        "ts": dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC) + dt.timedelta(minutes=minute),
        "env": prediction["env"],
        "replica": "host-1",
        "verdict": "confirmed" if correct_species is None else "corrected",
        "species": species,
        "group": next(g for g, per in TRAIN.items() if species in per),
    }
