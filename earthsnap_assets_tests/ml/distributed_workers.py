"""What spawned ranks of the data-parallel tests run: importable by name, and light (no test fixtures)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from earthsnap_assets.ml.checkpoints import from_bytes, to_bytes
from earthsnap_assets.ml.data import LabeledArrays
from earthsnap_assets.ml.ranks import Rendezvous, process_group_from_env
from earthsnap_assets.ml.train import TrainConfig, train_classifier


class Killed(Exception):
    pass


class FolderCheckpoints:
    """A checkpoint file every rank can see; each save also leaves a line in `saves-rank<RANK>` (who wrote)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self) -> dict[str, Any] | None:
        path = self.folder / "run.pt"
        return from_bytes(path.read_bytes()) if path.exists() else None

    def save(self, state: dict[str, Any]) -> None:
        partial = self.folder / "run.pt.partial"
        partial.write_bytes(to_bytes(state))
        partial.replace(self.folder / "run.pt")
        with open(self.folder / f"saves-rank{os.environ.get('RANK', '0')}", "a") as log:
            log.write(f"{state['progress']['next_epoch']}\n")

    def writers(self) -> dict[str, list[int]]:
        return {p.name: [int(x) for x in p.read_text().split()] for p in sorted(self.folder.glob("saves-rank*"))}


def torchrun_rank(
    local_rank: int,
    rendezvous: Rendezvous,
    train: LabeledArrays,
    val: LabeledArrays,
    config: TrainConfig,
    folder: Path,
    kill_after_epoch: int,
) -> None:
    """One rank as torchrun starts it: env variables, then every rank passes the same store and callback."""
    torch.set_num_threads(1)
    os.environ.update(rendezvous.env(local_rank, local_rank))

    def kill(epoch: int, metrics: dict) -> None:
        if epoch == kill_after_epoch:  # leave a mark: the other rank may be the first to report a failure
            (folder / f"killed-rank{os.environ['RANK']}-epoch{epoch}").touch()
            raise Killed

    with process_group_from_env("cpu") as device:
        train_classifier(train, val, config, device=device, checkpoints=FolderCheckpoints(folder), on_epoch=kill)
