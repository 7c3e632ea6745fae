"""Starting weights: every source resolves offline to safetensors bytes with their sha256, loads into the
backbone only (the head starts fresh), and a wrong architecture or a missing cache entry is a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from earthsnap_assets.ml import weights
from earthsnap_assets.ml.models import create_classifier, pretrained_resolution, validate_backbone
from earthsnap_assets.ml.weights import WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_state(backbone: str = "test_resnet", classes: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = create_classifier(backbone, classes)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)  # distinct from any fresh initialisation
    return model.state_dict()


def test_sources_are_parsed_and_an_unknown_form_is_an_error():
    assert weights.kind_of("none") == "none"
    assert weights.kind_of("timm:resnet50.a1_in1k") == "hub"
    assert weights.kind_of("hf-hub:timm/resnet50.a1_in1k") == "hub"
    assert weights.kind_of("s3://lake/weights/x.safetensors") == "s3"
    assert weights.kind_of("/tmp/x.safetensors") == weights.kind_of("file:///tmp/x.safetensors") == "file"
    with pytest.raises(WeightsError, match="unknown weights source"):
        weights.kind_of("imagenet")
    assert weights.load("none") is None


def test_timm_names_resolve_to_their_hugging_face_repo():
    assert weights.hub_repo("timm:resnet50.a1_in1k") == "timm/resnet50.a1_in1k"
    assert weights.hub_repo("hf-hub:org/repo") == "org/repo"
    with pytest.raises(WeightsError, match="no Hugging Face weights"):
        weights.hub_repo("timm:not_a_model_at_all")


def test_backbones_are_checked_against_timms_registry():
    assert validate_backbone("convnext_tiny") == "convnext_tiny"
    assert validate_backbone("resnet50.a1_in1k") == "resnet50"
    with pytest.raises(ValueError, match="not a timm architecture"):
        validate_backbone("resnet5000")
    assert pretrained_resolution("convnext_tiny", default=64) == 224
    assert pretrained_resolution("not_a_model_at_all", default=64) == 64


def test_bytes_round_trip_with_the_sha256_of_exactly_those_bytes():
    state = trained_state()
    data = weights.to_bytes(state)
    loaded = weights.from_bytes(data, "mem")
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.lineage() == {"weights_source": "mem", "weights_sha256": loaded.sha256}
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())
    with pytest.raises(WeightsError, match="not a safetensors"):
        weights.from_bytes(b"PK\x03\x04 a zip, not safetensors", "bad")


def test_the_backbone_is_loaded_and_the_head_starts_fresh_for_the_new_classes():
    state = trained_state(classes=5)
    pretrained = weights.from_bytes(weights.to_bytes(state), "mem")
    model = create_classifier("test_resnet", num_classes=3, pretrained=pretrained)
    own = model.state_dict()
    assert torch.equal(own["conv1.0.weight"], state["conv1.0.weight"])
    assert own["fc.weight"].shape == (3, own["fc.weight"].shape[1])
    assert torch.count_nonzero(own["fc.weight"]) == 0  # zero head: uniform predictions to start
    report = weights.apply(create_classifier("test_resnet", 3), pretrained)
    assert report.reinitialised_head == ("fc.bias", "fc.weight") and report.missing == ()


def test_weights_of_another_architecture_are_refused():
    pretrained = weights.from_bytes(weights.to_bytes(trained_state("test_convnext")), "convnext weights")
    with pytest.raises(WeightsError, match="belong to another architecture"):
        create_classifier("test_resnet", 3, pretrained=pretrained)


def test_a_file_source_reads_the_file_and_a_missing_one_is_an_error(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(weights.to_bytes(trained_state()))
    assert weights.load(str(path)).sha256 == weights.load(f"file://{path}").sha256
    with pytest.raises(WeightsError, match="does not exist"):
        weights.load(str(tmp_path / "missing.safetensors"))


def _fill_hub_cache(cache: Path, repo: str, data: bytes) -> None:
    """The Hugging Face cache layout, as `huggingface-cli download` leaves it (refs/main -> a snapshot)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / weights.HUB_FILENAME).write_bytes(data)


def test_hub_weights_come_from_the_local_cache_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any attempt to reach the hub would fail loudly
    data = weights.to_bytes(trained_state())
    _fill_hub_cache(tmp_path, "timm/test_resnet.r160_in1k", data)
    loaded = weights.load("timm:test_resnet.r160_in1k", cache_dir=tmp_path)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.source == "timm:test_resnet.r160_in1k"
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        weights.load("hf-hub:timm/resnet50.a1_in1k", cache_dir=tmp_path)
