"""Classification metrics from predicted probabilities: what a person needs to trust a model.

Works on numpy arrays so that parent, child, hierarchical and flat models are all scored by the same
code, whatever produced the probabilities.
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class ClassificationReport:
    classes: list[str]
    n: int
    accuracy: float
    top_k: dict[int, float]
    macro_f1: float
    ece: float
    per_class: list[dict] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    latency_ms_per_image: float | None = None

    def headline(self) -> dict[str, float]:
        """The numbers that go into tags, gates and tables."""
        metrics = {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "ece": self.ece}
        metrics.update({f"top{k}_accuracy": v for k, v in self.top_k.items()})
        if self.latency_ms_per_image is not None:
            metrics["latency_ms_per_image"] = self.latency_ms_per_image
        return {k: round(float(v), 6) for k, v in metrics.items()}

    def to_json(self) -> dict:
        return asdict(self)


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    best = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean(np.any(best == labels[:, None], axis=1))) if len(labels) else 0.0


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Gap between confidence and accuracy, averaged over confidence bins weighted by their size."""
    if not len(labels):
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def per_class_scores(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


def classification_report(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], ks: tuple[int, ...] = (1, 3, 5)
) -> ClassificationReport:
    """Accuracy, top-k, macro-F1 (over classes present in the test set), per-class scores, ECE."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(predicted, labels, len(classes))
    scores = per_class_scores(matrix, classes)
    present = [s["f1"] for s in scores if s["support"] > 0]
    return ClassificationReport(
        classes=list(classes),
        n=len(labels),
        accuracy=float(np.mean(predicted == labels)) if len(labels) else 0.0,
        top_k={k: top_k_accuracy(probs, labels, k) for k in ks if k <= len(classes)},
        macro_f1=float(np.mean(present)) if present else 0.0,
        ece=expected_calibration_error(probs, labels),
        per_class=scores,
        confusion=matrix.tolist(),
    )


def latency_ms_per_image(predict: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, repeats: int = 20) -> float:
    """Median wall time of a batch-of-one prediction, as an endpoint would see it."""
    sample = pixels[:1]
    predict(sample)  # warm-up: first calls allocate
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        predict(pixels[i % len(pixels) : i % len(pixels) + 1])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def confusion_matrix_png(confusion: list[list[int]], classes: list[str], title: str) -> bytes:
    """A labelled confusion-matrix heatmap as PNG bytes (for MLflow artifacts and the Dagster UI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    size = max(3.0, 0.55 * len(classes) + 1.5)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Greens")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(classes)), classes, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=10)
    for (row, col), value in np.ndenumerate(matrix):
        color = "white" if value > matrix.max() / 2 else "black"
        axis.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def report_markdown(report: ClassificationReport) -> str:
    """Per-class table for the Dagster UI."""
    lines = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for row in report.per_class:
        lines.append(
            f"| {row['class']} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
        )
    return "\n".join(lines)
