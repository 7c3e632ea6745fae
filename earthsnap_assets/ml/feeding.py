"""An epoch's training inputs: shuffled, augmented, normalised batches on the device the step runs on.

Every batch is a function of (seed, epoch) alone, whichever way the pixels travel: one CPU generator draws
the epoch's permutation and then, batch by batch, the augmentation's random numbers. In-memory pixels
travel one of three ways (`PixelStore.kind`):

- host: CPU training. Rows are gathered from the numpy arrays and augmented on the CPU, exactly as
  training did before GPU feeding existed, so CPU runs stay bit for bit what they were.
- resident: CUDA, and the uint8 pixels fit in `resident_fraction` of the free GPU memory. They are uploaded
  once per run; a batch is an `index_select` on the GPU, with no host work per step but the 8 augmentation
  numbers a sample.
- pinned: CUDA, too large to be resident. Rows are gathered into one of two pinned host buffers and copied
  on a side CUDA stream while the GPU still runs the previous step.

Data parallel: every rank walks the same global batches and keeps its `Share` of each, a contiguous slice,
and draws the augmentation numbers of the whole global batch (keeping its rows'), so the ranks' batches
together are the single-process batch, sample for sample and augmentation included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from earthsnap_assets.ml.data import LabeledArrays, ShardStream, make_loader
from earthsnap_assets.ml.device import is_cuda, to_device_batch
from earthsnap_assets.ml.transforms import augment_draws, augment_with

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
RESIDENT_FRACTION = 0.5  # of free GPU memory the training pixels may take; the rest is the model's
PREFETCH_SLOTS = 2  # pinned buffers: one being copied to the GPU while the next one is filled


def steps_per_epoch(size: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of one sample is dropped (BatchNorm cannot train on it)."""
    return size // batch_size + (1 if size % batch_size > 1 else 0)


@dataclass(frozen=True)
class Share:
    """Which part of every global batch this process trains on: rank `rank` of `world_size`."""

    rank: int = 0
    world_size: int = 1

    def bounds(self, size: int) -> tuple[int, int]:
        """[start, stop) of this rank's rows in a global batch of `size`: contiguous, sizes differ by <= 1."""
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def trains_on(self, size: int) -> bool:
        """A global batch is used when every rank gets >= 2 rows (BatchNorm cannot train on one).

        Every rank decides alike from the global size, so all of them run the same number of steps (DDP
        needs that). With one process this is the old rule: only a last batch of one sample is dropped.
        """
        return size // self.world_size >= 2


class PixelStore(Protocol):
    kind: str

    def batches(self, rows: Sequence[np.ndarray]) -> Iterator[Batch]:
        """uint8 NHWC pixels and int64 labels of each row set, on the training device, in order."""
        ...


class HostPixels:
    """Rows gathered from the numpy arrays on the CPU: the CPU path, unchanged."""

    kind = "host"

    def __init__(self, data: LabeledArrays) -> None:
        self.data = data

    def batches(self, rows: Sequence[np.ndarray]) -> Iterator[Batch]:
        for chosen in rows:
            yield torch.from_numpy(self.data.pixels[chosen]), torch.from_numpy(self.data.labels[chosen])


class ResidentPixels:
    """Every pixel on the GPU, uploaded once; a batch is one `index_select` there."""

    kind = "resident"

    def __init__(self, data: LabeledArrays, device: torch.device) -> None:
        self.device = device
        self.pixels = torch.from_numpy(np.ascontiguousarray(data.pixels)).to(device)
        self.labels = torch.from_numpy(data.labels).to(device)

    def batches(self, rows: Sequence[np.ndarray]) -> Iterator[Batch]:
        for index in _device_rows(rows, self.device):
            yield self.pixels.index_select(0, index), self.labels.index_select(0, index)


class PinnedPixels:
    """Rows gathered into pinned host buffers, copied on a side stream while the previous step runs.

    Slot i % 2 holds batch i; before it is refilled, the CPU waits for the copy of batch i - 2 out of it
    (long done in practice). The step's stream waits for a batch's copy, and the batch's GPU memory is
    marked as used by that stream so the caching allocator does not hand it back to the side stream early.
    """

    kind = "pinned"

    def __init__(self, data: LabeledArrays, device: torch.device, batch_size: int) -> None:
        self.device = device
        self.pixels = torch.from_numpy(np.ascontiguousarray(data.pixels))
        self.labels = torch.from_numpy(data.labels).to(device)
        shape = (batch_size, *self.pixels.shape[1:])
        self.slots = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(PREFETCH_SLOTS)]
        self.copied: list[torch.cuda.Event | None] = [None] * PREFETCH_SLOTS
        self.stream = torch.cuda.Stream(device)

    def _stage(self, step: int, chosen: np.ndarray) -> tuple[torch.Tensor, torch.cuda.Event]:
        slot = step % PREFETCH_SLOTS
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()
        host = self.slots[slot][: len(chosen)]
        torch.index_select(self.pixels, 0, torch.from_numpy(chosen), out=host)
        with torch.cuda.stream(self.stream):
            pixels = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.copied[slot] = done
        return pixels, done

    def batches(self, rows: Sequence[np.ndarray]) -> Iterator[Batch]:
        if not rows:
            return
        indices = _device_rows(rows, self.device)
        pending = self._stage(0, rows[0])
        for step, index in enumerate(indices):
            pixels, done = pending
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(done)
            pixels.record_stream(consumer)
            yield pixels, self.labels.index_select(0, index)
            if step + 1 < len(rows):  # the step of `pixels` is queued by now: fill the next slot meanwhile
                pending = self._stage(step + 1, rows[step + 1])


def _device_rows(rows: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """An epoch's row indices on the device, in one copy rather than one per step."""
    sizes = [len(r) for r in rows]
    flat = torch.from_numpy(np.concatenate(rows) if rows else np.zeros(0, np.int64)).to(device)
    return list(torch.split(flat, sizes))


def pixel_store(
    data: LabeledArrays, device: torch.device, batch_size: int, resident_fraction: float = RESIDENT_FRACTION
) -> PixelStore:
    """Host on CPU; on CUDA resident when the pixels fit in `resident_fraction` of free memory, else pinned."""
    if not is_cuda(device):
        return HostPixels(data)
    free, _ = torch.cuda.mem_get_info(device)
    if data.pixels.nbytes <= resident_fraction * free:
        return ResidentPixels(data, device)
    gigabytes, percent = data.pixels.nbytes / 1e9, 100 * resident_fraction
    log.info("%.1f GB of pixels exceed %.0f%% of free GPU memory: pinned prefetch", gigabytes, percent)
    return PinnedPixels(data, device, batch_size)


def augmented(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    batch: int,
    share: Share,
    device: torch.device,
) -> Batch:
    """Model inputs of this rank's rows of a global batch of `batch` rows: draws for all, applied to ours."""
    start, stop = share.bounds(batch)
    inputs = augment_with(to_device_batch(pixels, device), augment_draws(batch, generator)[start:stop])
    return to_device_batch(inputs, device), labels.to(device, non_blocking=True)


class ArrayFeed:
    """Batches of in-memory `LabeledArrays`: a seeded permutation per epoch, cut into batches."""

    def __init__(self, data: LabeledArrays, batch_size: int, device: torch.device, store: PixelStore, share: Share):
        self.data, self.batch_size, self.device, self.store, self.share = data, batch_size, device, store, share

    def global_batches(self, generator: torch.Generator) -> list[np.ndarray]:
        """The epoch's global batches of row numbers (every rank computes the same ones)."""
        order = torch.randperm(len(self.data), generator=generator).numpy()
        size, step = len(self.data), self.batch_size
        batches = [order[start : start + step] for start in range(0, steps_per_epoch(size, step) * step, step)]
        return [rows for rows in batches if self.share.trains_on(len(rows))]

    def epoch(self, epoch: int, generator: torch.Generator, *, augment: bool = True) -> Iterator[Batch]:
        """This rank's (inputs, labels) of each batch; `augment=False` gives the raw uint8 batches."""
        batches = self.global_batches(generator)
        mine = [rows[slice(*self.share.bounds(len(rows)))] for rows in batches]
        for rows, (pixels, labels) in zip(batches, self.store.batches(mine), strict=True):
            if augment:
                yield augmented(pixels, labels, generator, len(rows), self.share, self.device)
            else:
                yield pixels, labels


class StreamFeed:
    """Batches of a `ShardStream` in (seed, epoch) order; each rank reads the whole stream and keeps its slice."""

    def __init__(self, stream: ShardStream, batch_size: int, device: torch.device, share: Share, num_workers: int):
        self.stream, self.batch_size, self.device, self.share = stream, batch_size, device, share
        self.num_workers = num_workers if is_cuda(device) else 0  # on CPU a worker only takes cores from the step

    def epoch(self, epoch: int, generator: torch.Generator, *, augment: bool = True) -> Iterator[Batch]:
        self.stream.set_epoch(epoch)
        pin = is_cuda(self.device)
        for pixels, labels in make_loader(self.stream, self.batch_size, num_workers=self.num_workers, pin_memory=pin):
            size = labels.numel()
            if not self.share.trains_on(size):
                continue
            mine = slice(*self.share.bounds(size))
            if augment:
                yield augmented(pixels[mine], labels[mine], generator, size, self.share, self.device)
            else:
                yield pixels[mine], labels[mine]


Feed = ArrayFeed | StreamFeed


def make_feed(
    train: LabeledArrays | ShardStream,
    batch_size: int,
    device: torch.device,
    *,
    share: Share | None = None,
    num_workers: int = 0,
    resident_fraction: float = RESIDENT_FRACTION,
) -> Feed:
    """The feed of a training run, built once: a resident copy is uploaded here, not every epoch."""
    share = share or Share()
    if isinstance(train, LabeledArrays):
        store = pixel_store(train, device, batch_size // share.world_size + 1, resident_fraction)
        log.info("training pixels: %s (%s)", store.kind, device)
        return ArrayFeed(train, batch_size, device, store, share)
    return StreamFeed(train, batch_size, device, share, num_workers)
