"""Data-parallel training on the CPU (gloo, 2 processes): the same run as one process, and exact resumes.

test_convnext normalises with LayerNorm (no BatchNorm), so two ranks of 8 rows compute the same
per-sample function as one process of 16 and averaging their gradients gives the 16-row gradient: the runs
differ only by float summation order. With BatchNorm each rank would normalise over its own 8 rows and the
curves would differ for real (SyncBatchNorm would fix that, on CUDA only).
"""

from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from earthsnap_assets.ml.checkpoints import MemoryCheckpoints
from earthsnap_assets.ml.distributed import train_distributed
from earthsnap_assets.ml.feeding import Share, make_feed
from earthsnap_assets.ml.ranks import Rendezvous
from earthsnap_assets.ml.train import TrainConfig, train_classifier
from earthsnap_assets_tests.ml.distributed_workers import FolderCheckpoints, Killed, torchrun_rank
from earthsnap_assets_tests.ml.training_fixtures import color_squares

CPU = torch.device("cpu")
CONFIG = TrainConfig(backbone="test_convnext", epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0.5, patience=None)
PAIR = replace(CONFIG, world_size=2)
# Relative tolerance on every epoch's train and val loss, one process vs two. Observed: <= 2e-7 (float32
# summation order: per-rank sums then an all-reduce); a real difference (another batch split, other
# augmentation draws, a rank on stale weights) moves these losses by 1e-3 and more.
LOSS_RTOL = 1e-4
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Grad strides do not match bucket view strides"),
]


@pytest.fixture(scope="module")
def squares():
    return color_squares(64, size=32, seed=1), color_squares(16, size=32, seed=2)


@pytest.fixture(scope="module")
def pair_run(squares):
    """An uninterrupted 2-process run, with its checkpoints."""
    store = MemoryCheckpoints()
    return train_distributed(*squares, PAIR, device_type="cpu", checkpoints=store), store


def test_two_processes_follow_the_single_process_loss_curve(squares, pair_run):
    single = train_classifier(*squares, CONFIG, device=CPU)
    pair, store = pair_run
    assert pair.epochs_run == single.epochs_run == 3 and store.saves == 3
    for one, two in zip(single.history, pair.history, strict=True):
        for key in ("train_loss", "val_loss"):
            assert two[key] == pytest.approx(one[key], rel=LOSS_RTOL), key
        assert two["train_accuracy"] == one["train_accuracy"] and two["val_accuracy"] == one["val_accuracy"]
    assert single.best_epoch == pair.best_epoch
    for name, weights in single.state_dict.items():
        assert torch.allclose(pair.state_dict[name], weights, rtol=1e-3, atol=1e-4), name


def test_only_rank_zero_writes_checkpoints_and_a_killed_run_resumes_exactly(squares, pair_run, tmp_path):
    """torchrun style: both ranks get the same store and callback; rank 0 alone uses them."""
    train, val = squares
    rendezvous = Rendezvous.local(2)
    with pytest.raises(ProcessException):  # rank 0's Killed, or rank 1 losing its peer: whichever is first
        mp.spawn(torchrun_rank, args=(rendezvous, train, val, PAIR, tmp_path, 1), nprocs=2)
    assert [p.name for p in tmp_path.glob("killed-*")] == ["killed-rank0-epoch1"]  # on_epoch ran on rank 0 alone
    store = FolderCheckpoints(tmp_path)
    assert store.writers() == {"saves-rank0": [1, 2]}  # epochs 0 and 1, rank 1 never wrote
    resumed = train_distributed(train, val, PAIR, device_type="cpu", checkpoints=store)
    whole, _ = pair_run
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 3
    assert store.writers() == {"saves-rank0": [1, 2, 3]}
    assert whole.state_dict.keys() == resumed.state_dict.keys()
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)
    losses = [h["train_loss"] for h in resumed.history]
    assert losses == [h["train_loss"] for h in whole.history]


def test_a_failure_on_rank_zero_stops_the_other_ranks(squares):
    def fail(epoch: int, metrics: dict) -> None:
        raise Killed

    with pytest.raises(Killed):
        train_distributed(*squares, replace(PAIR, epochs=1), device_type="cpu", on_epoch=fail)
    assert not mp.active_children()


def test_ranks_split_every_global_batch_into_the_single_process_batch(squares):
    """Rows and augmented inputs of rank 0 and rank 1, side by side, are the single-process batch."""
    train, _ = squares
    train = train.take(slice(0, 42))  # batches of 16, 16, 10: the last one splits 5 / 5

    def epoch(share: Share) -> list[tuple[torch.Tensor, torch.Tensor]]:
        feed = make_feed(train, 16, CPU, share=share)
        return list(feed.epoch(0, torch.Generator().manual_seed(7)))

    whole, first, second = epoch(Share()), epoch(Share(0, 2)), epoch(Share(1, 2))
    assert [len(y) for _, y in whole] == [16, 16, 10] and [len(y) for _, y in first] == [8, 8, 5]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, first, second, strict=True):
        assert torch.equal(y, torch.cat([y0, y1]))
        assert torch.allclose(x, torch.cat([x0, x1]), atol=1e-6)


def test_share_bounds_and_which_batches_train():
    assert [Share(r, 3).bounds(10) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert Share().bounds(5) == (0, 5) and Share().trains_on(2) and not Share().trains_on(1)
    assert Share(1, 2).trains_on(4) and not Share(1, 2).trains_on(3)  # 3 rows: one rank would get 1
    with pytest.raises(ValueError, match="split"):
        TrainConfig(batch_size=6, world_size=4)


def test_a_config_for_two_processes_refuses_to_train_alone(squares):
    with pytest.raises(ValueError, match="train_distributed or torchrun"):
        train_classifier(*squares, PAIR, device=CPU)
