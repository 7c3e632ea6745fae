"""CUDA smoke test: runs only where a GPU is present (CI machines have none; the suite passes without it)."""

import numpy as np
import pytest
import torch

from earthsnap_assets.ml.data import LabeledArrays
from earthsnap_assets.ml.device import autocast, pick_device, prepare_model
from earthsnap_assets.ml.models import create_classifier
from earthsnap_assets.ml.train import TrainConfig, predict_logits, train_classifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _colour_task(n: int = 64) -> LabeledArrays:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    pixels = rng.integers(0, 40, (n, 32, 32, 3), dtype=np.uint8)
    pixels[labels == 1, :, :, 0] += 180  # class 1 is red
    return LabeledArrays(pixels, labels.astype(np.int64), ["grey", "red"])


def test_training_step_runs_in_bf16_channels_last_on_cuda():
    device = pick_device()
    assert device.type == "cuda"
    model = prepare_model(create_classifier("test_resnet", 2), device)
    assert next(model.parameters()).is_cuda
    batch = torch.zeros(4, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with autocast(device):
        logits = model(batch)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_a_short_run_learns_an_easy_task_on_cuda():
    data = _colour_task()
    result = train_classifier(data, data, TrainConfig(backbone="test_resnet", epochs=3, batch_size=16, patience=None))
    assert result.best_val_accuracy > 0.9
    model = create_classifier("test_resnet", 2)
    model.load_state_dict(result.state_dict)
    logits = predict_logits(model.to("cuda"), data.pixels, 32, torch.device("cuda"))
    assert logits.shape == (len(data), 2)
