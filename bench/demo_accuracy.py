"""Demo accuracy: the hierarchy (parent -> routed children) vs a flat model on the demo's data, per settings profile.

The demo's dataset exactly as `earthsnap demo` draws it (`SyntheticSpec(images_per_species=120, seed=0)`, bad
files included), put through the real data side (`lake.pipeline.prepare_dataset`: QA, splits, shards, the
parent's sample) into a `MemoryBlobs` lake, then read back the way training and evaluation read it
(`pipeline.tasks.training_data` / `evaluation_data`). Per profile it trains the parent (groups, on the
parent's balanced sample), one child per group (warm-started from the parent's trained backbone, or from
scratch with `--scratch-children`), and the flat baseline (all species, the parent's settings), all on one
torch thread, and scores each model on its test split and the routed hierarchy on the parent sample's test
split (serving's routing, `ml/routing.py`). No tuning: a profile is fixed settings.

    .venv/bin/python bench/demo_accuracy.py                      # the CPU preset p96_drop + flat, ~10 min on 1 thread
    .venv/bin/python bench/demo_accuracy.py --profile p96_drop,p96_drop_scratch   # warm vs scratch children
    .venv/bin/python bench/demo_accuracy.py --profile long,long_scratch --no-flat  # 64 px
    .venv/bin/python bench/demo_accuracy.py --list               # the profiles and their settings

Profiles in one run must share an image size (or pass --image-size); ones with the same parent settings
train the parent and the flat baseline once.

Prints one JSON object on stdout, progress on stderr. The prepared arrays are cached (`--cache`, keyed by
spec and image size) so a second run skips drawing and preparing the photos; `--no-cache` re-does them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("demo_accuracy")

GROUPS_SEED = 0
CHILD_GATE = 0.4
TARGET_HIERARCHICAL = 0.7

# Profiles: TrainConfig fields for the parent (also the flat baseline) and for each child, the data side's
# `image_size` (default 64) and where children start (`children_start`: "parent", the default, or "scratch").
# Fields not named keep the values the demo's run config gives (defs/settings.py: TrainingConfig /
# ChildTrainingConfig). A warm-started child always takes the parent's backbone.
PARENT_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "patience": 4,
    "label_smoothing": 0.1,
    "class_weighting": True,
    "warmup_epochs": 1.0,
}
CHILD_DEFAULTS: dict[str, Any] = {**PARENT_DEFAULTS, "batch_size": 16, "patience": 12}

P96_PARENT: dict[str, Any] = {
    "backbone": "test_resnet",
    "epochs": 40,
    "lr": 3e-3,
    "weight_decay": 0.05,
    "patience": None,
}
DROP_CHILD: dict[str, Any] = {
    "backbone": "test_resnet",
    "epochs": 40,
    "lr": 2e-3,
    "weight_decay": 0.1,
    "drop_rate": 0.2,
    "patience": None,
}

PROFILES: dict[str, dict[str, Any]] = {
    "resnet": {
        "parent": {"backbone": "test_resnet", "epochs": 30, "lr": 3e-3, "weight_decay": 0.05, "patience": None},
        "child": {"backbone": "test_resnet", "epochs": 20, "lr": 1e-3, "weight_decay": 0.05, "patience": None},
    },
    "long": {
        "parent": {"backbone": "test_resnet", "epochs": 50, "lr": 3e-3, "weight_decay": 0.05, "patience": None},
        "child": {"backbone": "test_resnet", "epochs": 50, "lr": 2e-3, "weight_decay": 0.05, "patience": None},
    },
    "p96": {
        "image_size": 96,
        "parent": {"backbone": "test_resnet", "epochs": 30, "lr": 3e-3, "weight_decay": 0.05, "patience": None},
        "child": {"backbone": "test_resnet", "epochs": 30, "lr": 2e-3, "weight_decay": 0.05, "patience": None},
    },
    # one parent (40 epochs at 96 px), children variants; p96_drop is the recommended CPU preset
    "p96_lr1e3": {
        "image_size": 96,
        "parent": P96_PARENT,
        "child": {"backbone": "test_resnet", "epochs": 40, "lr": 1e-3, "weight_decay": 0.05, "patience": None},
    },
    "p96_drop": {"image_size": 96, "parent": P96_PARENT, "child": DROP_CHILD},
    "p96_drop_scratch": {"image_size": 96, "parent": P96_PARENT, "child": DROP_CHILD, "children_start": "scratch"},
    # p96_drop, children keep their last epoch (a 36-photo val set picks noisy epochs)
    "p96_drop_last": {"image_size": 96, "parent": P96_PARENT, "child": {**DROP_CHILD, "keep": "last"}},
    "p96_ld": {
        "image_size": 96,
        "parent": P96_PARENT,
        "child": {
            "backbone": "test_resnet",
            "epochs": 40,
            "lr": 3e-3,
            "weight_decay": 0.05,
            "layer_decay": 0.7,
            "patience": None,
        },
    },
    "long_scratch": {
        "parent": {"backbone": "test_resnet", "epochs": 50, "lr": 3e-3, "weight_decay": 0.05, "patience": None},
        "child": {"backbone": "test_resnet", "epochs": 50, "lr": 2e-3, "weight_decay": 0.05, "patience": None},
        "children_start": "scratch",
    },
}


def _settings(profile: str, kind: str) -> dict[str, Any]:
    base = PARENT_DEFAULTS if kind == "parent" else CHILD_DEFAULTS
    return {**base, **PROFILES[profile][kind]}


# ---------------------------------------------------------------------------------------------------- data


def _prepare(image_size: int, workers: int, images_per_species: int = 120) -> dict[str, Any]:
    """Draw the demo's photos, run the data side into a memory lake, read every split the models use."""
    from earthsnap_assets.demo.synthetic import SyntheticSpec, generate_dataset
    from earthsnap_assets.ingest import local_files
    from earthsnap_assets.lake.pipeline import DataConfig, prepare_dataset
    from earthsnap_assets.lake.storage import MemoryBlobs
    from earthsnap_assets.lake.taxonomy import parse_taxonomy
    from earthsnap_assets.ml.data import load_split
    from earthsnap_assets.pipeline.tasks import evaluation_data, flat_task, index_of, training_data

    spec = SyntheticSpec(images_per_species=images_per_species, seed=GROUPS_SEED)
    started = time.perf_counter()
    blobs = MemoryBlobs()
    with tempfile.TemporaryDirectory() as tmp:
        summary = generate_dataset(Path(tmp) / "demo", spec)
        seconds = time.perf_counter() - started
        log.info("drew %d photos (+%d bad) in %.0f s", summary.good_images, len(summary.bad_files), seconds)
        files, _ = local_files(summary.root)
        for key, path in files.items():
            blobs.write("raw", key, path.read_bytes())
        taxonomy = parse_taxonomy(summary.taxonomy_csv.read_text(encoding="utf-8"))
    drawn = time.perf_counter()
    prepared = prepare_dataset(blobs, "raw", "lake", taxonomy, DataConfig(image_size=image_size, workers=workers))
    log.info("data side in %.0f s", time.perf_counter() - drawn)
    sample = index_of(blobs, prepared.sample_ref)
    arrays: dict[str, Any] = {}
    for kind in ("parent", "flat"):
        train, val = training_data(blobs, "lake", sample, kind, None, seed=0)
        arrays[f"{kind}/train"], arrays[f"{kind}/val"] = train, val
        arrays[f"{kind}/test"] = evaluation_data(blobs, "lake", sample, kind)
    arrays["hier/test"] = load_split(blobs, "lake", sample, "test", flat_task(sample))
    groups = {}
    for group, ref in prepared.group_refs.items():
        index = index_of(blobs, ref)
        groups[group] = index.species_of(group)
        train, val = training_data(blobs, "lake", index, "child", group, seed=0)
        arrays[f"child:{group}/train"], arrays[f"child:{group}/val"] = train, val
        arrays[f"child:{group}/test"] = evaluation_data(blobs, "lake", index, "child", group)
    return {
        "arrays": arrays,
        "groups": groups,
        "dataset_version": sample.dataset_version,
        "seconds": time.perf_counter() - started,
    }


def _save(path: Path, data: dict[str, Any]) -> None:
    payload: dict[str, np.ndarray] = {}
    meta = {"groups": data["groups"], "dataset_version": data["dataset_version"], "seconds": data["seconds"]}
    meta["classes"] = {}
    for name, value in data["arrays"].items():
        payload[f"{name}|pixels"], payload[f"{name}|labels"] = value.pixels, value.labels
        meta["classes"][name] = list(value.classes)
    payload["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as f:
        np.savez(f, **payload)
    path.with_suffix(".tmp").rename(path)


def _load(path: Path) -> dict[str, Any]:
    from earthsnap_assets.ml.data import LabeledArrays

    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        arrays = {
            name: LabeledArrays(z[f"{name}|pixels"], z[f"{name}|labels"], classes)
            for name, classes in meta["classes"].items()
        }
    return {"arrays": arrays, "groups": meta["groups"], "dataset_version": meta["dataset_version"], "seconds": 0.0}


def demo_data(image_size: int, cache: Path | None, workers: int, images_per_species: int = 120) -> dict[str, Any]:
    key = hashlib.sha256(f"demo-{images_per_species}-seed{GROUPS_SEED}-{image_size}-v1".encode()).hexdigest()[:12]
    path = cache / f"demo-{image_size}px-{key}.npz" if cache else None
    if path is not None and path.exists():
        log.info("prepared arrays from %s", path)
        return _load(path)
    data = _prepare(image_size, workers, images_per_species)
    if path is not None:
        _save(path, data)
    return data


# ---------------------------------------------------------------------------------------------------- models


def _train(name: str, train, val, settings: dict[str, Any], init=None) -> dict[str, Any]:
    from earthsnap_assets.ml.train import TrainConfig, train_classifier

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in settings.items() if k in fields})
    started = time.perf_counter()
    result = train_classifier(train, val, config, init=init)
    seconds = time.perf_counter() - started
    log.info(
        "%s: %d epochs (best %d, val %.3f) in %.0f s",
        name,
        result.epochs_run,
        result.best_epoch,
        result.best_val_accuracy,
        seconds,
    )
    return {"result": result, "seconds": seconds}


def _model(result):
    from earthsnap_assets.ml.models import create_classifier

    model = create_classifier(result.config.backbone, len(result.classes))
    model.load_state_dict(result.state_dict)
    return model.eval()


def _probs(result, pixels: np.ndarray) -> np.ndarray:
    import torch

    from earthsnap_assets.ml.train import predict_logits

    logits = predict_logits(_model(result), pixels, 128, torch.device("cpu"))
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _accuracy(result, test) -> float:
    return float(np.mean(_probs(result, test.pixels).argmax(axis=1) == test.labels))


def _summary(trained: dict[str, Any], test) -> dict[str, Any]:
    r = trained["result"]
    return {
        "test_accuracy": round(_accuracy(r, test), 4),
        "val_accuracy": round(r.best_val_accuracy, 4),
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "final_train_accuracy": round(r.history[-1]["train_accuracy"], 4),
        "seconds": round(trained["seconds"], 1),
        "test_images": len(test),
    }


def hierarchical(parent, children: dict[str, Any], groups: dict[str, list[str]], test) -> dict[str, Any]:
    """Top-1 of the routed hierarchy on the parent sample's test photos, as serving answers: the expanded groups
    (serving's default routing) and, among them, the best P(group) x max P(species | group); plus the
    top-1-group-only and every-group numbers."""
    from earthsnap_assets.ml.routing import RoutingConfig, route

    order = list(parent.classes)
    flat = [s for g in order for s in groups[g]]
    truth = np.asarray([flat.index(test.classes[label]) for label in test.labels])
    n, g_count = len(test), len(order)
    parent_probs = _probs(parent, test.pixels)
    best_conditional = np.zeros((n, g_count))
    best_species = np.zeros((n, g_count), np.int64)
    offset = 0
    for gi, group in enumerate(order):
        child = children[group]
        assert list(child.classes) == groups[group], (child.classes, groups[group])
        conditional = _probs(child, test.pixels)
        best_species[:, gi] = offset + conditional.argmax(axis=1)
        best_conditional[:, gi] = conditional.max(axis=1)
        offset += len(groups[group])
    joint = parent_probs * best_conditional

    def top1(config: RoutingConfig) -> float:
        routes = route(parent_probs, config)
        expanded = np.zeros((n, g_count), bool)
        mask = np.arange(routes.order.shape[1])[None, :] < routes.counts[:, None]
        np.put_along_axis(expanded, routes.order, mask, axis=1)
        choice = np.where(expanded, joint, -1.0).argmax(axis=1)
        return float(np.mean(best_species[np.arange(n), choice] == truth))

    group_of_truth = np.repeat(np.arange(g_count), [len(groups[g]) for g in order])[truth]
    return {
        "top1_accuracy": round(top1(RoutingConfig()), 4),
        "top1_group_only_accuracy": round(top1(RoutingConfig(1, 1e-9, 1)), 4),
        "full_top1_accuracy": round(top1(RoutingConfig.everything(g_count)), 4),
        "routing_accuracy": round(float(np.mean(parent_probs.argmax(axis=1) == group_of_truth)), 4),
        "routing": RoutingConfig().as_dict(),
        "test_images": n,
    }


def _key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True)


def run_profile(
    profile: str, data: dict[str, Any], scratch_children: bool, flat: bool, trained: dict[str, Any]
) -> dict[str, Any]:
    """One profile; `trained` keeps parents and flat models by settings, so profiles that differ only in
    their children's settings train the parent (and the flat baseline) once."""
    from earthsnap_assets.ml.weights import from_bytes, to_bytes

    a, groups = data["arrays"], data["groups"]
    scratch_children = scratch_children or PROFILES[profile].get("children_start") == "scratch"
    parent_settings, child_settings = _settings(profile, "parent"), _settings(profile, "child")
    out: dict[str, Any] = {
        "profile": profile,
        "parent_settings": parent_settings,
        "child_settings": child_settings,
        "children_start": "scratch" if scratch_children else "parent",
    }
    key = _key(parent_settings)
    if f"parent:{key}" not in trained:
        trained[f"parent:{key}"] = _train(f"{profile}/parent", a["parent/train"], a["parent/val"], parent_settings)
    parent = trained[f"parent:{key}"]
    out["parent"] = _summary(parent, a["parent/test"]) | {"train_images": len(a["parent/train"])}
    init = None
    if not scratch_children:
        init = from_bytes(to_bytes(parent["result"].state_dict), "parent")
        child_settings = {**child_settings, "backbone": parent_settings["backbone"]}
        out["child_settings"] = child_settings
    children, out["children"] = {}, {}
    for group in groups:
        child = _train(
            f"{profile}/child:{group}", a[f"child:{group}/train"], a[f"child:{group}/val"], child_settings, init
        )
        children[group] = child["result"]
        out["children"][group] = _summary(child, a[f"child:{group}/test"]) | {
            "train_images": len(a[f"child:{group}/train"])
        }
    out["hierarchical"] = hierarchical(parent["result"], children, groups, a["hier/test"])
    child_accuracy = [c["test_accuracy"] for c in out["children"].values()]
    out["min_child_test_accuracy"] = min(child_accuracy)
    out["children_pass_gate"] = min(child_accuracy) >= CHILD_GATE
    out["meets_target"] = out["hierarchical"]["top1_accuracy"] >= TARGET_HIERARCHICAL and out["children_pass_gate"]
    seconds = out["parent"]["seconds"] + sum(c["seconds"] for c in out["children"].values())
    out["hierarchy_train_seconds"] = round(seconds, 1)
    log.info(
        "%s: hierarchical %.3f (routing %.3f), children %s, %.0f s",
        profile,
        out["hierarchical"]["top1_accuracy"],
        out["hierarchical"]["routing_accuracy"],
        child_accuracy,
        seconds,
    )
    if flat:
        if f"flat:{key}" not in trained:
            trained[f"flat:{key}"] = _train(f"{profile}/flat", a["flat/train"], a["flat/val"], parent_settings)
        out["flat"] = _summary(trained[f"flat:{key}"], a["flat/test"])
        log.info("%s: flat %.3f", profile, out["flat"]["test_accuracy"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="p96_drop", help="comma-separated profile names (see --list)")
    parser.add_argument(
        "--scratch-children", action="store_true", help="children from random weights, not the parent's backbone"
    )
    parser.add_argument("--no-flat", action="store_true", help="skip the flat baseline")
    parser.add_argument("--image-size", type=int, default=None, help="override the profiles' training resolution")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--workers", type=int, default=2, help="data side decoding threads")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "earthsnap-demo-accuracy")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--list", action="store_true", help="print the profiles and exit")
    parser.add_argument("--images-per-species", type=int, default=120, help="photos drawn per species (demo: 120)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("earthsnap_assets").setLevel(logging.WARNING)
    if args.list:
        print(json.dumps(PROFILES, indent=2))
        return 0
    profiles = [p.strip() for p in args.profile.split(",") if p.strip()]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profiles {unknown}; known: {sorted(PROFILES)}")
    sizes = {PROFILES[p].get("image_size", 64) for p in profiles}
    if args.image_size is None and len(sizes) > 1:
        parser.error(f"profiles of different image sizes {sorted(sizes)}: run them apart or pass --image-size")
    image_size = args.image_size or sizes.pop()

    import torch

    torch.set_num_threads(args.threads)
    data = demo_data(image_size, None if args.no_cache else args.cache, args.workers, args.images_per_species)
    rows = {name: len(v) for name, v in data["arrays"].items()}
    trained: dict[str, Any] = {}
    results = [run_profile(p, data, args.scratch_children, not args.no_flat, trained) for p in profiles]
    import timm

    print(
        json.dumps(
            {
                "dataset": {
                    "spec": {"images_per_species": args.images_per_species, "seed": GROUPS_SEED},
                    "image_size": image_size,
                    "dataset_version": data["dataset_version"],
                    "groups": data["groups"],
                    "rows": rows,
                    "prepare_seconds": round(data["seconds"], 1),
                },
                "target": {"hierarchical_top1": TARGET_HIERARCHICAL, "child_gate": CHILD_GATE},
                "profiles": results,
                "machine": {
                    "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "timm": timm.__version__,
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
