"""Transfer learning, proved offline: a network pretrained by this test on one synthetic task, stored in the
real object store as safetensors and fine-tuned on another task, beats the same network from scratch after
one epoch. Plus the fine-tuning options a practitioner expects (layer-wise LR decay, a frozen warm-up)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from earthsnap_assets.ml import weights
from earthsnap_assets.ml.data import LabeledArrays
from earthsnap_assets.ml.models import create_classifier
from earthsnap_assets.ml.train import TrainConfig, _optimizer, train_classifier
from earthsnap_assets.resources.object_store import ObjectStore

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TASK_A = [0, 45, 90, 135]  # stripe orientations (degrees) the backbone is pretrained on
TASK_B = [22, 67, 112, 157]  # other orientations, other classes: the same low-level features serve
MARGIN = 0.12  # measured: +0.16 to +0.25 over scratch (about chance, 0.25) across seeds


def stripes(n: int, angles: list[int], seed: int, size: int = 32) -> LabeledArrays:
    """Two-colour stripes at a class's orientation, random frequency, phase, colours and noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(angles), n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        theta = np.deg2rad(angles[label] + rng.normal(0, 5))
        wave = np.sin(rng.uniform(0.25, 0.6) * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3))
        ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        image = np.where(wave[..., None] > 0, ink, paper) + rng.normal(0, 20, (size, size, 3))
        out[i] = np.clip(image, 0, 255)
    return LabeledArrays(out, labels.astype(np.int64), [f"deg{a}" for a in angles])


@pytest.fixture(scope="module")
def pretrained_uri(stack) -> str:
    """Task A learnt for 10 epochs, saved as safetensors in the test stack's S3 (SeaweedFS)."""
    config = TrainConfig(backbone="test_resnet", epochs=10, batch_size=32, lr=3e-3, warmup_epochs=0.5, patience=None)
    result = train_classifier(stripes(800, TASK_A, 1), stripes(200, TASK_A, 2), config, device=CPU)
    assert result.best_val_accuracy > 0.6  # the backbone did learn task A
    store = ObjectStore()
    store.ensure_bucket(store.lake_bucket)
    key = f"test-weights/{uuid.uuid4().hex}/task-a.safetensors"
    store.write(store.lake_bucket, key, weights.to_bytes(result.state_dict))
    return store.uri(store.lake_bucket, key)


@pytest.mark.parametrize("seed", [10, 20])
def test_pretrained_weights_from_s3_beat_scratch_after_one_epoch(pretrained_uri: str, seed: int):
    pretrained = weights.load(pretrained_uri, ObjectStore().read_uri)
    assert pretrained.source == pretrained_uri and len(pretrained.sha256) == 64
    train, val = stripes(160, TASK_B, seed), stripes(200, TASK_B, seed + 1)
    config = TrainConfig(backbone="test_resnet", epochs=1, batch_size=16, lr=2e-3, warmup_epochs=0.0, seed=seed)
    scratch = train_classifier(train, val, config, device=CPU).best_val_accuracy
    tuned = train_classifier(train, val, config, device=CPU, init=pretrained).best_val_accuracy
    assert tuned >= scratch + MARGIN, (scratch, tuned)


def test_unreadable_s3_weights_are_a_clear_error(stack):
    store = ObjectStore()
    with pytest.raises(weights.WeightsError, match="cannot read weights"):
        weights.load(store.uri(store.lake_bucket, "test-weights/missing.safetensors"), store.read_uri)


def test_layer_decay_gives_early_layers_smaller_learning_rates():
    model = create_classifier("test_resnet", 3)
    optimizer = _optimizer(model, TrainConfig(backbone="test_resnet", lr=1e-3, layer_decay=0.5))
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(model.conv1[0].weight)] < lrs[id(model.fc.weight)] == pytest.approx(1e-3)
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(model.fc.bias) in no_decay and id(model.fc.weight) not in no_decay
    with pytest.raises(ValueError, match="layer_decay"):
        TrainConfig(layer_decay=1.5)


def test_a_frozen_warm_up_trains_only_the_head_then_everything():
    data = stripes(64, TASK_B, 5)
    start = weights.from_bytes(weights.to_bytes(create_classifier("test_resnet", 4).state_dict()), "mem")
    config = TrainConfig(backbone="test_resnet", epochs=2, batch_size=16, warmup_epochs=0.0, freeze_epochs=1)

    def after(epochs: int):  # stop (prune) after `epochs` epochs: the result holds that epoch's weights
        return train_classifier(data, data, config, device=CPU, init=start, should_prune=lambda e, _: e + 1 >= epochs)

    warm_up, full = after(1).state_dict, after(2).state_dict
    assert torch.equal(warm_up["conv1.0.weight"], start.state_dict["conv1.0.weight"])
    assert not torch.equal(warm_up["fc.weight"], torch.zeros_like(warm_up["fc.weight"]))
    assert not torch.equal(full["conv1.0.weight"], start.state_dict["conv1.0.weight"])
    with pytest.raises(ValueError, match="freeze_epochs"):
        TrainConfig(epochs=2, freeze_epochs=2)
