from earthsnap_assets.ml.gate import evaluate_gate


def test_gate_needs_the_minimum():
    result = evaluate_gate(0.4, min_accuracy=0.5, production_accuracy=None, tolerance=0.02)
    assert not result.passed and "minimum" in result.reason and result.tag == "failed"


def test_gate_compares_with_production_within_tolerance():
    assert evaluate_gate(0.79, 0.5, production_accuracy=0.80, tolerance=0.02).passed
    worse = evaluate_gate(0.70, 0.5, production_accuracy=0.80, tolerance=0.02)
    assert not worse.passed and "production" in worse.reason


def test_first_version_passes_on_the_minimum_alone():
    assert evaluate_gate(0.6, 0.5, production_accuracy=None, tolerance=0.0).passed
