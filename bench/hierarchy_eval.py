"""Streamed hierarchical evaluation at scale: peak memory of `evaluate_streamed` on synthetic models.

Prints ONE JSON object to stdout; progress goes to stderr. Run from the repository root:

    .venv/bin/python bench/hierarchy_eval.py [--groups 200] [--species-per-group 50] [--photos 10000]

No stack, synthetic models built in memory (a child is built when the cache asks for it, as a download
would be). Each network does the work of `create_classifier(DEFAULT_BACKBONE, k)` but answers from a colour
code: a photo's left half carries its group's colour, its right half its species' colour, each jittered
per photo, and a network scores the mean colour of its half against its classes' colours (nearest centroid,
`--sharpness`). So the parent routes like a trained one (mostly right, sometimes unsure) and batches of
one group mostly need that group's child, as with the lake's shards (per split and group, read group after
group). The pass is exactly `hierarchical_evaluation`'s: `RoutedClassifier` with serving's default
routing, a child cache of `--max-children`, the flat baseline over every species, the routing-cost sample.
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
from earthsnap_assets.ml.transforms import MEAN, STD


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def palette(count: int) -> np.ndarray:
    """`count` distinct RGB colours (uint8 units) on the coarsest regular grid that holds them."""
    side = int(np.ceil(count ** (1 / 3)))
    levels = np.linspace(20, 235, side)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid[:count]


GROUP_JITTER, SPECIES_JITTER, PIXEL_NOISE = 14.0, 20.0, 30.0  # per-photo colour offsets, per-pixel noise


def batches(hierarchy: Hierarchy, photos: int, batch: int, size: int, seed: int) -> Iterator[tuple[np.ndarray, list]]:
    """`photos` colour-coded test photos spread evenly over the groups, group after group, `batch` at a time."""
    rng = np.random.default_rng(seed)
    groups, species = palette(len(hierarchy.groups)), palette(max(len(s) for s in hierarchy.species.values()))
    per_group = photos // len(hierarchy.groups)
    rows = [(g, int(s)) for g in range(len(hierarchy.groups)) for s in rng.integers(0, hierarchy.width(g), per_group)]
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        pixels = rng.normal(0.0, PIXEL_NOISE, (len(chunk), size, size, 3))
        for i, (g, s) in enumerate(chunk):
            pixels[i, :, : size // 2] += groups[g] + rng.normal(0.0, GROUP_JITTER, 3)
            pixels[i, :, size // 2 :] += species[s] + rng.normal(0.0, SPECIES_JITTER, 3)
        names = [hierarchy.species[hierarchy.groups[g]][s] for g, s in chunk]
        yield np.clip(pixels, 0, 255).astype(np.uint8), names


class ColourCoded(torch.nn.Module):
    """A timm network's compute, answering from the mean colour of its halves of the photo (nearest centroid)."""

    def __init__(self, backbone: str, colours: np.ndarray, halves: tuple[int, ...], sharpness: float, seed: int):
        super().__init__()
        self.net = classifier(backbone, len(colours), seed)
        mean, std = np.array(MEAN * len(halves)), np.array(STD * len(halves))
        self.register_buffer("centroids", torch.tensor((colours / 255.0 - mean) / std, dtype=torch.float32))
        self.halves, self.sharpness = halves, sharpness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1] // 2
        means = [x[..., h * width : (h + 1) * width].mean(dim=(2, 3)) for h in self.halves]
        m, c = torch.cat(means, dim=1), self.centroids
        score = 2 * m @ c.T - (c * c).sum(dim=1)  # -|m - c|^2 + |m|^2: the nearest colour scores highest
        return self.sharpness * score + 1e-3 * self.net(x)  # the network's work is done, its vote negligible


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
    parser.add_argument("--sharpness", type=float, default=3.0, help="how sure the synthetic networks are")
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
    groups, species = palette(args.groups), palette(args.species_per_group)
    sharp = args.sharpness
    cache: ModelCache[str] = ModelCache(
        lambda g: ColourCoded(args.backbone, species, (1,), sharp, 1 + hierarchy.groups.index(g)),
        max_models=args.max_children,
    )
    parent = ColourCoded(args.backbone, groups, (0,), sharp, 0)
    routed = RoutedClassifier(parent, hierarchy, cache.get, frozenset(hierarchy.groups), RoutingConfig())
    both = np.concatenate([np.repeat(groups, args.species_per_group, 0), np.tile(species, (args.groups, 1))], 1)
    flat = (ColourCoded(args.backbone, both, (0, 1), sharp, 10_000), hierarchy.flat_species)
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
        "flat_top1_accuracy": result.flat.report().accuracy if result.flat else None,
        "routing": result.counts.as_dict(),
        "routing_cost": result.routing_cost,
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
