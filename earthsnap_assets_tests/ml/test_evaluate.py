import numpy as np
import pytest

from earthsnap_assets.ml.evaluate import (
    classification_report,
    confusion_matrix_png,
    expected_calibration_error,
    latency_ms_per_image,
    top_k_accuracy,
)
from earthsnap_assets.ml.hierarchy import Hierarchy, combine, hierarchical_report


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


HIERARCHY = Hierarchy(groups=["birds", "flowers"], species={"birds": ["robin"], "flowers": ["rose", "tulip"]})


def test_combined_probabilities_are_products_and_sum_to_one():
    parent = np.array([[0.25, 0.75], [0.9, 0.1]])
    children = {"birds": None, "flowers": np.array([[0.6, 0.4], [0.5, 0.5]])}
    probs = combine(parent, children, HIERARCHY)
    assert HIERARCHY.flat_species == ["robin", "rose", "tulip"]
    assert np.allclose(probs[0], [0.25, 0.45, 0.3]) and np.allclose(probs.sum(axis=1), 1)


def test_a_multi_species_group_without_child_is_an_error():
    with pytest.raises(ValueError, match="no child model"):
        combine(np.array([[0.5, 0.5]]), {"birds": None, "flowers": None}, HIERARCHY)


def test_errors_split_into_routing_and_within_group():
    parent = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    children = {"birds": None, "flowers": np.array([[0.5, 0.5], [0.9, 0.1], [0.9, 0.1]])}
    report = hierarchical_report(parent, children, ["rose", "rose", "tulip"], HIERARCHY)
    assert report["routing_errors"] == 1  # the first rose went to birds
    assert report["within_group_errors"] == 1  # the tulip was routed right, then called a rose
    assert report["top1_accuracy"] == pytest.approx(1 / 3)
