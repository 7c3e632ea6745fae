"""One day of one environment's prediction log and feedback -> a JSON-serialisable monitoring report.

Cost follows the day: the day's prefix is listed and its Parquet batches are read (only the columns used
here), plus the next day's *feedback* prefix. The input-drift baseline is the previous `BASELINE_DAYS` days
of the same environment, taken from the capped input sample each day's report keeps (`inputs_sample`, a few
thousand numbers); only a day without a report (the first week, a gap) is read from its log, and then only
the four input columns.

What is measured (see `earthsnap_assets/monitoring/stats.py` for the formulas):
- volume, answers per level, back-off rate (`level == "group"`), confidence histogram and quantiles;
- predicted group shares against the training shares of the deployed dataset version (`reference.py`):
  PSI and a chi-square test; predicted species (species-level answers) against the training species
  shares: PSI; per group with enough species-level answers, PSI of its species shares;
- input drift of width, height, brightness and bytes against the baseline: KS test and PSI;
- latency p50/p95/p99; accuracy on user feedback (confirmed = correct, corrected = wrong) joined by
  request id, with the most frequent corrections.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.storage import Blobs, read_json
from earthsnap_assets.lake.tables import concat, read_table
from earthsnap_assets.monitoring import stats
from earthsnap_assets.monitoring.records import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, app_traffic
from earthsnap_assets.monitoring.reference import MissingReference, Reference, load_reference, mixture

REPORT_FORMAT = 1
BASELINE_DAYS = 7
INPUT_FEATURES = ("width", "height", "brightness", "image_bytes")
INPUT_SAMPLE = 2000  # values per feature a report keeps for later days' baselines
MIN_GROUP_PREDICTIONS = 50  # species-level answers a group needs before its species PSI means anything
CONFUSION_ROWS = 20
PREDICTION_COLUMNS = [
    "request_id",
    "env",
    "model_versions",
    "dataset_version",
    "level",
    "species",
    "group",
    "probability",
    "latency_ms",
    "traffic",
    *INPUT_FEATURES,
]


@dataclass
class DayReport:
    env: str
    day: str
    volume: int
    format: int = REPORT_FORMAT
    dataset_versions: dict[str, int] = field(default_factory=dict)  # rows answered under each version
    model_versions: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> version -> rows
    levels: dict[str, int] = field(default_factory=dict)
    back_off_rate: float | None = None
    confidence: dict = field(default_factory=dict)  # histogram, quantiles, mean
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99
    groups: dict = field(default_factory=dict)  # predicted, expected (training share), psi, chi_square
    species: dict = field(default_factory=dict)  # psi, per_group_psi, predicted_top
    reference_missing: list[str] = field(default_factory=list)  # dataset versions without a manifest
    inputs: dict = field(default_factory=dict)  # feature -> quantiles, baseline_n, ks, psi
    baseline_days: list[str] = field(default_factory=list)
    feedback: dict = field(default_factory=dict)  # count, correct, accuracy, confusion, days
    inputs_sample: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def psi_group(self) -> float | None:
        return self.groups.get("psi")

    @property
    def psi_species(self) -> float | None:
        return self.species.get("psi")

    def version_of(self, model: str) -> str | None:
        """The version of `model` that answered most of the day's requests (None: it answered none)."""
        counts = self.model_versions.get(model, {})
        return max(counts, key=lambda v: (counts[v], v)) if counts else None


# ---------------------------------------------------------------------------------------------- reading


def _schema(schema: pa.Schema, columns: list[str]) -> pa.Schema:
    return pa.schema([schema.field(c) for c in columns])


def read_day(blobs: Blobs, bucket: str, prefix: str, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """The `columns` of every Parquet batch under one day's prefix (an empty table when there is none)."""
    keys = [k for k in blobs.list_keys(bucket, prefix) if k.endswith(".parquet")]
    return concat([read_table(blobs, bucket, k, columns) for k in keys], _schema(schema, columns))


def _shift(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def _counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    return {c["values"]: c["counts"] for c in pc.value_counts(column).to_pylist() if c["values"] is not None}


def _floats(table: pa.Table, name: str) -> np.ndarray:
    column = pc.drop_null(table[name])
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=float)


# ---------------------------------------------------------------------------------------------- parts


def _model_versions(table: pa.Table) -> dict[str, dict[str, int]]:
    """{model: {version: rows}} over the day's `model_versions` maps (columnar: no Python loop over rows)."""
    if table.num_rows == 0:
        return {}
    as_list = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))  # maps have no flatten kernel
    entries = pc.list_flatten(table["model_versions"].combine_chunks().cast(as_list))
    pairs = pa.table({"model": entries.field("key"), "version": entries.field("value")})
    found: dict[str, dict[str, int]] = {}
    for row in sorted(pairs.group_by(["model", "version"]).aggregate([("model", "count")]).to_pylist(), key=str):
        found.setdefault(row["model"], {})[row["version"]] = row["model_count"]
    return found


def _references(blobs: Blobs, bucket: str, versions: dict[str, int]) -> tuple[dict[str, Reference], list[str]]:
    found, missing = {}, []
    for version in sorted(versions):
        try:
            found[version] = load_reference(blobs, bucket, version)
        except MissingReference:
            missing.append(version)
    return found, missing


def class_drift(table: pa.Table, references: dict[str, Reference], rows: dict[str, int]) -> tuple[dict, dict]:
    """(groups, species) sections: predicted shares against the row-weighted training shares."""
    known = table.filter(pc.is_in(table["dataset_version"], pa.array(sorted(references), pa.string())))
    predicted_groups = _counts(known["group"])
    if not references or known.num_rows == 0:
        return {"predicted": predicted_groups, "expected": {}, "psi": None, "chi_square": None}, {"psi": None}
    expected_groups, within = mixture(references, rows)
    groups = {
        "predicted": dict(sorted(predicted_groups.items(), key=lambda kv: -kv[1])),
        "expected": {g: round(s, 6) for g, s in sorted(expected_groups.items())},
        "psi": stats.categorical_psi(predicted_groups, expected_groups),
        "psi_null_p95": stats.null_psi(expected_groups, known.num_rows),
        "chi_square": stats.chi_square(predicted_groups, expected_groups),
    }
    answered = known.filter(pc.equal(known["level"], "species"))
    predicted_species = _counts(answered["species"])
    expected_species = {s: expected_groups[g] * share for g, per in within.items() for s, share in per.items()}
    by_group: dict[str, dict[str, int]] = {}
    for row in answered.group_by(["group", "species"]).aggregate([("request_id", "count")]).to_pylist():
        by_group.setdefault(row["group"], {})[row["species"]] = row["request_id_count"]
    per_group = {
        group: stats.categorical_psi(counts, within[group])
        for group, counts in sorted(by_group.items())
        if sum(counts.values()) >= MIN_GROUP_PREDICTIONS and within.get(group)
    }
    top = sorted(predicted_species.items(), key=lambda kv: -kv[1])
    n_species = sum(predicted_species.values())
    species = {
        "psi": stats.categorical_psi(predicted_species, expected_species) if predicted_species else None,
        "psi_null_p95": stats.null_psi(expected_species, n_species) if predicted_species else None,
        "per_group_psi": per_group,
        "min_group_predictions": MIN_GROUP_PREDICTIONS,
        "predicted": dict(top),
    }
    return groups, species


def _baseline(blobs: Blobs, bucket: str, env: str, day: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Input values of the previous BASELINE_DAYS days: each day's report sample, else its log's columns."""
    values: dict[str, list[np.ndarray]] = {f: [] for f in INPUT_FEATURES}
    used = []
    for back in range(1, BASELINE_DAYS + 1):
        previous = _shift(day, -back)
        report = read_json(blobs, bucket, paths.monitoring_report(env, previous))
        if report is not None and report.get("format") == REPORT_FORMAT:
            sample = {f: np.asarray(report["inputs_sample"].get(f, []), dtype=float) for f in INPUT_FEATURES}
        else:
            table = read_day(
                blobs, bucket, paths.predictions_prefix(env, previous), PREDICTION_SCHEMA, [*INPUT_FEATURES, "traffic"]
            )
            table = app_traffic(table)
            sample = {f: stats.sample(_floats(table, f), INPUT_SAMPLE, seed=back) for f in INPUT_FEATURES}
        if any(len(v) for v in sample.values()):
            used.append(previous)
            for f in INPUT_FEATURES:
                values[f].append(sample[f])
    return {f: np.concatenate(v) if v else np.array([]) for f, v in values.items()}, used


def input_drift(current: dict[str, np.ndarray], baseline: dict[str, np.ndarray]) -> dict:
    found = {}
    for feature in INPUT_FEATURES:
        now, before = current[feature], baseline[feature]
        entry: dict = {"quantiles": stats.quantiles(now), "n": int(now.size), "baseline_n": int(before.size)}
        if now.size and before.size:
            entry["ks"] = stats.ks(now, before)
            entry["psi"] = stats.numeric_psi(now, before)
        else:
            entry["ks"] = entry["psi"] = None
        found[feature] = entry
    return found


def feedback_accuracy(predictions: pa.Table, feedback: pa.Table) -> dict:
    """Join feedback to the day's predictions by request id (the latest verdict of a request counts)."""
    latest: dict[str, dict] = {}
    for row in sorted(feedback.to_pylist(), key=lambda r: r["ts"]):
        latest[row["request_id"]] = row
    asked = predictions.filter(pc.is_in(predictions["request_id"], pa.array(sorted(latest), pa.string())))
    answers = {r["request_id"]: r for r in asked.select(["request_id", "level", "species", "group"]).to_pylist()}
    confusion: Counter[tuple[str, str]] = Counter()
    correct = 0
    for request_id, answer in answers.items():
        verdict = latest[request_id]
        if verdict["verdict"] == "confirmed":
            correct += 1
        else:
            said = answer["species"] if answer["level"] == "species" else f"{answer['group']} (group)"
            confusion[(said, verdict["species"])] += 1
    count = len(answers)
    return {
        "count": count,
        "correct": correct,
        "accuracy": correct / count if count else None,
        "unmatched": len(latest) - count,  # feedback about requests of other days
        "confusion": [
            {"predicted": p, "actual": a, "count": n}
            for (p, a), n in sorted(confusion.items(), key=lambda kv: (-kv[1], kv[0]))[:CONFUSION_ROWS]
        ],
    }


# ---------------------------------------------------------------------------------------------- the report


def day_report(blobs: Blobs, bucket: str, env: str, day: str) -> DayReport:
    """The monitoring report of `env`'s prediction log on `day` (UTC); writes the reference caches it needs."""
    table = read_day(blobs, bucket, paths.predictions_prefix(env, day), PREDICTION_SCHEMA, PREDICTION_COLUMNS)
    table = app_traffic(table.filter(pc.equal(table["env"], env)))  # the app's users, not the stage tests
    report = DayReport(env=env, day=day, volume=table.num_rows)
    report.dataset_versions = _counts(table["dataset_version"])
    report.model_versions = _model_versions(table)
    report.levels = _counts(table["level"])
    if table.num_rows:
        report.back_off_rate = report.levels.get("group", 0) / table.num_rows
    probability = _floats(table, "probability")
    report.confidence = {
        "histogram": stats.histogram(probability),
        "quantiles": stats.quantiles(probability),
        "mean": float(probability.mean()) if probability.size else None,
    }
    report.latency_ms = stats.quantiles(_floats(table, "latency_ms"), (0.5, 0.95, 0.99))
    references, report.reference_missing = _references(blobs, bucket, report.dataset_versions)
    report.groups, report.species = class_drift(table, references, report.dataset_versions)
    current = {f: _floats(table, f) for f in INPUT_FEATURES}
    baseline, report.baseline_days = _baseline(blobs, bucket, env, day)
    report.inputs = input_drift(current, baseline)
    report.inputs_sample = {
        f: [float(v) for v in stats.sample(current[f], INPUT_SAMPLE, seed=0)] for f in INPUT_FEATURES
    }
    days = [day, _shift(day, 1)]
    feedback = concat(
        [read_day(blobs, bucket, paths.feedback_prefix(env, d), FEEDBACK_SCHEMA, FEEDBACK_SCHEMA.names) for d in days],
        FEEDBACK_SCHEMA,
    )
    feedback = feedback.filter(pc.equal(feedback["env"], env))
    report.feedback = {**feedback_accuracy(table, feedback), "days": days}
    return report
