"""The process group of a data-parallel run, as the training loop sees it: who am I, and what rank 0 said.

The training loop calls these helpers unconditionally; without an initialised `torch.distributed` group each
one is the single-process identity (rank 0 of 1, no communication), so one code path trains both ways.

Rank 0 is the run's voice: it alone restores and writes checkpoints, evaluates, decides whether to stop and
calls the logging callbacks; every decision that changes the loop reaches the other ranks by broadcast, so
all ranks run the same epochs and steps (DistributedDataParallel deadlocks otherwise).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from earthsnap_assets.ml.checkpoints import Stateful, from_bytes, to_bytes
from earthsnap_assets.ml.feeding import Share

T = TypeVar("T")
GROUP_TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a dead or stuck rank


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def share() -> Share:
    """This process's rank and the world size (0 of 1 outside a process group)."""
    return Share(dist.get_rank(), dist.get_world_size()) if is_distributed() else Share()


def is_rank_zero() -> bool:
    return share().rank == 0


def check_world_size(expected: int) -> None:
    """Refuse to train on another number of processes than the config asks for (the batch split follows it)."""
    actual = share().world_size
    if actual != expected:
        hint = " (launch with train_distributed or torchrun)" if actual == 1 else ""
        raise ValueError(f"config.world_size is {expected} but {actual} process(es) train{hint}")


def from_rank_zero(make: Callable[[], T]) -> T:
    """`make()` on rank 0, its (picklable) result on every rank; other ranks never call `make`."""
    if not is_distributed():
        return make()
    box = [make() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_restored(progress: dict | None, parts: dict[str, Stateful]) -> dict | None:
    """Rank 0's restored checkpoint (progress, model, optimizer, scheduler) on every rank.

    Only rank 0 reads the store; the state travels serialised as a checkpoint does (tensors on the CPU), so
    another rank loads exactly what rank 0 loaded, optimizer moments included.
    """
    if not is_distributed():
        return progress

    def snapshot() -> bytes | None:
        if progress is None:
            return None
        return to_bytes({"progress": progress, "parts": {name: p.state_dict() for name, p in parts.items()}})

    blob = from_rank_zero(snapshot)
    if blob is None:
        return None
    state = from_bytes(blob)
    for name, part in parts.items():
        part.load_state_dict(state["parts"][name])
    return state["progress"]


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped in DistributedDataParallel inside a process group, else `model` itself.

    DDP averages gradients over ranks in the backward pass, so with equal shares each step applies the
    gradient of the whole global batch. BatchNorm layers normalise with their own rank's rows (and running
    statistics follow rank 0's, which DDP broadcasts every forward); `torch.nn.SyncBatchNorm.convert_sync_batchnorm`
    would make them global, at one all-reduce per layer, on CUDA only.
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_over_ranks(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sums over ranks (float64, on the first value's device: nccl reduces CUDA tensors only) of scalars."""
    device = values[0].device
    stacked = torch.stack([v.detach().to(device, torch.float64).reshape(()) for v in values])
    if is_distributed():
        dist.all_reduce(stacked)
    return list(stacked.unbind())


def rank_seed(seed: int) -> int:
    """A per-rank variant of a seed: rank 0 keeps it (single-process runs are unchanged), others mix in the rank.

    For global-RNG layers (dropout): equal seeds would give every rank the same masks for different samples.
    """
    rank = share().rank
    return seed if rank == 0 else int(np.random.SeedSequence([seed & 0xFFFFFFFF, rank]).generate_state(1)[0])


@dataclass(frozen=True)
class Rendezvous:
    """Where a group's processes meet (torchrun's MASTER_ADDR / MASTER_PORT) and how many they are."""

    addr: str
    port: int
    world_size: int

    @classmethod
    def from_env(cls) -> Rendezvous:
        """The group torchrun describes in the environment (WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
        return cls(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]))

    @classmethod
    def local(cls, world_size: int) -> Rendezvous:
        """A free port on this machine, for a group of local processes."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return cls("127.0.0.1", probe.getsockname()[1], world_size)

    def env(self, rank: int, local_rank: int) -> dict[str, str]:
        """torchrun's variables for `rank`: code that reads them finds what torchrun would have set."""
        return {
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.addr,
            "MASTER_PORT": str(self.port),
        }


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(
    rendezvous: Rendezvous, rank: int, local_rank: int, device_type: str = "cuda"
) -> Iterator[torch.device]:
    """Join the group as `rank` and yield this rank's device (cuda:local_rank, or the CPU); leave it after.

    nccl on CUDA, gloo on the CPU. Under torchrun: `process_group(Rendezvous.from_env(), int(os.environ["RANK"]),
    int(os.environ["LOCAL_RANK"]))`, or simply `process_group_from_env()`.
    """
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device_type),
        init_method=f"tcp://{rendezvous.addr}:{rendezvous.port}",
        rank=rank,
        world_size=rendezvous.world_size,
        timeout=GROUP_TIMEOUT,
    )
    try:
        yield device
    finally:
        dist.destroy_process_group()


def process_group_from_env(device_type: str | None = None) -> contextlib.AbstractContextManager[torch.device]:
    """`process_group` as torchrun describes it (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    return process_group(Rendezvous.from_env(), rank, local_rank, device_type)
