"""Streamed hierarchical evaluation at scale: peak memory of `evaluate_streamed` on synthetic models.

Prints ONE JSON object to stdout; progress goes to stderr. Run from the repository root:

    .venv/bin/python bench/hierarchy_eval.py [--groups 200] [--species-per-group 50] [--photos 10000]

No stack: the networks are `create_classifier(DEFAULT_BACKBONE, k)` with small random heads (as in
bench/serve.py), built in memory; a child is built when the cache asks for it, as a download would be.
Test batches are generated group after group (the lake's shards are per split and group), uint8 64 px.
The pass is exactly `hierarchical_evaluation`'s: `RoutedClassifier` with serving's default routing, a child
cache of `--max-children`, the flat baseline over every species, and the routing-cost sample.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve import classifier, log, machine

from earthsnap_assets.ml.hierarchy import Hierarchy
from earthsnap_assets.ml.hierarchy_eval import evaluate_streamed
from earthsnap_assets.ml.model_cache import ModelCache
from earthsnap_assets.ml.models import DEFAULT_BACKBONE
from earthsnap_assets.ml.routed import RoutedClassifier
from earthsnap_assets.ml.routing import RoutingConfig


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def batches(hierarchy: Hierarchy, photos: int, batch: int, size: int, seed: int) -> Iterator[tuple[np.ndarray, list]]:
    """`photos` test photos spread evenly over the groups, group after group, `batch` at a time."""
    rng = np.random.default_rng(seed)
    per_group = photos // len(hierarchy.groups)
    labels = [rng.choice(hierarchy.species[g], per_group).tolist() for g in hierarchy.groups]
    flat = [s for group in labels for s in group]
    for start in range(0, len(flat), batch):
        species = flat[start : start + batch]
        yield rng.integers(0, 256, (len(species), size, size, 3), dtype=np.uint8), species


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--species-per-group", type=int, default=50)
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--max-children", type=int, default=64, help="children held at once")
    parser.add_argument("--full-sample", type=int, default=2000, help="photos compared with every child")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    facts = machine()
    began = time.perf_counter()
    torch.manual_seed(args.seed)
    hierarchy = Hierarchy(
        groups=[f"g{g:03d}" for g in range(args.groups)],
        species={
            f"g{g:03d}": [f"g{g:03d}-s{s:03d}" for s in range(args.species_per_group)] for g in range(args.groups)
        },
    )
    species_count = len(hierarchy.flat_species)
    log(f"{args.groups} groups x {args.species_per_group} species = {species_count}; {args.photos} photos")
    cache: ModelCache[str] = ModelCache(
        lambda g: classifier(args.backbone, args.species_per_group, 1 + hierarchy.groups.index(g)),
        max_models=args.max_children,
    )
    routed = RoutedClassifier(
        classifier(args.backbone, args.groups, 0), hierarchy, cache.get, frozenset(hierarchy.groups), RoutingConfig()
    )
    flat = (classifier(args.backbone, species_count, 10_000), hierarchy.flat_species)
    before = {"rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb()}
    log(f"models built: {json.dumps(before)}; streaming")
    clock = time.perf_counter()
    result = evaluate_streamed(
        batches(hierarchy, args.photos, args.batch, args.image_size, args.seed),
        routed,
        flat=flat,
        sample_size=args.full_sample,
        seed=args.seed,
    )
    seconds = time.perf_counter() - clock
    report = result.species.report()
    dense = args.photos * species_count * 8
    out = {
        "peak_rss_mb": peak_rss_mb(),
        "rss_mb_before_streaming": before["rss_mb"],
        "peak_rss_mb_before_streaming": before["peak_rss_mb"],
        "rss_mb_after": current_rss_mb(),
        "evaluation_seconds": round(seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "photos": result.species.n,
        "species": species_count,
        "groups": args.groups,
        "top1_accuracy": report.accuracy,
        "routing": result.counts.as_dict(),
        "routing_cost": {k: v for k, v in result.routing_cost.items() if k != "sweep"},
        "children_cache": cache.stats.as_dict(),
        "confusion_pairs_stored": len(result.species.confusion.pairs()[0]),
        "old_dense_lower_bound_mb": {
            "photos_x_species_float64_probabilities": round(dense / 2**20),
            "its_argsort_int64": round(dense / 2**20),
            "species_x_species_int64_confusion": round(species_count**2 * 8 / 2**20),
        },
        "params": vars(args) | {"routing": RoutingConfig().as_dict(), "torch_threads": torch.get_num_threads()},
        "total_s": round(time.perf_counter() - began, 1),
        "machine": facts | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
