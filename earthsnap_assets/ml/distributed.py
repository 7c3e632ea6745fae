"""Data-parallel training on several local devices: one process per GPU (or CPU process, with gloo).

`train_distributed` is `train_classifier` for `config.world_size` processes. The calling process is rank 0:
the checkpoint store, `on_epoch` and `should_prune` stay where the caller made them (an MLflow run or an
Optuna trial need not be picklable), and the result is rank 0's `TrainResult`. The other ranks are spawned
processes that get the data (in-memory pixels through shared memory, not one pickled copy per rank), train
on their share of every batch and return nothing.

Under torchrun, skip this module: every rank runs
`with ranks.process_group_from_env() as device: train_classifier(..., device=device)`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from earthsnap_assets.ml.checkpoints import CheckpointStore
from earthsnap_assets.ml.data import LabeledArrays
from earthsnap_assets.ml.ranks import Rendezvous, process_group
from earthsnap_assets.ml.train import TrainConfig, TrainData, TrainResult, train_classifier
from earthsnap_assets.ml.weights import Pretrained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _SharedArrays:
    """`LabeledArrays` as tensors in shared memory: spawned ranks map them instead of unpickling copies."""

    pixels: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    @classmethod
    def of(cls, data: LabeledArrays) -> _SharedArrays:
        pixels = torch.from_numpy(np.ascontiguousarray(data.pixels)).share_memory_()
        return cls(pixels, torch.from_numpy(data.labels).share_memory_(), list(data.classes))

    def arrays(self) -> LabeledArrays:
        return LabeledArrays(self.pixels.numpy(), self.labels.numpy(), self.classes)


def _portable(data: TrainData) -> Any:
    return _SharedArrays.of(data) if isinstance(data, LabeledArrays) else data


def _local(data: Any) -> TrainData:
    return data.arrays() if isinstance(data, _SharedArrays) else data


def _rank_main(
    rank: int,
    rendezvous: Rendezvous,
    device_type: str,
    train: Any,
    val: LabeledArrays,
    config: TrainConfig,
    threads: int,
    init: Pretrained | None = None,
) -> None:
    """A spawned rank: torchrun's environment, then the same training loop without store or callbacks."""
    torch.set_num_threads(threads)
    os.environ.update(rendezvous.env(rank, rank))
    with process_group(rendezvous, rank, rank, device_type) as device:
        train_classifier(_local(train), val, config, device=device, init=init)


def train_distributed(
    train: TrainData,
    val: LabeledArrays,
    config: TrainConfig,
    *,
    device_type: str | None = None,
    checkpoints: CheckpointStore | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    should_prune: Callable[[int, float], bool] | None = None,
    init: Pretrained | None = None,
) -> TrainResult:
    """`train_classifier` data-parallel over `config.world_size` local devices (CUDA, else CPU processes).

    Each process trains on `config.batch_size / world_size` rows of every global batch; gradients are
    averaged by DDP. Only this process (rank 0) reads and writes `checkpoints` and calls the callbacks, so a
    killed run resumes from its checkpoint like a single-process one. Spawned ranks use this process's
    intra-op thread count. If rank 0 fails, the other ranks are terminated.
    """
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    world = config.world_size
    if device_type == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(f"{world} processes need {world} GPUs, found {torch.cuda.device_count()}")
    callbacks = {"checkpoints": checkpoints, "on_epoch": on_epoch, "should_prune": should_prune, "init": init}
    if world == 1:
        device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
        return train_classifier(train, val, config, device=device, **callbacks)
    rendezvous = Rendezvous.local(world)
    context = mp.get_context("spawn")
    portable, threads = _portable(train), torch.get_num_threads()
    others = [
        context.Process(target=_rank_main, args=(rank, rendezvous, device_type, portable, val, config, threads, init))
        for rank in range(1, world)
    ]
    for process in others:
        process.start()
    log.info("data parallel: %d processes on %s, port %d", world, device_type, rendezvous.port)
    try:
        with process_group(rendezvous, 0, 0, device_type) as device:
            result = train_classifier(train, val, config, device=device, **callbacks)
    except BaseException:
        _stop(others)
        raise
    _join(others)
    return result


def _stop(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=30)


def _join(processes: list[Any]) -> None:
    for process in processes:
        process.join()
    failed = {i + 1: p.exitcode for i, p in enumerate(processes) if p.exitcode != 0}
    if failed:
        raise RuntimeError(f"data-parallel ranks exited with errors (rank: exit code): {failed}")
