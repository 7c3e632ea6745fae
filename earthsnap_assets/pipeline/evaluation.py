"""Scoring models on the test split: per model, and the hierarchy end to end against a flat baseline.

Models are loaded from their MLflow URIs (what gets registered and served), never from "the latest" file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from earthsnap_assets.ml.data import DatasetIndex
from earthsnap_assets.ml.device import pick_device
from earthsnap_assets.ml.evaluate import (
    ClassificationReport,
    classification_report,
    confusion_matrix_png,
    latency_ms_per_image,
)
from earthsnap_assets.ml.hierarchy import Hierarchy, hierarchical_report
from earthsnap_assets.ml.train import predict_logits
from earthsnap_assets.pipeline.tasks import evaluation_data
from earthsnap_assets.refs import ModelRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore


@dataclass
class ModelEvaluation:
    report: ClassificationReport
    confusion_png: bytes | None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predict_probs(model: torch.nn.Module, pixels: np.ndarray, device: torch.device | None = None) -> np.ndarray:
    device = device or pick_device()
    if not len(pixels):
        return np.zeros((0, 0))
    return _softmax(predict_logits(model, pixels, 64, device))


def evaluate_model(
    store: ObjectStore, registry: MlflowRegistry, index: DatasetIndex, model: ModelRef
) -> ModelEvaluation:
    """Test-split report of one model, logged to its own MLflow run (metrics `test_*`, JSON, plot)."""
    test = evaluation_data(store, store.lake_bucket, index, model.task, model.group)
    if model.single_species:
        probs = np.ones((len(test), 1))
        report = classification_report(probs, test.labels, list(model.classes))
        return ModelEvaluation(report, None)
    network = registry.load_model(model.model_uri)
    device = torch.device("cpu")
    probs = predict_probs(network, test.pixels, device)
    report = classification_report(probs, test.labels, list(model.classes))
    report.latency_ms_per_image = latency_ms_per_image(
        lambda x: predict_probs(network, x, device), test.pixels, repeats=20
    )
    title = f"{model.task} {model.group or ''} · {index.dataset_version}"
    png = confusion_matrix_png(report.confusion, list(model.classes), title)
    registry.log_metrics(model.run_id, {f"test_{k}": v for k, v in report.headline().items()})
    registry.log_json(model.run_id, "evaluation/test_report.json", report.to_json())
    registry.log_bytes(model.run_id, "evaluation/confusion_matrix.png", png)
    return ModelEvaluation(report, png)


def evaluate_hierarchy(
    store: ObjectStore,
    registry: MlflowRegistry,
    index: DatasetIndex,
    parent: ModelRef,
    children: dict[str, ModelRef],
    flat: ModelRef,
) -> dict:
    """End-to-end parent -> child accuracy on the whole test split, side by side with the flat model."""
    hierarchy = Hierarchy(groups=list(parent.classes), species={g: list(children[g].classes) for g in parent.classes})
    test = evaluation_data(store, store.lake_bucket, index, "flat")
    true_species = [test.classes[i] for i in test.labels]
    device = torch.device("cpu")
    started = time.perf_counter()
    parent_probs = predict_probs(registry.load_model(parent.model_uri), test.pixels, device)
    child_probs = {
        g: None if ref.single_species else predict_probs(registry.load_model(ref.model_uri), test.pixels, device)
        for g, ref in children.items()
    }
    hierarchical_seconds = time.perf_counter() - started
    result = hierarchical_report(parent_probs, child_probs, true_species, hierarchy)
    order = {s: i for i, s in enumerate(flat.classes)}
    flat_labels = np.array([order[s] for s in true_species], dtype=np.int64)
    started = time.perf_counter()
    flat_report = classification_report(
        predict_probs(registry.load_model(flat.model_uri), test.pixels, device), flat_labels, list(flat.classes)
    )
    flat_seconds = time.perf_counter() - started
    report = result.pop("report")
    return {
        "hierarchical": {
            **result,
            "train_seconds": parent.train_seconds + sum(c.train_seconds for c in children.values()),
            "parameters": parent.parameter_count + sum(c.parameter_count for c in children.values()),
            "predict_seconds": hierarchical_seconds,
            "models": 1 + sum(1 for c in children.values() if not c.single_species),
        },
        "flat": {
            "n": flat_report.n,
            "top1_accuracy": flat_report.accuracy,
            "top5_accuracy": flat_report.top_k.get(5, 1.0),
            "macro_f1": flat_report.macro_f1,
            "train_seconds": flat.train_seconds,
            "parameters": flat.parameter_count,
            "predict_seconds": flat_seconds,
            "models": 1,
        },
        "species_report": report.to_json(),
    }


def comparison_markdown(comparison: dict) -> str:
    """The table the README shows: hierarchy vs flat baseline."""
    h, f = comparison["hierarchical"], comparison["flat"]
    rows = [
        ("top-1 accuracy", f"{h['top1_accuracy']:.3f}", f"{f['top1_accuracy']:.3f}"),
        ("top-5 accuracy", f"{h['top5_accuracy']:.3f}", f"{f['top5_accuracy']:.3f}"),
        ("macro-F1", f"{h['macro_f1']:.3f}", f"{f['macro_f1']:.3f}"),
        ("routing errors (wrong group)", f"{h['routing_errors']} / {h['n']}", "–"),
        ("within-group errors", f"{h['within_group_errors']} / {h['n']}", "–"),
        ("training time (s)", f"{h['train_seconds']:.1f}", f"{f['train_seconds']:.1f}"),
        ("parameters", f"{h['parameters']:,} in {h['models']} models", f"{f['parameters']:,}"),
    ]
    lines = ["| metric | hierarchical (parent → child) | flat baseline |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])
