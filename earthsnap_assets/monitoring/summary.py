"""A day's report as numbers (MLflow metrics, Dagster metadata), markdown for people, and its MLflow summary.

The MLflow summary is one run per environment and day (`names.monitoring_run_name`) in the monitoring
experiment, holding the metrics and the report JSON; the parent version that answered most of the day gets
`monitoring.*` tags pointing at the run. Registry errors propagate: an unreachable MLflow fails the
materialization rather than leaving the version's tags silently stale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from earthsnap_assets.monitoring.daily import INPUT_FEATURES, DayReport
from earthsnap_assets.registry import names
from earthsnap_assets.registry.client import RegistryVerbs, is_missing
from earthsnap_assets.reports import markdown_table

log = logging.getLogger(__name__)


def report_metrics(report: DayReport) -> dict[str, float]:
    """Every headline number of the report; undefined ones (no rows, no reference) are left out, never 0."""
    values: dict[str, float | int | None] = {
        "volume": report.volume,
        "back_off_rate": report.back_off_rate,
        "psi_group": report.psi_group,
        "psi_species": report.psi_species,
        "psi_group_null_p95": report.groups.get("psi_null_p95"),
        "psi_species_null_p95": report.species.get("psi_null_p95"),
        "chi_square_p_group": (report.groups.get("chi_square") or {}).get("p_value"),
        "confidence_mean": report.confidence.get("mean"),
        "confidence_p50": report.confidence.get("quantiles", {}).get("p50"),
        "latency_p50_ms": report.latency_ms.get("p50"),
        "latency_p95_ms": report.latency_ms.get("p95"),
        "latency_p99_ms": report.latency_ms.get("p99"),
        "feedback_count": report.feedback.get("count"),
        "feedback_accuracy": report.feedback.get("accuracy"),
    }
    per_group = report.species.get("per_group_psi") or {}
    if per_group:
        values["psi_species_in_group_max"] = max(per_group.values())
    for feature in INPUT_FEATURES:
        entry = report.inputs.get(feature, {})
        values[f"input_{feature}_psi"] = entry.get("psi")
        values[f"input_{feature}_ks_p"] = (entry.get("ks") or {}).get("p_value")
    return {k: float(v) for k, v in values.items() if v is not None}


def groups_markdown(report: DayReport, limit: int = 15) -> str:
    """Top predicted groups: share of today's answers against the training share."""
    predicted = report.groups.get("predicted", {})
    expected = report.groups.get("expected", {})
    total = sum(predicted.values())
    if not total:
        return "_no predictions_"
    rows = [
        [g, n, f"{n / total:.1%}", f"{expected[g]:.1%}" if g in expected else "not in training"]
        for g, n in sorted(predicted.items(), key=lambda kv: -kv[1])
    ]
    return markdown_table(["group", "predictions", "share today", "training share"], rows, limit=limit)


def confidence_markdown(report: DayReport, width: int = 30) -> str:
    """The confidence histogram as a markdown table with text bars."""
    bins = report.confidence.get("histogram", [])
    most = max((b["count"] for b in bins), default=0)
    if not most:
        return "_no predictions_"
    rows = [[f"{b['low']:.1f}-{b['high']:.1f}", b["count"], "█" * round(width * b["count"] / most)] for b in bins]
    return markdown_table(["probability", "answers", ""], rows)


@dataclass(frozen=True)
class Summary:
    run_id: str
    model: str
    version: str | None  # the parent version tagged; None: none answered that day, or it is gone
    tagged: bool  # False when a later day already tagged that version


def _small(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def log_summary(registry: RegistryVerbs, report: DayReport, parent: str) -> Summary:
    """Log the day's run and tag the parent version that answered most of the day (see the module doc)."""
    tags = {"env": report.env, "day": report.day, "kind": "monitoring"}
    if report.dataset_versions:
        tags["dataset_versions"] = ",".join(sorted(report.dataset_versions))[:5000]
    with registry.run(names.monitoring_run_name(report.env, report.day), tags) as run_id:
        registry.log_metrics(run_id, report_metrics(report))
        registry.log_json(run_id, names.MONITORING_REPORT_ARTIFACT, report.to_json())
    version = report.version_of(parent)
    if version is None:
        return Summary(run_id, parent, None, False)
    try:
        current = registry.version_tags(parent, version)
    except Exception as exc:
        if not is_missing(exc):
            raise
        log.warning("%s version %s answered on %s but is not in the registry: not tagged", parent, version, report.day)
        return Summary(run_id, parent, None, False)
    if current.get(names.MONITORING_LAST_DAY, "") > report.day:  # a backfill of an older day
        return Summary(run_id, parent, version, False)
    version_tags = {
        names.MONITORING_LAST_DAY: report.day,
        names.MONITORING_RUN_ID: run_id,
        names.MONITORING_VOLUME: str(report.volume),
        names.MONITORING_PSI_GROUP: _small(report.psi_group),
        names.MONITORING_PSI_SPECIES: _small(report.psi_species),
        names.MONITORING_BACK_OFF_RATE: _small(report.back_off_rate),
        names.MONITORING_FEEDBACK_ACCURACY: _small(report.feedback.get("accuracy")),
    }
    registry.set_version_tags(parent, version, version_tags)
    return Summary(run_id, parent, version, True)
