import io

import numpy as np
import pytest
from PIL import Image

from earthsnap_assets.ml.evaluate import (
    SparseConfusion,
    StreamingClassification,
    classification_report,
    confusion_matrix_png,
    expected_calibration_error,
    latency_ms_per_image,
    top_k_accuracy,
    top_of,
)


def test_report_counts_match_a_hand_computed_example():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    labels = np.array([0, 1, 1, 2])
    report = classification_report(probs, labels, ["a", "b", "c"])
    assert report.accuracy == pytest.approx(0.75)
    assert report.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    b = next(row for row in report.per_class if row["class"] == "b")
    assert b["precision"] == 1.0 and b["recall"] == 0.5 and b["f1"] == pytest.approx(2 / 3)
    assert report.macro_f1 == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))
    assert report.top_k[3] == 1.0 and top_k_accuracy(probs, labels, 2) == 1.0


def test_ece_is_zero_when_confidence_equals_accuracy_and_large_when_overconfident():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    half = np.tile([0.5, 0.5], (8, 1))
    half[:, 0] += 1e-9
    assert expected_calibration_error(half, labels) == pytest.approx(0.0, abs=1e-6)
    confident_wrong = np.tile([0.99, 0.01], (8, 1))
    assert expected_calibration_error(confident_wrong, labels) == pytest.approx(0.49, abs=1e-6)


def test_confusion_plot_is_a_png():
    png = confusion_matrix_png([[3, 1], [0, 4]], ["rose", "tulip"], "child flowers")
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_latency_is_measured_per_image():
    calls = []
    latency = latency_ms_per_image(lambda x: calls.append(len(x)) or x, np.zeros((4, 8, 8, 3)), repeats=5)
    assert latency >= 0 and calls == [1] * 6


def test_streamed_report_equals_the_dense_one():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=300)
    labels = rng.integers(0, 7, size=300)
    classes = [f"c{i}" for i in range(7)]
    dense = classification_report(probs, labels, classes)
    stream = StreamingClassification(classes)
    for start in range(0, 300, 64):  # batches, as the hierarchical evaluation feeds it
        top_labels, top_probs = top_of(probs[start : start + 64], 5)
        stream.update(labels[start : start + 64], top_labels, top_probs)
    streamed = stream.report()
    assert streamed.accuracy == pytest.approx(dense.accuracy) and streamed.top_k == pytest.approx(dense.top_k)
    assert streamed.macro_f1 == pytest.approx(dense.macro_f1) and streamed.ece == pytest.approx(dense.ece)
    assert streamed.per_class == dense.per_class
    matrix = np.asarray(dense.confusion)
    np.fill_diagonal(matrix, 0)
    assert {(p["true"], p["predicted"]): p["count"] for p in streamed.confusion_pairs} == {
        (classes[t], classes[q]): int(matrix[t, q]) for t, q in zip(*np.nonzero(matrix), strict=True)
    }
    assert streamed.confusion == []  # no dense matrix in a streamed report


def test_sparse_confusion_gives_group_and_within_group_views():
    confusion = SparseConfusion(5)
    confusion.add(np.array([0, 1, 1, 2, 4, 4]), np.array([0, 2, 2, 1, 3, 4]))
    confusion.COMPACT_EVERY = 1
    confusion.add(np.array([3]), np.array([3]))
    assert confusion.top_errors(2) == [(1, 2, 2), (2, 1, 1)]
    assert confusion.submatrix(np.array([1, 2])).tolist() == [[0, 2], [1, 0]]
    group = np.array([0, 1, 1, 2, 2])
    assert confusion.mapped(group, 3).tolist() == [[1, 0, 0], [0, 3, 0], [0, 0, 3]]
    tp, predicted, support = confusion.counts()
    assert tp.tolist() == [1, 0, 0, 1, 1] and support.tolist() == [1, 2, 1, 1, 2] and predicted.sum() == 7


def test_a_large_confusion_is_plotted_as_its_top_pairs_not_one_cell_per_label():
    classes = [f"species-{i}" for i in range(500)]
    matrix = np.eye(500, dtype=np.int64) * 3
    matrix[7, 9] = 5
    width, _ = Image.open(io.BytesIO(confusion_matrix_png(matrix, classes, "parent"))).size
    assert width <= 1000  # a bar chart of the top pairs; a 500-label heatmap would be ~28,000 px wide
    width, _ = Image.open(io.BytesIO(confusion_matrix_png(np.eye(30, dtype=np.int64), classes[:30], "child"))).size
    assert 1000 < width < 3000  # up to 40 labels: the heatmap
