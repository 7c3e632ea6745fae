"""Train one classifier (the parent or a child) with early stopping, pruning and exact resume.

Every epoch's data order, augmentation and dropout come from RNGs seeded by (seed, epoch), and the
checkpoint written after each epoch holds everything else that changes (weights, optimizer, schedule,
early-stopping state). So a run killed after epoch k and resumed from its checkpoint ends with the same
weights, bit for bit on CPU, as a run that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from earthsnap_assets.ml.checkpoints import CheckpointStore, restore_run, save_run
from earthsnap_assets.ml.data import LabeledArrays, ShardStream
from earthsnap_assets.ml.device import autocast, pick_device, prepare_model, to_device_batch
from earthsnap_assets.ml.feeding import RESIDENT_FRACTION, Feed, make_feed, steps_per_epoch
from earthsnap_assets.ml.models import DEFAULT_BACKBONE, create_classifier_with_report, parameter_count
from earthsnap_assets.ml.ranks import (
    check_world_size,
    data_parallel,
    from_rank_zero,
    is_distributed,
    is_rank_zero,
    rank_seed,
    share,
    share_restored,
    sum_over_ranks,
)
from earthsnap_assets.ml.transforms import as_tensor, to_model_input
from earthsnap_assets.ml.weights import Pretrained, head_prefixes

log = logging.getLogger(__name__)

TrainData = LabeledArrays | ShardStream
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = DEFAULT_BACKBONE
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    patience: int | None = 5  # epochs without a better val accuracy before stopping; None: never stop early
    class_weighting: bool = False
    seed: int = 0
    max_train_seconds: float | None = None  # checked at the end of each epoch
    num_workers: int = 0  # DataLoader workers, used when training from a ShardStream
    drop_rate: float = 0.0
    # fine-tuning (they matter when training starts from pretrained weights, see `init` of train_classifier)
    keep: str = "best"  # which epoch's weights a run returns: "best" val accuracy, or the "last" (end of schedule)
    layer_decay: float | None = None  # timm's layer-wise LR decay: early layers learn at lr * decay^depth
    freeze_epochs: int = 0  # epochs that train only the head before the whole network (a frozen warm-up)
    # Data parallel: processes (one per GPU) that each train on batch_size / world_size rows of every batch.
    world_size: int = 1
    gpu_resident_fraction: float = RESIDENT_FRACTION  # of free GPU memory the uint8 train pixels may fill

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise ValueError(f"freeze_epochs must be in [0, epochs), got {self.freeze_epochs}")
        if self.freeze_epochs and self.world_size > 1:  # DDP fixes which parameters take gradients when it wraps
            raise ValueError("freeze_epochs needs world_size 1 (a frozen warm-up is not data-parallel yet)")
        if self.world_size < 1 or self.batch_size % self.world_size or self.batch_size // self.world_size < 2:
            raise ValueError(f"batch_size {self.batch_size} must split into >= 2 rows per each of {self.world_size}")

    def resume_key(self) -> dict[str, Any]:
        """The fields that shape the weights: a checkpoint made under other values is not resumed.

        `world_size` is left out: the global batch does not depend on it, so a run may resume on another
        number of GPUs (bit-identical resumes need the same one).
        """
        ignored = ("max_train_seconds", "num_workers", "world_size", "gpu_resident_fraction")
        return {k: v for k, v in asdict(self).items() if k not in ignored}


@dataclass
class Progress:
    """Everything about a run besides model/optimizer/scheduler that a resume needs."""

    next_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = -1
    best_val_accuracy: float = -1.0
    best_val_loss: float = math.inf
    epochs_since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    stop_reason: str | None = None  # "early_stop" | "pruned" | "time_limit"


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]  # weights of the best epoch, on CPU
    classes: list[str]
    config: TrainConfig
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    history: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool
    pruned: bool
    timed_out: bool
    train_seconds: float
    parameter_count: int
    resumed_from_epoch: int | None


@dataclass
class _Parts:
    """What a run trains with; model, optimizer and scheduler are what a checkpoint snapshots."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    step_model: nn.Module | None = None  # what the step calls: `model`, or its DDP wrapper in a process group

    def stateful(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}


class WarmupCosine:
    """LR factor per step: linear warmup, then cosine decay to 0. A class so LambdaLR can checkpoint it."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, stream]).generate_state(1)[0])


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over present classes: rare classes count as much as common ones."""
    counts = counts.astype(np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm parameters (decaying them only hurts); with
    `layer_decay`, timm's optimizer factory groups parameters by depth (its `lr_scale` is folded into each
    group's lr, since our scheduler is torch's LambdaLR, which scales every group's own initial lr)."""
    if config.layer_decay is not None:
        from timm.optim import create_optimizer_v2

        optimizer = create_optimizer_v2(
            model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay
        )
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group.get("lr_scale", 1.0)
        return optimizer
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _train_epoch(parts: _Parts, batches: Iterator[Batch], device: torch.device) -> dict:
    """Steps over model-ready (inputs, targets) batches; metrics are over every rank's rows."""
    model, optimizer = (parts.step_model or parts.model).train(), parts.optimizer
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, lr, started = 0, optimizer.param_groups[0]["lr"], time.perf_counter()
    for inputs, targets in batches:
        with autocast(device):
            logits = model(inputs)
        loss = parts.loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        parts.scheduler.step()
        total_loss += loss.detach() * targets.numel()
        correct += (logits.detach().argmax(dim=1) == targets).sum()
        seen += targets.numel()
    if is_distributed():
        total_loss, correct, counted = sum_over_ranks(total_loss, correct, torch.tensor(seen))
        seen = int(counted.item())
    loss_sum, hits = total_loss.item(), correct.item()  # waits for the GPU: its queued steps count in the time
    seconds = time.perf_counter() - started
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": hits / max(seen, 1),
        "lr": lr,
        "train_step_seconds": seconds,
        "images_per_second": seen / max(seconds, 1e-9),
    }


@torch.inference_mode()
def predict_logits(model: nn.Module, pixels_uint8: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Eval-mode float32 logits (N x classes) of uint8 NHWC pixels, through the serving transform."""
    model.eval()
    outputs = []
    for start in range(0, len(pixels_uint8), batch_size):
        chunk = to_device_batch(as_tensor(pixels_uint8[start : start + batch_size]), device)
        with autocast(device):
            logits = model(to_device_batch(to_model_input(chunk), device))
        outputs.append(logits.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def _evaluate(model: nn.Module, val: LabeledArrays, batch_size: int, device: torch.device) -> dict:
    logits = torch.from_numpy(predict_logits(model, val.pixels, batch_size, device))
    labels = torch.from_numpy(val.labels)
    return {
        "val_loss": F.cross_entropy(logits, labels).item(),
        "val_accuracy": (logits.argmax(dim=1) == labels).double().mean().item(),
    }


def _record(progress: Progress, epoch: int, metrics: dict, model: nn.Module, config: TrainConfig) -> None:
    """Track the best epoch (val accuracy, ties to the lower val loss) and the early-stopping counter."""
    accuracy, loss = metrics["val_accuracy"], metrics["val_loss"]
    if (
        config.keep == "last"
        or accuracy > progress.best_val_accuracy
        or (accuracy == progress.best_val_accuracy and loss < progress.best_val_loss)
    ):
        progress.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        progress.best_epoch, progress.best_val_accuracy, progress.best_val_loss = epoch, accuracy, loss
        progress.epochs_since_best = 0
    else:
        progress.epochs_since_best += 1
    progress.history.append(metrics)
    progress.next_epoch = epoch + 1
    progress.train_seconds += metrics["seconds"]
    if config.patience is not None and progress.epochs_since_best >= config.patience:
        progress.stop_reason = "early_stop"


def _build(train: TrainData, config: TrainConfig, device: torch.device, init: Pretrained | None = None) -> _Parts:
    """Seeded model init (from `init`'s backbone when given), AdamW, warmup + cosine per step, and the
    (optionally class-weighted) loss."""
    torch.manual_seed(config.seed)
    model, report = create_classifier_with_report(config.backbone, len(train.classes), config.drop_rate, init)
    if report is not None:
        log.info("started from %s: %d tensors loaded, head re-initialised", init.source, report.loaded)
    model = prepare_model(model, device)
    optimizer = _optimizer(model, config)
    steps = steps_per_epoch(len(train), config.batch_size)
    schedule = WarmupCosine(round(config.warmup_epochs * steps), config.epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    weights = class_weights(train.class_counts()).to(device) if config.class_weighting else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    return _Parts(model, optimizer, scheduler, loss_fn)


def _freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Warm-up on pretrained weights: only the fresh head learns until its gradients stop being noise.
    Frozen parameters get no gradient, so AdamW leaves them and their state untouched (resume stays exact)."""
    heads = head_prefixes(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not frozen or name.startswith(heads))


def _run_epoch(
    parts: _Parts, feed: Feed, val: LabeledArrays, epoch: int, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """One epoch whose randomness (order, augmentation, dropout) is a function of (seed, epoch) alone.

    In a process group every rank trains on its share of each batch; rank 0 evaluates, for all.
    """
    started = time.perf_counter()
    _freeze_backbone(parts.model, frozen=epoch < config.freeze_epochs)
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
    torch.manual_seed(rank_seed(epoch_seed(config.seed, epoch, stream=1)))  # dropout and other global-RNG layers
    metrics = _train_epoch(parts, feed.epoch(epoch, generator), device)
    metrics |= from_rank_zero(lambda: _evaluate(parts.model, val, config.batch_size * 2, device))
    return metrics | {"epoch": epoch, "seconds": time.perf_counter() - started}


def train_classifier(
    train: TrainData,
    val: LabeledArrays,
    config: TrainConfig,
    *,
    device: torch.device | None = None,
    checkpoints: CheckpointStore | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    should_prune: Callable[[int, float], bool] | None = None,
    init: Pretrained | None = None,
) -> TrainResult:
    """Train `config.backbone` on `train`, keep the epoch with the best `val` accuracy, checkpoint each epoch.

    `init` is the pretrained state dict the backbone starts from (None: random); its sha256 is part of
    the checkpoint key, so a resume never mixes two starting points.
    `train` is in-memory arrays or a `ShardStream`; `on_epoch(epoch, metrics)` runs after each epoch's
    checkpoint (for metric logging), `should_prune(epoch, val_accuracy)` can stop a hopeless trial.

    Inside a `torch.distributed` process group of `config.world_size` processes (`distributed.train_distributed`,
    or torchrun) this trains data-parallel: rank 0 alone reads and writes `checkpoints`, decides on stopping
    and calls `on_epoch`; the other ranks' results mirror rank 0's metrics.
    """
    if len(train) < 2 or len(val) == 0 or len(train.classes) < 2:
        raise ValueError(f"need >= 2 train rows, >= 1 val row and >= 2 classes ({len(train)}, {len(val)})")
    check_world_size(config.world_size)
    device = device or pick_device()
    parts = _build(train, config, device, init)
    key = {"config": config.resume_key(), "classes": list(train.classes), "train": len(train), "val": len(val)}
    if init is not None:
        key["init_sha256"] = init.sha256
    restored = restore_run(checkpoints if is_rank_zero() else None, key, parts.stateful())
    restored = share_restored(restored, parts.stateful())
    progress = Progress(**restored) if restored else Progress()
    resumed_from = progress.next_epoch - 1 if restored else None
    parts.step_model = data_parallel(parts.model, device)
    feed = make_feed(
        train,
        config.batch_size,
        device,
        share=share(),
        num_workers=config.num_workers,
        resident_fraction=config.gpu_resident_fraction,
    )
    for epoch in range(progress.next_epoch, config.epochs):
        if progress.stop_reason:
            break
        metrics = _run_epoch(parts, feed, val, epoch, config, device)
        _record(progress, epoch, metrics, parts.model, config)
        if should_prune is not None and should_prune(epoch, metrics["val_accuracy"]):
            progress.stop_reason = "pruned"
        elif config.max_train_seconds is not None and progress.train_seconds >= config.max_train_seconds:
            progress.stop_reason = progress.stop_reason or "time_limit"
        progress.stop_reason = from_rank_zero(lambda: progress.stop_reason)
        if checkpoints is not None and is_rank_zero():
            save_run(checkpoints, key, parts.stateful(), dict(vars(progress)))
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
        if on_epoch is not None and is_rank_zero():
            on_epoch(epoch, metrics)
    return _result(progress, list(train.classes), config, parameter_count(parts.model), resumed_from)


def _result(
    progress: Progress, classes: list[str], config: TrainConfig, params: int, resumed: int | None
) -> TrainResult:
    assert progress.best_state is not None, "at least one epoch has run"
    return TrainResult(
        state_dict=progress.best_state,
        classes=classes,
        config=config,
        best_epoch=progress.best_epoch,
        best_val_accuracy=progress.best_val_accuracy,
        best_val_loss=progress.best_val_loss,
        history=progress.history,
        epochs_run=progress.next_epoch,
        stopped_early=progress.stop_reason == "early_stop",
        pruned=progress.stop_reason == "pruned",
        timed_out=progress.stop_reason == "time_limit",
        train_seconds=progress.train_seconds,
        parameter_count=params,
        resumed_from_epoch=resumed,
    )
