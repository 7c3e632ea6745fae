"""Every offered backbone builds offline and classifies the image sizes datasets use."""

import pytest
import torch

from earthsnap_assets.ml.device import autocast, pick_device, prepare_model, to_device_batch
from earthsnap_assets.ml.models import BACKBONES, DEFAULT_BACKBONE, create_classifier, parameter_count

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_builds_offline_and_gives_logits_at_32_and_64_px(backbone):
    torch.manual_seed(0)
    model = create_classifier(backbone, num_classes=5, drop_rate=0.1).eval()
    with torch.inference_mode():
        for size in (32, 64):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert 50_000 < parameter_count(model) < 6_000_000


def test_a_new_classifier_starts_from_uniform_predictions():
    model = create_classifier(DEFAULT_BACKBONE, num_classes=3).train()
    logits = model(torch.randn(4, 3, 32, 32))
    assert torch.equal(logits, torch.zeros_like(logits))


def test_parameter_count_counts_every_parameter():
    model = create_classifier(DEFAULT_BACKBONE, num_classes=3)
    assert parameter_count(model) == sum(p.numel() for p in model.parameters())
    assert parameter_count(create_classifier(DEFAULT_BACKBONE, num_classes=7)) > parameter_count(model)


def test_a_single_class_needs_no_network():
    with pytest.raises(ValueError, match="at least 2 classes"):
        create_classifier(DEFAULT_BACKBONE, num_classes=1)


def test_cpu_device_helpers_leave_models_and_batches_as_they_are():
    cpu = pick_device("cpu")
    assert cpu == torch.device("cpu") and pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = prepare_model(create_classifier(DEFAULT_BACKBONE, num_classes=3), cpu)
    batch = to_device_batch(torch.randn(2, 3, 32, 32), cpu)
    assert batch.is_contiguous()
    with autocast(cpu):
        assert model(batch).dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_asking_for_cuda_without_it_fails_loudly():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")
