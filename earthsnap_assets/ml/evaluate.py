"""Classification metrics from predicted probabilities: what a person needs to trust a model.

Works on numpy arrays so that parent, child, hierarchical and flat models are all scored by the same
code, whatever produced the probabilities.
"""

from __future__ import annotations

import io
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
    confusion: list[list[int]] = field(default_factory=list)  # dense, for small label sets only
    latency_ms_per_image: float | None = None
    confusion_pairs: list[dict] = field(default_factory=list)  # off-diagonal (true, predicted, count), largest first

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


class CalibrationBins:
    """Confidence-vs-accuracy bins, filled batch by batch: ECE without keeping every prediction."""

    def __init__(self, bins: int = 15) -> None:
        self.bins = bins
        self.count = np.zeros(bins, np.int64)
        self.confidence = np.zeros(bins)
        self.correct = np.zeros(bins)

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> CalibrationBins:
        """Bins are (low, high]: a confidence of exactly 0 counts in none, as in the usual definition."""
        index = np.ceil(np.asarray(confidence, np.float64) * self.bins).astype(np.int64) - 1
        keep = (index >= 0) & (index < self.bins)
        index = index[keep]
        self.count += np.bincount(index, minlength=self.bins)
        self.confidence += np.bincount(index, weights=np.asarray(confidence, np.float64)[keep], minlength=self.bins)
        self.correct += np.bincount(index, weights=np.asarray(correct, np.float64)[keep], minlength=self.bins)
        return self

    def error(self, n: int) -> float:
        """Gap between confidence and accuracy, averaged over bins weighted by their share of `n` items."""
        if not n:
            return 0.0
        filled = self.count > 0
        gap = np.abs(self.correct[filled] - self.confidence[filled]) / self.count[filled]
        return float(np.sum(self.count[filled] / n * gap))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Gap between confidence and accuracy, averaged over confidence bins weighted by their size."""
    if not len(labels):
        return 0.0
    bins_ = CalibrationBins(bins).add(probs.max(axis=1), probs.argmax(axis=1) == labels)
    return bins_.error(len(labels))


def per_class_scores(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    return scores_from_counts(np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1), classes)


def scores_from_counts(
    true_positive: np.ndarray, predicted: np.ndarray, support: np.ndarray, classes: list[str]
) -> list[dict]:
    """Precision, recall, F1 per class from three count vectors (a dense or a sparse confusion gives them)."""
    true_positive, predicted, support = (np.asarray(a, dtype=float) for a in (true_positive, predicted, support))
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


def macro_f1(scores: list[dict]) -> float:
    """Mean F1 over the classes present in the test set."""
    present = [s["f1"] for s in scores if s["support"] > 0]
    return float(np.mean(present)) if present else 0.0


def classification_report(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], ks: tuple[int, ...] = (1, 3, 5)
) -> ClassificationReport:
    """Accuracy, top-k, macro-F1 (over classes present in the test set), per-class scores, ECE."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(predicted, labels, len(classes))
    scores = per_class_scores(matrix, classes)
    return ClassificationReport(
        classes=list(classes),
        n=len(labels),
        accuracy=float(np.mean(predicted == labels)) if len(labels) else 0.0,
        top_k={k: top_k_accuracy(probs, labels, k) for k in ks if k <= len(classes)},
        macro_f1=macro_f1(scores),
        ece=expected_calibration_error(probs, labels),
        per_class=scores,
        confusion=matrix.tolist(),
    )


class SparseConfusion:
    """Confusion counts of a large label set: only (true, predicted) pairs that occurred are kept.

    Pairs are coded as true * C + predicted and compacted with `np.unique` as they pile up, so memory
    follows the number of distinct pairs seen (at most the number of photos), never C x C.
    """

    COMPACT_EVERY = 1 << 20  # codes buffered before they are merged into (unique codes, counts)

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self._codes = np.zeros(0, np.int64)
        self._counts = np.zeros(0, np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, labels: np.ndarray, predicted: np.ndarray) -> None:
        self._pending.append(np.asarray(labels, np.int64) * self.n_classes + np.asarray(predicted, np.int64))
        self._pending_size += len(labels)
        if self._pending_size >= self.COMPACT_EVERY:
            self._compact()

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true, predicted, count) of every pair seen, in code order."""
        self._compact()
        return self._codes // self.n_classes, self._codes % self.n_classes, self._counts

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true positives, predicted, support) per class."""
        true, predicted, count = self.pairs()
        diagonal = true == predicted
        c = self.n_classes
        return (
            np.bincount(true[diagonal], weights=count[diagonal], minlength=c).astype(np.int64),
            np.bincount(predicted, weights=count, minlength=c).astype(np.int64),
            np.bincount(true, weights=count, minlength=c).astype(np.int64),
        )

    def submatrix(self, classes: np.ndarray) -> np.ndarray:
        """Dense confusion among `classes` (indices) only: for plots of one group."""
        true, predicted, count = self.pairs()
        position = np.full(self.n_classes, -1, np.int64)
        position[classes] = np.arange(len(classes))
        keep = (position[true] >= 0) & (position[predicted] >= 0)
        matrix = np.zeros((len(classes), len(classes)), np.int64)
        np.add.at(matrix, (position[true[keep]], position[predicted[keep]]), count[keep])
        return matrix

    def mapped(self, mapping: np.ndarray, n: int) -> np.ndarray:
        """Dense n x n confusion of labels mapped through `mapping` (e.g. species -> group)."""
        true, predicted, count = self.pairs()
        matrix = np.zeros((n, n), np.int64)
        np.add.at(matrix, (mapping[true], mapping[predicted]), count)
        return matrix

    def top_errors(self, k: int) -> list[tuple[int, int, int]]:
        """The k most frequent (true, predicted, count) with true != predicted."""
        true, predicted, count = self.pairs()
        off = np.flatnonzero(true != predicted)
        best = off[np.argsort(-count[off], kind="stable")[:k]]
        return [(int(true[i]), int(predicted[i]), int(count[i])) for i in best]

    def _compact(self) -> None:
        if not self._pending:
            return
        codes = np.concatenate([self._codes, *self._pending])
        weights = np.concatenate([self._counts, *(np.ones(len(p), np.int64) for p in self._pending)])
        self._codes, inverse = np.unique(codes, return_inverse=True)
        self._counts = np.bincount(inverse, weights=weights).astype(np.int64)
        self._pending, self._pending_size = [], 0


class StreamingClassification:
    """A `ClassificationReport` built batch by batch from each item's top-k: bounded memory at any size.

    Feed it the true label and the k best (label, probability) of every item; it keeps a sparse confusion,
    top-k hit counts and calibration bins, never the items' probability vectors.
    """

    def __init__(self, classes: list[str], ks: tuple[int, ...] = (1, 3, 5), bins: int = 15) -> None:
        self.classes = list(classes)
        self.ks = tuple(k for k in ks if k <= len(classes))
        self.confusion = SparseConfusion(len(classes))
        self.calibration = CalibrationBins(bins)
        self.hits = dict.fromkeys(self.ks, 0)
        self.n = 0

    def update(self, labels: np.ndarray, top_labels: np.ndarray, top_probs: np.ndarray) -> None:
        """`top_labels` / `top_probs`: n x k, best first (k at least max(ks) or the number of classes)."""
        labels = np.asarray(labels, np.int64)
        if not len(labels):
            return
        predicted = top_labels[:, 0]
        self.confusion.add(labels, predicted)
        self.calibration.add(top_probs[:, 0], predicted == labels)
        for k in self.ks:
            self.hits[k] += int(np.any(top_labels[:, :k] == labels[:, None], axis=1).sum())
        self.n += len(labels)

    def report(self, max_pairs: int = 1000) -> ClassificationReport:
        """The report; `confusion_pairs` lists the `max_pairs` most frequent errors (no dense matrix)."""
        true_positive, predicted, support = self.confusion.counts()
        scores = scores_from_counts(true_positive, predicted, support, self.classes)
        n = max(1, self.n)
        pairs = [
            {"true": self.classes[t], "predicted": self.classes[p], "count": c}
            for t, p, c in self.confusion.top_errors(max_pairs)
        ]
        return ClassificationReport(
            classes=self.classes,
            n=self.n,
            accuracy=float(true_positive.sum() / n) if self.n else 0.0,
            top_k={k: hits / n for k, hits in self.hits.items()},
            macro_f1=macro_f1(scores),
            ece=self.calibration.error(self.n),
            per_class=scores,
            confusion_pairs=pairs,
        )


def top_of(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (labels, probabilities), best first; argpartition keeps it O(classes) per row."""
    k = min(k, probs.shape[1])
    part = (
        np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < probs.shape[1] else np.tile(np.arange(k), (len(probs), 1))
    )
    values = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


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


HEATMAP_MAX_CLASSES = 40  # above this a confusion heatmap is unreadable: plot the top confused pairs instead
CELL_TEXT_MAX_CLASSES = 20  # above this, cell counts are not written into the heatmap


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    return buffer.getvalue()


def confusion_matrix_png(confusion: list[list[int]] | np.ndarray, classes: list[str], title: str) -> bytes:
    """A confusion plot as PNG bytes (MLflow artifacts, the Dagster UI), readable whatever the label count.

    Up to `HEATMAP_MAX_CLASSES` classes: a labelled heatmap (with counts in the cells up to
    `CELL_TEXT_MAX_CLASSES`); beyond, the most frequent confusions as a bar chart.
    """
    matrix = np.asarray(confusion)
    if len(classes) > HEATMAP_MAX_CLASSES:
        off = matrix.copy()
        np.fill_diagonal(off, 0)
        flat = np.argsort(-off, axis=None, kind="stable")[:20]
        rows, cols = np.unravel_index(flat, off.shape)
        pairs = [(classes[r], classes[c], int(off[r, c])) for r, c in zip(rows, cols, strict=True) if off[r, c] > 0]
        return top_confusions_png(pairs, title)
    plt = _pyplot()
    size = max(3.0, 0.55 * len(classes) + 1.5)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Greens")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(classes)), classes, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=10)
    if len(classes) <= CELL_TEXT_MAX_CLASSES:
        for (row, col), value in np.ndenumerate(matrix):
            color = "white" if value > matrix.max() / 2 else "black"
            axis.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
    figure.colorbar(image, ax=axis, fraction=0.046)
    return _png(figure)


def top_confusions_png(pairs: list[tuple[str, str, int]], title: str) -> bytes:
    """The most frequent (true, predicted, count) errors as horizontal bars: one readable plot at any size."""
    plt = _pyplot()
    pairs = pairs[:20]
    figure, axis = plt.subplots(figsize=(8, 0.3 * max(len(pairs), 3) + 1.2))
    labels = [f"{true} → {predicted}" for true, predicted, _ in pairs]
    axis.barh(range(len(pairs)), [count for _, _, count in pairs], color="tab:green")
    axis.set_yticks(range(len(pairs)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("photos")
    axis.set_title(f"{title} · most frequent confusions" if pairs else f"{title} · no confusions", fontsize=10)
    return _png(figure)


def report_markdown(report: ClassificationReport) -> str:
    """Per-class table for the Dagster UI."""
    lines = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for row in report.per_class:
        lines.append(
            f"| {row['class']} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
        )
    return "\n".join(lines)
