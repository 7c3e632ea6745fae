"""Scoring models on the test split: per model, and the hierarchy end to end against a flat baseline.

Models are loaded from their MLflow URIs (what gets registered and served), never from "the latest" file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from earthsnap_assets.ml.data import DatasetIndex
from earthsnap_assets.ml.device import on_device, pick_device
from earthsnap_assets.ml.evaluate import (
    ClassificationReport,
    classification_report,
    confusion_matrix_png,
    latency_ms_per_image,
)
from earthsnap_assets.ml.hierarchy import Hierarchy
from earthsnap_assets.ml.hierarchy_eval import evaluate_streamed, hierarchy_plots
from earthsnap_assets.ml.model_cache import ModelCache
from earthsnap_assets.ml.routed import RoutedClassifier
from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.ml.train import predict_logits
from earthsnap_assets.pipeline.tasks import evaluation_data
from earthsnap_assets.refs import ModelRef
from earthsnap_assets.registry.client import RegistryVerbs
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
    store: ObjectStore, registry: RegistryVerbs, index: DatasetIndex, model: ModelRef
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


def evaluation_batches(
    store: ObjectStore, index: DatasetIndex, batch_size: int = 256
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(uint8 N x S x S x 3 pixels, true species) batches of the test split, for `evaluate_hierarchy`.

    The one place the hierarchical evaluation reads test data: today it slices the in-memory split of
    `evaluation_data`; a streaming reader of the lake replaces this function alone.
    """
    test = evaluation_data(store, store.lake_bucket, index, "flat")
    for start in range(0, len(test), batch_size):
        rows = slice(start, start + batch_size)
        yield test.pixels[rows], [test.classes[i] for i in test.labels[rows]]


@dataclass(frozen=True)
class HierarchySettings:
    """How the hierarchy is evaluated: serving's routing and back-off, and the bounds on memory."""

    routing: RoutingConfig = field(default_factory=RoutingConfig)
    confidence_threshold: float = 0.5  # serving's back-off threshold: reported as the group-level answer rate
    max_children_in_memory: int = 64  # children held at once (least recently used go)
    full_comparison_images: int = 2000  # photos sampled for routed vs full (every child) top-1
    seed: int = 0
    device: str | None = None  # None: CUDA when present


@dataclass
class HierarchyEvaluation:
    comparison: dict
    plots: dict[str, bytes]  # MLflow artifact path -> PNG


def _hierarchy(group_species: dict[str, list[str]], parent: ModelRef, children: dict[str, ModelRef]) -> Hierarchy:
    """Groups in the parent's output order, species in each child's; both checked against the mapping."""
    hierarchy = Hierarchy(groups=list(parent.classes), species={g: list(children[g].classes) for g in parent.classes})
    for group in hierarchy.groups:
        if sorted(hierarchy.species[group]) != sorted(group_species.get(group, [])):
            raise ValueError(
                f"child of {group!r} predicts {hierarchy.species[group]}, the mapping says {group_species.get(group)}"
            )
    return hierarchy


def evaluate_hierarchy(
    batches: Iterable[tuple[np.ndarray, Sequence[str]]],
    group_species: dict[str, list[str]],
    registry: RegistryVerbs,
    parent: ModelRef,
    children: dict[str, ModelRef],
    flat: ModelRef,
    settings: HierarchySettings | None = None,
) -> HierarchyEvaluation:
    """Parent -> routed children on every test batch, side by side with the flat model, in one streamed pass.

    The routing is serving's (`RoutedClassifier`), children load into a bounded cache, and only counts
    are kept; what routing costs is measured against every child on a sample of the same photos.
    """
    settings = settings or HierarchySettings()
    hierarchy = _hierarchy(group_species, parent, children)
    device = pick_device(settings.device)
    networks = {g: ref.model_uri for g, ref in children.items() if not ref.single_species}
    cache: ModelCache[str] = ModelCache(
        lambda group: on_device(registry.load_model(networks[group]), device, parent.image_size),
        max_models=settings.max_children_in_memory,
    )
    classifier = RoutedClassifier(
        parent=on_device(registry.load_model(parent.model_uri), device, parent.image_size),
        hierarchy=hierarchy,
        child=cache.get,
        deployed=frozenset(networks),
        routing=settings.routing,
        device=device,
    )
    flat_network = on_device(registry.load_model(flat.model_uri), device, flat.image_size)
    result = evaluate_streamed(
        batches,
        classifier,
        flat=(flat_network, list(flat.classes)),
        threshold=settings.confidence_threshold,
        sample_size=settings.full_comparison_images,
        seed=settings.seed,
    )
    species_report = result.species.report()
    assert result.flat is not None  # a flat model was given
    flat_report = result.flat.report()
    comparison = {
        "hierarchical": {
            "n": species_report.n,
            "top1_accuracy": species_report.accuracy,
            "top5_accuracy": species_report.top_k.get(5, 1.0),
            "macro_f1": species_report.macro_f1,
            "ece": species_report.ece,
            **result.counts.as_dict(),
            "train_seconds": parent.train_seconds + sum(c.train_seconds for c in children.values()),
            "parameters": parent.parameter_count + sum(c.parameter_count for c in children.values()),
            "predict_seconds": result.seconds["hierarchical"],
            "models": 1 + len(networks),
            "groups": len(hierarchy.groups),
            "children_loaded": cache.stats.loads,
        },
        "flat": {
            "n": flat_report.n,
            "top1_accuracy": flat_report.accuracy,
            "top5_accuracy": flat_report.top_k.get(5, 1.0),
            "macro_f1": flat_report.macro_f1,
            "train_seconds": flat.train_seconds,
            "parameters": flat.parameter_count,
            "predict_seconds": result.seconds["flat"],
            "models": 1,
        },
        "routing_cost": result.routing_cost,
        "device": str(device),
        "species_report": species_report.to_json(),
    }
    return HierarchyEvaluation(comparison, hierarchy_plots(result, hierarchy))


def comparison_markdown(comparison: dict) -> str:
    """The table the README shows: hierarchy vs flat baseline."""
    h, f = comparison["hierarchical"], comparison["flat"]
    rows = [
        ("top-1 accuracy", f"{h['top1_accuracy']:.3f}", f"{f['top1_accuracy']:.3f}"),
        ("top-5 accuracy", f"{h['top5_accuracy']:.3f}", f"{f['top5_accuracy']:.3f}"),
        ("macro-F1", f"{h['macro_f1']:.3f}", f"{f['macro_f1']:.3f}"),
        ("routing errors (wrong group)", f"{h['routing_errors']} / {h['n']}", "–"),
        ("true group not expanded", f"{h['true_group_not_expanded']} / {h['n']}", "–"),
        ("within-group errors", f"{h['within_group_errors']} / {h['n']}", "–"),
        ("training time (s)", f"{h['train_seconds']:.1f}", f"{f['train_seconds']:.1f}"),
        ("parameters", f"{h['parameters']:,} in {h['models']} models", f"{f['parameters']:,}"),
    ]
    cost = comparison.get("routing_cost", {})
    if cost.get("images"):
        routed = f"{cost['routed_top1_accuracy']:.3f} routed vs {cost['full_top1_accuracy']:.3f} full"
        rows.append((f"top-1, routed vs every child ({cost['images']} photos)", routed, "–"))
        rows.append(("groups expanded per photo", f"{h['mean_groups_expanded']:.2f} of {h['groups']}", "–"))
    lines = ["| metric | hierarchical (parent → child) | flat baseline |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])
