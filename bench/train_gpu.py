"""GPU training throughput: `train_classifier`'s training part vs. a bare timm loop, and 1-GPU DDP vs. plain.

Prints ONE JSON object to stdout; progress goes to stderr. Needs torch, timm, numpy and pyarrow only (no
Dagster, no MLflow), so a bare GPU machine runs it from the repository root:

    PYTHONPATH=. python bench/train_gpu.py                 # 5 configurations on CUDA, a few minutes on an H200
    PYTHONPATH=. python bench/train_gpu.py --cpu --quick   # smoke check on a CPU: tiny sizes, same code paths

Per configuration (backbone @ image size, batch size), on synthetic random uint8 images generated here:
  ours   `train_classifier` on in-memory arrays (resident on the GPU when they fit): images / train seconds
         of the epochs after the first (`history[i]["train_step_seconds"]`: batches, augmentation and
         steps, validation excluded; the first epoch pays for cuDNN and allocator warm-up)
  bare   timm model + AdamW + CrossEntropy over the same images, already normalised on the GPU in one
         channels_last float tensor: bf16 autocast, no augmentation, no loader, same batch size and number
         of timed steps, after a few untimed warm-up steps
  ratio  ours / bare (the target is >= 0.9), with what our run was seen to use: the pixel store ("resident",
         "pinned", or "host" on the CPU), channels_last parameters and inputs, and the activation dtype of the
         first convolution under autocast (bfloat16 on CUDA)
And once: the same `train_classifier` run in a 1-process torch.distributed group (DDP wrapper, nccl; gloo with
--cpu) vs. plain, and the pinned-prefetch feed (`gpu_resident_fraction=0`) vs. resident.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from earthsnap_assets.ml import train as train_module
from earthsnap_assets.ml.data import LabeledArrays
from earthsnap_assets.ml.device import autocast, prepare_model, to_device_batch
from earthsnap_assets.ml.ranks import Rendezvous, process_group
from earthsnap_assets.ml.train import TrainConfig, train_classifier
from earthsnap_assets.ml.transforms import to_model_input

TARGET_RATIO = 0.9
BARE_WARMUP_STEPS = 3
CLASSES = 10


@dataclass(frozen=True)
class Case:
    backbone: str
    size: int
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.backbone}@{self.size}"


CASES = (
    Case("test_convnext", 64, 256),
    Case("resnet10t", 64, 256),
    Case("resnet10t", 128, 256),
    Case("resnet50", 224, 128),
    Case("convnext_tiny", 224, 128),
)
DDP_CASE = CASES[2]


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def synthetic(n: int, size: int, seed: int) -> LabeledArrays:
    """Random uint8 photos and labels: throughput does not depend on what the pixels show."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, n).astype(np.int64)
    return LabeledArrays(pixels, labels, [f"c{i}" for i in range(CLASSES)])


# ---------------------------------------------------------------------------------------------- ours


@contextmanager
def spy() -> Iterator[dict[str, Any]]:
    """Record what `train_classifier` really trains with: pixel store, memory formats, autocast dtype."""
    seen: dict[str, Any] = {}
    prepare, make_feed = train_module.prepare_model, train_module.make_feed

    def spying_prepare(model: nn.Module, device: torch.device) -> nn.Module:
        model = prepare(model, device)
        weights = [p for p in model.parameters() if p.dim() == 4]
        seen["channels_last_params"] = all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))

        def first_forward(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen["channels_last_inputs"] = inputs[0].is_contiguous(memory_format=torch.channels_last)
            seen["activation_dtype"] = str(output.dtype).removeprefix("torch.")
            handle.remove()

        handle = conv.register_forward_hook(first_forward)
        return model

    def spying_feed(*args: Any, **kwargs: Any) -> Any:
        feed = make_feed(*args, **kwargs)
        seen["pixels"] = getattr(getattr(feed, "store", None), "kind", "stream")
        return feed

    train_module.prepare_model, train_module.make_feed = spying_prepare, spying_feed
    try:
        yield seen
    finally:
        train_module.prepare_model, train_module.make_feed = prepare, make_feed


def ours(train: LabeledArrays, val: LabeledArrays, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """`train_classifier`; images/s over the training part of every epoch after the first."""
    with spy() as seen:
        result = train_classifier(train, val, config, device=device)
    seconds = [h["train_step_seconds"] for h in result.history]
    images = [round(h["images_per_second"] * h["train_step_seconds"]) for h in result.history]
    return {
        "images_per_s": round(sum(images[1:]) / sum(seconds[1:]), 1),
        "epoch_train_s": [round(s, 4) for s in seconds],
        "epoch_images": images,
        **seen,
    }


def ours_in_group(train: LabeledArrays, val: LabeledArrays, config: TrainConfig, device_type: str) -> dict:
    """`ours` inside a 1-process torch.distributed group: the step runs through DistributedDataParallel."""
    with process_group(Rendezvous.local(1), 0, 0, device_type) as device:
        return ours(train, val, config, device)


# ---------------------------------------------------------------------------------------------- bare


def bare(train: LabeledArrays, case: Case, steps: int, device: torch.device, seed: int) -> dict[str, Any]:
    """A plain timm loop over `train` pre-normalised on `device` (channels_last), `steps` timed steps."""
    torch.manual_seed(seed)
    model = timm.create_model(case.backbone, pretrained=False, num_classes=CLASSES)
    model = prepare_model(model, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = nn.CrossEntropyLoss()
    chunks = np.array_split(train.pixels, 8)  # normalised in pieces: the float copy of all is only made on `device`
    inputs = to_device_batch(torch.cat([to_device_batch(to_model_input(c), device) for c in chunks]), device)
    labels = torch.from_numpy(train.labels).to(device)
    per_epoch = len(train) // case.batch_size

    def step(i: int) -> None:
        start = (i % per_epoch) * case.batch_size
        x, y = inputs[start : start + case.batch_size], labels[start : start + case.batch_size]
        with autocast(device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(BARE_WARMUP_STEPS):
        step(i)
    synchronize(device)
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": round(steps * case.batch_size / seconds, 1), "train_s": round(seconds, 4), "steps": steps}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- main


def config_for(case: Case, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(backbone=case.backbone, epochs=epochs, batch_size=case.batch_size, patience=None, seed=seed)


def measure_case(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    n = case.batch_size * args.steps_per_epoch
    train, val = synthetic(n, case.size, args.seed), synthetic(args.val, case.size, args.seed + 1)
    config = config_for(case, args.epochs, args.seed)
    mine = ours(train, val, config, device)
    timed_steps = (args.epochs - 1) * args.steps_per_epoch
    plain = bare(train, case, timed_steps, device, args.seed)
    ratio = round(mine["images_per_s"] / plain["images_per_s"], 3)
    log(f"{case.name} batch {case.batch_size}: ours {mine['images_per_s']} vs bare {plain['images_per_s']} images/s")
    return {
        "size": case.size,
        "batch_size": case.batch_size,
        "images": n,
        "timed_steps": timed_steps,
        "ours_images_per_s": mine["images_per_s"],
        "bare_images_per_s": plain["images_per_s"],
        "ratio": ratio,
        "meets_ratio_target": ratio >= TARGET_RATIO,
        "ours": mine,
        "bare": plain,
    }


def measure_variants(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The same run plain, in a 1-process DDP group, and with the pinned-prefetch feed."""
    n = case.batch_size * args.steps_per_epoch
    train, val = synthetic(n, case.size, args.seed), synthetic(args.val, case.size, args.seed + 1)
    config = config_for(case, args.epochs, args.seed)
    plain = ours(train, val, config, device)
    ddp = ours_in_group(train, val, config, device.type)
    out = {
        "case": case.name,
        "plain_images_per_s": plain["images_per_s"],
        "ddp_1_process_images_per_s": ddp["images_per_s"],
        "ddp_over_plain": round(ddp["images_per_s"] / plain["images_per_s"], 3),
        "ddp": ddp,
    }
    if device.type == "cuda":
        pinned = ours(train, val, replace(config, gpu_resident_fraction=0.0), device)
        over = round(pinned["images_per_s"] / plain["images_per_s"], 3)
        out |= {"pinned_images_per_s": pinned["images_per_s"], "pinned_over_resident": over, "pinned": pinned}
    log(f"{case.name}: plain {plain['images_per_s']}, 1-process DDP {ddp['images_per_s']} images/s")
    return out


def quick(case: Case) -> Case:
    return Case(case.backbone, min(case.size, 32), 8)


def machine(device: torch.device) -> dict[str, Any]:
    info = {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    return info | {"device": str(device), "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo for the DDP run)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 32 px, batch 8, 2 steps an epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first one is not timed")
    parser.add_argument("--steps-per-epoch", type=int, default=12)
    parser.add_argument("--val", type=int, default=256, help="validation images (validation is not timed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="", help="comma-separated backbone@size to keep (default: all)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.steps_per_epoch, args.val = 2, 2, 8
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is not timed")
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --cpu")
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    wanted = {c for c in args.cases.split(",") if c}
    cases = [c for c in CASES if not wanted or c.name in wanted]
    started = time.perf_counter()
    # keyed by the full-size name; with --quick each entry's `size` and `batch_size` say what really ran
    results = {case.name: measure_case(quick(case) if args.quick else case, args, device) for case in cases}
    variants = measure_variants(quick(DDP_CASE) if args.quick else DDP_CASE, args, device)
    report = {
        "machine": machine(device),
        "quick": args.quick,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "target_ratio": TARGET_RATIO,
        "ratios": {name: r["ratio"] for name, r in results.items()},
        "all_meet_ratio_target": all(r["meets_ratio_target"] for r in results.values()),
        "cases": results,
        "ddp_vs_plain": variants,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
