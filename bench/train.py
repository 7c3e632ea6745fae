"""Training throughput benchmark: our training loop over real shards vs. a bare timm loop.

Prints ONE JSON object to stdout; progress goes to stderr. Run from the repository root:

    .venv/bin/python bench/train.py [--n 600] [--size 64] [--epochs 3] [--backbone lcnet_035] [--s3]

One run builds a real dataset (N generated photos of 4 groups x 3 species -> the data side's steps,
into an in-memory lake) and measures, on the flat task (every species) of its train split:
  ours     `train_classifier` from `load_split` arrays (and from a `ShardStream`, 0 and 1 loader workers);
           only the training part of each epoch counts (`history[i]["train_step_seconds"]`, no validation)
  bare     timm model + AdamW + CrossEntropy over the same images already normalised in one float tensor:
           no augmentation, no loader, the same batch sizes and number of steps, 2 warm-up steps untimed
  loader   our data path without a model: batches exactly as the training step consumes them
           (`feeding.make_feed(...).epoch`, augmented or not), from arrays and from the `ShardStream` loader
  --s3     the same dataset built through `ObjectStore()` (env `EARTHSNAP_S3_*`), then `load_split` and
           the `ShardStream` loader read back from it; two fresh buckets, deleted afterwards

Each measurement runs `--rounds` times (bare and ours alternating); headline rates are medians over every epoch
of every round. On a shared machine torch's 2 spin-waiting OpenMP threads make one busy neighbour cost 5-40x:
compare `machine.loadavg_*` (this process alone adds about 2) and the per-epoch seconds under `detail`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from earthsnap_assets.lake.changes import append_batch, route
from earthsnap_assets.lake.events import RawEvent
from earthsnap_assets.lake.pipeline import DataConfig, prepare_dataset
from earthsnap_assets.lake.splits import SplitConfig
from earthsnap_assets.lake.storage import Blobs, MemoryBlobs
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.ml.data import DatasetIndex, LabeledArrays, ShardStream, load_split
from earthsnap_assets.ml.feeding import make_feed, steps_per_epoch
from earthsnap_assets.ml.quality import QualityRules
from earthsnap_assets.ml.train import TrainConfig, epoch_seed, train_classifier
from earthsnap_assets.ml.transforms import augment_batch, to_model_input
from earthsnap_assets.pipeline.tasks import index_of, label_task

PREFIX = "images/"
RAW_BUCKET = "bench-raw"
LAKE_BUCKET = "bench-lake"
TARGET_RATIO = 0.9  # ours / bare
TARGET_LOADER_OVER_STEP = 3.0  # data path alone / bare train step
BARE_WARMUP_STEPS = 2
CPU = torch.device("cpu")


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def rate(images: int, seconds: float) -> float:
    return round(images / seconds, 1) if seconds > 0 else float("nan")


def median(values: Iterable[float]) -> float:
    return round(float(np.median(list(values))), 1)


def repeat(measure: Callable[[], dict], rounds: int) -> dict:
    """`measure` `rounds` times: the median images/s over all their epochs, and every run."""
    runs = [measure() for _ in range(rounds)]
    return {"images_per_s": epoch_rate_median(runs), "runs": runs}


# ---------------------------------------------------------------------------------------------- dataset


def _render_jpeg(job: tuple[int, str, int, int, int]) -> bytes:
    from earthsnap_assets.demo.synthetic import render_image

    index, species, seed, width, height = job
    buffer = io.BytesIO()
    render_image(species, np.random.default_rng([seed, index]), (width, height)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def generate(n: int, photo_size: tuple[int, int], seed: int, workers: int) -> tuple[dict[str, bytes], Taxonomy]:
    """N JPEGs drawn by `synthetic.render_image`, species round-robin over the default 4 groups x 3 species."""
    from earthsnap_assets.demo.synthetic import SyntheticSpec, species_table

    rows = species_table(SyntheticSpec())
    taxonomy = Taxonomy({slug: group for slug, group, _ in sorted(rows)})
    jobs = [(i, rows[i % len(rows)][0], seed, *photo_size) for i in range(n)]
    if workers > 1 and n > 16:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            datas = list(pool.map(_render_jpeg, jobs, chunksize=16))
    else:
        datas = [_render_jpeg(job) for job in jobs]
    return {f"{PREFIX}{job[1]}/{job[0]:05d}.jpg": data for job, data in zip(jobs, datas, strict=True)}, taxonomy


@dataclass(frozen=True)
class Lake:
    """Where a dataset is built and read back: a store, its buckets, and how raw photos arrive."""

    blobs: Blobs
    raw_bucket: str
    lake_bucket: str

    def upload(self, files: dict[str, bytes], taxonomy: Taxonomy) -> None:
        """Write photos and deliver their events to the change logs, as the change sensor does."""
        for key, data in files.items():
            self.blobs.write(self.raw_bucket, key, data)
        now = time.time_ns()
        events = [
            RawEvent(k, "put", hashlib.md5(d, usedforsecurity=False).hexdigest(), len(d), now + i, "bench")
            for i, (k, d) in enumerate(files.items())
        ]
        for group, routed in route(events, taxonomy.species_to_group).by_group.items():
            append_batch(self.blobs, self.lake_bucket, group, routed)


def memory_lake() -> Lake:
    return Lake(MemoryBlobs(), RAW_BUCKET, LAKE_BUCKET)


def build(
    lake: Lake, files: dict[str, bytes], taxonomy: Taxonomy, size: int, workers: int
) -> tuple[DatasetIndex, dict]:
    """Upload and run the data side's steps; the parent's sample (every group, every species) read back."""
    lake.upload(files, taxonomy)
    start = time.perf_counter()
    config = DataConfig(QualityRules(), SplitConfig(), size, workers=workers)
    prepared = prepare_dataset(lake.blobs, lake.raw_bucket, lake.lake_bucket, taxonomy, config)
    built = time.perf_counter()
    index = index_of(lake.blobs, prepared.sample_ref)
    stats = {
        "prepare_s": round(built - start, 3),
        "accepted": prepared.version.totals["accepted"],
        "rejected": prepared.version.totals["rejected"],
        "shards": len({e["shard"] for e in index.entries("train")}),
        "dataset_version": prepared.version.dataset_version,
        "split_counts": {s: len(index.entries(s)) for s in ("train", "val", "test")},
    }
    return index, stats


def flat_stream(lake: Lake, index: DatasetIndex, seed: int) -> ShardStream:
    return ShardStream(lake.blobs, lake.lake_bucket, index, "train", label_task(index, "flat"), seed=seed)


# ---------------------------------------------------------------------------------------------- ours


def ours(train: LabeledArrays | ShardStream, val: LabeledArrays, config: TrainConfig) -> dict:
    """`train_classifier`; images/s over the training part of every epoch (validation excluded)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = train_classifier(train, val, config, device=CPU)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    seconds = [h["train_step_seconds"] for h in result.history]
    images = [round(h["images_per_second"] * h["train_step_seconds"]) for h in result.history]
    later = rate(sum(images[1:]), sum(seconds[1:])) if len(seconds) > 1 else None
    return {
        "images_per_s": rate(sum(images), sum(seconds)),
        "images_per_s_after_epoch_0": later,
        "train_s": round(sum(seconds), 3),
        "val_and_other_s": round(total - sum(seconds), 3),
        "cpu_s_incl_val": round(cpu, 3),  # this process only: loader workers are not counted
        "epoch_images": images,
        "epoch_train_s": [round(s, 4) for s in seconds],
        "final_train_accuracy": round(result.history[-1]["train_accuracy"], 3),
        "best_val_accuracy": round(result.best_val_accuracy, 3),
    }


# ---------------------------------------------------------------------------------------------- bare


def epoch_batch_sizes(size: int, batch_size: int) -> list[int]:
    """The batch sizes of one epoch of our loop: full batches, then the remainder unless it is one sample."""
    return [min(batch_size, size - i * batch_size) for i in range(steps_per_epoch(size, batch_size))]


def bare(inputs: torch.Tensor, labels: torch.Tensor, config: TrainConfig, sizes: Sequence[int]) -> dict:
    """A plain timm loop over float NCHW `inputs` already in memory: the cost of the model step alone.

    `config.epochs` passes over the batch sizes `sizes` (consecutive slices, no shuffling), timed per pass.
    """
    torch.manual_seed(config.seed)
    model = timm.create_model(config.backbone, pretrained=False, num_classes=int(labels.max()) + 1)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    offsets = np.cumsum([0, *sizes]).tolist()
    batches = [(inputs[a:b], labels[a:b]) for a, b in pairwise(offsets)]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for x, y in batches[:BARE_WARMUP_STEPS]:
        step(x, y)
    seconds, cpu = [], time.process_time()
    for _ in range(config.epochs):
        start = time.perf_counter()
        for x, y in batches:
            step(x, y)
        seconds.append(time.perf_counter() - start)
    images = [sum(sizes)] * config.epochs
    return {
        "images_per_s": rate(sum(images), sum(seconds)),
        "train_s": round(sum(seconds), 3),
        "cpu_s": round(time.process_time() - cpu, 3),
        "steps": len(sizes) * config.epochs,
        "epoch_images": images,
        "epoch_train_s": [round(s, 4) for s in seconds],
    }


def epoch_rate_median(runs: Sequence[dict]) -> float:
    """Median images/s over every epoch of every run: one burst of other load spoils a few epochs, not all."""
    return median(i / s for r in runs for i, s in zip(r["epoch_images"], r["epoch_train_s"], strict=True) if s > 0)


# ---------------------------------------------------------------------------------------------- loader


def loader(train: LabeledArrays | ShardStream, config: TrainConfig, *, augment: bool) -> dict:
    """Our batches for `config.epochs` epochs without a model: the training feed, augmented or not."""
    images, seconds = [], []
    feed = make_feed(train, config.batch_size, CPU, num_workers=config.num_workers)
    for epoch in range(config.epochs):
        generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
        start, count = time.perf_counter(), 0
        for _, labels in feed.epoch(epoch, generator, augment=augment):
            count += labels.numel()
        seconds.append(time.perf_counter() - start)
        images.append(count)
    return {
        "images_per_s": rate(sum(images), sum(seconds)),
        "epoch_images": images,
        "epoch_train_s": [round(s, 5) for s in seconds],
    }


def stream_loader(lake: Lake, index: DatasetIndex, config: TrainConfig, *, augment: bool) -> dict:
    return loader(flat_stream(lake, index, config.seed), config, augment=augment)


def stream_ours(lake: Lake, index: DatasetIndex, val: LabeledArrays, config: TrainConfig) -> dict:
    return ours(flat_stream(lake, index, config.seed), val, config)


def augment_warmup(train: LabeledArrays, config: TrainConfig) -> None:
    batch = torch.from_numpy(train.pixels[: config.batch_size])
    augment_batch(batch, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- S3


def s3_bench(files: dict[str, bytes], taxonomy: Taxonomy, args: argparse.Namespace, config: TrainConfig) -> dict:
    """Build the dataset through the configured object store, then read it back for training."""
    from earthsnap_assets.resources.object_store import ObjectStore

    store = ObjectStore()
    client = store.client
    run = uuid.uuid4().hex[:8]
    raw, lake_bucket = f"earthsnap-bench-{run}-raw", f"earthsnap-bench-{run}-lake"
    log(f"[s3] {store.settings.s3_endpoint}: buckets {raw}, {lake_bucket}")
    for bucket in (raw, lake_bucket):
        client.create_bucket(Bucket=bucket)
    try:
        lake = Lake(store, raw, lake_bucket)
        index, stats = build(lake, files, taxonomy, args.size, args.workers)
        task = label_task(index, "flat")
        start = time.perf_counter()
        train = load_split(store, lake_bucket, index, "train", task)
        load_s = time.perf_counter() - start
        out: dict[str, Any] = {"endpoint": store.settings.s3_endpoint, "dataset": stats}
        out["load_split_train_s"] = round(load_s, 3)
        out["load_split_images_per_s"] = rate(len(train), load_s)
        log(f"[s3]   built; load_split(train) {load_s:.3f} s")
        for workers in args.stream_workers:
            stream_config = replace(config, num_workers=workers)
            for augment, suffix in ((True, ""), (False, "_no_augment")):
                measure = partial(stream_loader, lake, index, stream_config, augment=augment)
                out[f"loader_stream_w{workers}{suffix}"] = repeat(measure, args.rounds)
            log(f"[s3]   num_workers={workers}: loader {out[f'loader_stream_w{workers}']['images_per_s']} images/s")
        return out
    finally:
        for bucket in (raw, lake_bucket):
            _delete_bucket(client, bucket)


def _delete_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


# ---------------------------------------------------------------------------------------------- main


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        # Other work on the machine skews every number here: a 1-minute load near the CPU count means contention.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=600, help="generated photos (default 600)")
    parser.add_argument("--size", type=int, default=64, help="training resolution S (default 64)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every training run (default 3)")
    parser.add_argument("--backbone", default="lcnet_035", help="timm architecture (default lcnet_035)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--photo-size", default="320x240", help="WxH of the generated JPEGs (default 320x240)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads of intake (default 2)")
    parser.add_argument(
        "--stream-workers", default="0,1", help="ShardStream DataLoader workers to try, comma-separated; '' skips"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every measurement; medians (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--s3", action="store_true", help="also build and read back through ObjectStore()")
    args = parser.parse_args(argv)
    width, _, height = args.photo_size.partition("x")
    args.photo_size = (int(width), int(height))
    args.stream_workers = [int(w) for w in args.stream_workers.split(",") if w.strip()]
    if (
        args.n < 60
        or args.size < 16
        or args.epochs < 1
        or args.batch_size < 2
        or args.rounds < 1
        or min(args.photo_size) < 64
    ):
        parser.error(
            "need --n >= 60, --size >= 16, --epochs >= 1, --batch-size >= 2, --rounds >= 1 and photos >= 64 px"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = machine()
    config = TrainConfig(
        backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, patience=None, seed=args.seed
    )

    log(f"generating {args.n} photos {args.photo_size[0]}x{args.photo_size[1]}")
    start = time.perf_counter()
    files, taxonomy = generate(args.n, args.photo_size, args.seed, max(1, min(os.cpu_count() or 1, 4)))
    generate_s = time.perf_counter() - start
    log(f"  {generate_s:.1f} s; the data side's steps at {args.size} px into MemoryBlobs")
    lake = memory_lake()
    index, dataset = build(lake, files, taxonomy, args.size, args.workers)
    task = label_task(index, "flat")
    train = load_split(lake.blobs, lake.lake_bucket, index, "train", task)
    val = load_split(lake.blobs, lake.lake_bucket, index, "val", task)
    log(f"  {dataset}")
    sizes = epoch_batch_sizes(len(train), config.batch_size)
    inputs, labels = to_model_input(train.pixels), torch.from_numpy(train.labels)

    # Rounds alternate the bare step and our loop, so a burst of other load hits both; medians over epochs.
    steps = len(sizes) * config.epochs
    log(f"{args.rounds} rounds of: bare timm loop ({steps} steps of {config.backbone}, batch {config.batch_size}),")
    log(f"  then train_classifier on {len(train)} train / {len(val)} val images for {config.epochs} epochs")
    bare_runs, ours_runs = [], []
    for round_ in range(args.rounds):
        bare_runs.append(bare(inputs, labels, config, sizes))
        ours_runs.append(ours(train, val, config))
        log(f"  round {round_}: bare {bare_runs[-1]['images_per_s']}, ours {ours_runs[-1]['images_per_s']} images/s")
    bare_rate, ours_rate = epoch_rate_median(bare_runs), epoch_rate_median(ours_runs)
    bare_total = median(r["images_per_s"] for r in bare_runs)
    ours_total = median(r["images_per_s"] for r in ours_runs)

    augment_warmup(train, config)
    log("loader alone: the training feed (+ augmentation), then ours over ShardStream + make_loader")
    loaders = {
        "arrays": repeat(partial(loader, train, config, augment=True), args.rounds),
        "arrays_no_augment": repeat(partial(loader, train, config, augment=False), args.rounds),
    }
    streams: dict[str, dict] = {}
    for workers in args.stream_workers:
        stream_config = replace(config, num_workers=workers)
        for augment, suffix in ((True, ""), (False, "_no_augment")):
            measure = partial(stream_loader, lake, index, stream_config, augment=augment)
            loaders[f"stream_w{workers}{suffix}"] = repeat(measure, args.rounds)
        streams[f"w{workers}"] = repeat(partial(stream_ours, lake, index, val, stream_config), args.rounds)
        log(f"  num_workers={workers}: ours {streams[f'w{workers}']['images_per_s']} images/s")
    log(f"  loaders alone: { {k: v['images_per_s'] for k, v in loaders.items()} }")

    ratio = ours_rate / bare_rate
    loader_over_step = loaders["arrays"]["images_per_s"] / bare_rate
    report: dict[str, Any] = {
        "benchmark": "train",
        "params": {
            "n": args.n,
            "size": args.size,
            "epochs": config.epochs,
            "backbone": config.backbone,
            "batch_size": config.batch_size,
            "photo_size": list(args.photo_size),
            "workers": args.workers,
            "seed": args.seed,
            "task": "flat",
            "classes": len(task.classes),
            "train_images": len(train),
            "val_images": len(val),
            "steps": steps,
            "bare_warmup_steps": BARE_WARMUP_STEPS,
            "rounds": args.rounds,
            "store": "MemoryBlobs",
        },
        "machine": facts,
        "dataset": dataset | {"generate_s": round(generate_s, 2)},
        "ours_images_per_s": ours_rate,
        "bare_images_per_s": round(bare_rate, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_ratio_target": ratio >= TARGET_RATIO,
        "loader_images_per_s": loaders["arrays"]["images_per_s"],
        "train_step_images_per_s": round(bare_rate, 1),
        "loader_over_step": round(loader_over_step, 2),
        "target_loader_over_step": TARGET_LOADER_OVER_STEP,
        "meets_loader_target": loader_over_step >= TARGET_LOADER_OVER_STEP,
        # the same from each run's total time (median over rounds): includes epoch 0's first, cold step
        "ours_images_per_s_whole_runs": ours_total,
        "bare_images_per_s_whole_runs": bare_total,
        "ratio_whole_runs": round(ours_total / bare_total, 3),
        "ours_stream_images_per_s": {k: v["images_per_s"] for k, v in streams.items()},
        "loader_stream_images_per_s": {k: v["images_per_s"] for k, v in loaders.items() if k.startswith("stream")},
        "detail": {
            "ours_arrays": ours_runs,
            "bare": bare_runs,
            "ours_stream": streams,
            "loaders": loaders,
        },
        "s3": None,
    }
    status = 0
    if args.s3:
        try:
            report["s3"] = s3_bench(files, taxonomy, args, config)
        except Exception as exc:  # report what failed; the in-memory numbers are still worth printing
            log(f"[s3] failed: {type(exc).__name__}: {exc}")
            report["s3"] = {"error": f"{type(exc).__name__}: {exc}"}
            status = 1
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
