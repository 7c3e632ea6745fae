"""CUDA smoke tests: run only where a GPU is present (CI machines have none; the suite passes without it).

Self-contained (no conftest fixtures), so a GPU machine without the platform's services can run them:
`PYTHONPATH=. pytest -c /dev/null --noconftest earthsnap_assets_tests/ml/test_cuda_smoke.py`.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from earthsnap_assets.ml.data import LabeledArrays
from earthsnap_assets.ml.device import autocast, pick_device, prepare_model
from earthsnap_assets.ml.distributed import train_distributed
from earthsnap_assets.ml.feeding import RESIDENT_FRACTION, make_feed
from earthsnap_assets.ml.models import create_classifier
from earthsnap_assets.ml.ranks import Rendezvous, process_group
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


def _epoch_on(data: LabeledArrays, device: torch.device, **feed_options) -> tuple[str, list]:
    feed = make_feed(data, 16, device, **feed_options)
    batches = [(x.float().cpu(), y.cpu()) for x, y in feed.epoch(0, torch.Generator().manual_seed(3))]
    return feed.store.kind, batches


@pytest.mark.parametrize("fraction, kind", [(RESIDENT_FRACTION, "resident"), (0.0, "pinned")])
def test_gpu_feeds_give_the_cpu_batches(fraction: float, kind: str):
    """Same rows, same augmentation draws as the CPU path; only float rounding of the GPU kernels differs."""
    data = _colour_task(90)  # 6 batches: the two pinned slots are each refilled twice
    cpu_kind, expected = _epoch_on(data, torch.device("cpu"))
    gpu_kind, got = _epoch_on(data, torch.device("cuda"), resident_fraction=fraction)
    assert (cpu_kind, gpu_kind) == ("host", kind) and len(got) == len(expected) == 6
    for (x, y), (gx, gy) in zip(expected, got, strict=True):
        assert torch.equal(y, gy)
        assert torch.allclose(x, gx, atol=1e-3)


def test_pinned_feed_trains_like_the_resident_one():
    data = _colour_task()
    config = TrainConfig(backbone="test_resnet", epochs=3, batch_size=16, patience=None)
    resident = train_classifier(data, data, config)
    pinned = train_classifier(data, data, replace(config, gpu_resident_fraction=0.0))
    assert resident.best_val_accuracy > 0.9 and pinned.best_val_accuracy > 0.9


def test_a_one_gpu_nccl_group_trains_through_ddp():
    data = _colour_task()
    config = TrainConfig(backbone="test_resnet", epochs=2, batch_size=16, patience=None)
    with process_group(Rendezvous.local(1), 0, 0, "cuda") as device:
        result = train_classifier(data, data, config, device=device)
    assert result.epochs_run == 2 and np.isfinite(result.history[-1]["train_loss"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_train_data_parallel():
    data = _colour_task()
    config = TrainConfig(backbone="test_resnet", epochs=3, batch_size=16, patience=None, world_size=2)
    result = train_distributed(data, data, config, device_type="cuda")
    assert result.best_val_accuracy > 0.9
