"""Training: it learns, stops early, weighs classes, prunes, and resumes bit-identically after a kill."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.ml import train as train_module
from earthsnap_assets.ml.checkpoints import LakeCheckpoints, MemoryCheckpoints
from earthsnap_assets.ml.data import ShardStream, child_task, load_split
from earthsnap_assets.ml.models import create_classifier
from earthsnap_assets.ml.train import (
    TrainConfig,
    WarmupCosine,
    class_weights,
    predict_logits,
    train_classifier,
)
from earthsnap_assets.ml.transforms import to_model_input
from earthsnap_assets_tests.ml.training_fixtures import build_tiny_lake, color_squares

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
FAST = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0.5, patience=None, seed=0)


@pytest.fixture(scope="module")
def squares():
    return color_squares(96, size=32, seed=1), color_squares(48, size=32, seed=2)


@pytest.fixture(scope="module")
def few(squares):
    """For tests of the loop's bookkeeping, where learning does not matter: 2 steps an epoch."""
    train, val = squares
    return train.take(slice(0, 32)), val.take(slice(0, 16))


class Killed(Exception):
    pass


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_training_learns_an_easy_task(squares):
    train, val = squares
    result = train_classifier(train, val, FAST, device=CPU)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.best_val_accuracy > 0.6  # chance is 1/3
    assert result.epochs_run == 3 and not (result.stopped_early or result.pruned or result.timed_out)
    assert result.classes == ["red", "green", "blue"] and result.parameter_count > 0
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"} <= set(
        result.history[0]
    )


def test_a_run_killed_after_two_epochs_resumes_to_bit_identical_weights(squares):
    train, val = squares
    config = replace(FAST, drop_rate=0.2)  # dropout: the global RNG must be restored too
    whole_store, store = MemoryCheckpoints(), MemoryCheckpoints()
    whole = train_classifier(train, val, config, device=CPU, checkpoints=whole_store)

    def kill_after_second_epoch(epoch: int, metrics: dict) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_classifier(train, val, config, device=CPU, checkpoints=store, on_epoch=kill_after_second_epoch)
    resumed = train_classifier(train, val, config, device=CPU, checkpoints=store)
    assert whole.resumed_from_epoch is None and resumed.resumed_from_epoch == 1
    assert resumed.epochs_run == 3 and store.saves == 3
    _assert_same_tensors(whole.state_dict, resumed.state_dict)
    _assert_same_tensors(whole_store.load()["parts"]["model"], store.load()["parts"]["model"])
    drop_timing = [{k: v for k, v in h.items() if "second" not in k} for h in whole.history]
    assert drop_timing == [{k: v for k, v in h.items() if "second" not in k} for h in resumed.history]


def test_a_checkpoint_of_another_config_is_not_resumed(few):
    train, val = few
    blobs = MemoryBlobs()
    store = LakeCheckpoints(blobs, "lake", "checkpoints/run.pt")
    assert store.load() is None
    first = train_classifier(train, val, replace(FAST, epochs=1), device=CPU, checkpoints=store)
    assert blobs.exists("lake", "checkpoints/run.pt") and store.load()["progress"]["next_epoch"] == 1
    again = train_classifier(train, val, replace(FAST, epochs=1), device=CPU, checkpoints=store)
    assert again.resumed_from_epoch == 0 and again.history == first.history  # finished: nothing to redo
    other = train_classifier(train, val, replace(FAST, epochs=1, seed=1), device=CPU, checkpoints=store)
    assert other.resumed_from_epoch is None


def test_early_stopping_keeps_the_best_epoch_and_breaks_ties_by_val_loss(few, monkeypatch):
    scripted = iter([(0.5, 1.0), (0.6, 0.9), (0.6, 0.8), (0.55, 0.7), (0.6, 0.85), (0.9, 0.1)])

    def fake_evaluate(*args, **kwargs):
        accuracy, loss = next(scripted)
        return {"val_accuracy": accuracy, "val_loss": loss}

    monkeypatch.setattr(train_module, "_evaluate", fake_evaluate)
    train, val = few
    result = train_classifier(train, val, replace(FAST, epochs=6, patience=2), device=CPU)
    assert result.best_epoch == 2 and result.best_val_loss == 0.8  # tie at 0.6 goes to the lower loss
    assert result.stopped_early and result.epochs_run == 5


def test_keep_last_returns_the_end_of_the_schedule_not_the_best_val_epoch(few, monkeypatch):
    scripted = iter([(0.9, 0.1), (0.5, 1.0), (0.6, 0.9)])  # the best val accuracy comes first
    monkeypatch.setattr(
        train_module, "_evaluate", lambda *a, **k: dict(zip(("val_accuracy", "val_loss"), next(scripted), strict=True))
    )
    train, val = few
    result = train_classifier(train, val, replace(FAST, epochs=3, patience=None, keep="last"), device=CPU)
    assert result.best_epoch == 2 and result.best_val_accuracy == 0.6
    with pytest.raises(ValueError, match="keep must be"):
        replace(FAST, keep="median")


def test_class_weighting_changes_the_loss(few):
    train = color_squares(32, size=32, seed=3, weights=[0.7, 0.2, 0.1])
    val = few[1]
    config = replace(FAST, epochs=1)
    plain = train_classifier(train, val, config, device=CPU)
    weighted = train_classifier(train, val, replace(config, class_weighting=True), device=CPU)
    assert plain.history[0]["train_loss"] != weighted.history[0]["train_loss"]
    weights = class_weights(np.array([3, 1, 0]))
    assert torch.allclose(weights, torch.tensor([2 / 3, 2.0, 0.0]))


def test_should_prune_and_the_time_limit_stop_a_run(few):
    train, val = few
    seen = []

    def prune_at_second_epoch(epoch: int, accuracy: float) -> bool:
        seen.append(epoch)
        return epoch == 1

    pruned = train_classifier(train, val, replace(FAST, epochs=5), device=CPU, should_prune=prune_at_second_epoch)
    assert pruned.pruned and pruned.epochs_run == 2 and seen == [0, 1]
    timed = train_classifier(train, val, replace(FAST, epochs=5, max_train_seconds=0.0), device=CPU)
    assert timed.timed_out and timed.epochs_run == 1


def test_predict_logits_are_the_eval_mode_outputs_of_the_serving_transform(few):
    _, val = few
    torch.manual_seed(0)
    model = create_classifier("test_resnet", 3)
    torch.nn.init.normal_(model.get_classifier().weight)
    logits = predict_logits(model, val.pixels[:10], batch_size=4, device=CPU)
    with torch.inference_mode():
        expected = model.eval()(to_model_input(val.pixels[:10])).numpy()
    assert logits.shape == (10, 3) and np.allclose(logits, expected, atol=1e-5)


def test_warmup_then_cosine_decay_to_zero():
    schedule = WarmupCosine(warmup_steps=4, total_steps=12)
    factors = [schedule(step) for step in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[4:])) and factors[-1] == 0.0


def test_training_streams_shards_from_the_lake():
    lake = build_tiny_lake()
    index = lake.groups["flowers"]
    task = child_task(index, "flowers")
    stream = ShardStream(lake.blobs, lake.bucket, index, "train", task, seed=0)
    val = load_split(lake.blobs, lake.bucket, index, "val", task)
    result = train_classifier(stream, val, replace(FAST, epochs=1, batch_size=4), device=CPU)
    assert result.classes == ["rose", "tulip"] and result.history[0]["images_per_second"] > 0
