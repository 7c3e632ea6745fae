"""Tuning and full training of one model, tracked in MLflow; plain functions the assets call."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from earthsnap_assets.hashing import fingerprint
from earthsnap_assets.ml.checkpoints import LakeCheckpoints
from earthsnap_assets.ml.data import DatasetIndex
from earthsnap_assets.ml.distributed import train_distributed
from earthsnap_assets.ml.models import create_classifier
from earthsnap_assets.ml.train import TrainConfig, train_classifier
from earthsnap_assets.ml.transforms import MEAN, STD, to_model_input
from earthsnap_assets.ml.tuning import SearchSpace, TrialRecord, TuningBudget, tune
from earthsnap_assets.pipeline.starting_weights import StartingPoint, save_trained
from earthsnap_assets.pipeline.tasks import label_task, training_data
from earthsnap_assets.refs import ModelRef
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore

log = logging.getLogger(__name__)
TUNED_FIELDS = ("backbone", "lr", "weight_decay", "epochs")


def _tags(index: DatasetIndex, kind: str, group: str | None) -> dict[str, str]:
    return {"dataset_version": index.dataset_version, "task": kind, "group": group or "", "layout": index.layout_id}


def fit(train, val, config: TrainConfig, **kwargs):
    """One process, or `config.world_size` data-parallel processes (one per GPU the step's pod requested)."""
    return (
        train_distributed(train, val, config, **kwargs)
        if config.world_size > 1
        else train_classifier(train, val, config, **kwargs)
    )


def single_species(index: DatasetIndex, kind: str, group: str | None) -> bool:
    """A group with one species needs no network: P(species | group) = 1."""
    return kind == "child" and len(index.species_of(group or "")) == 1


def run_tuning(
    store: ObjectStore,
    registry: MlflowRegistry,
    index: DatasetIndex,
    kind: str,
    group: str | None,
    space: SearchSpace,
    budget: TuningBudget,
    base: TrainConfig,
    subset_per_class: int | None,
    start: StartingPoint | None = None,
) -> dict:
    """Search on a subset with short trials; every trial is a nested MLflow run. Returns the best params.

    Trials start where full training will (`start`); weights fit one architecture, so a start with a
    backbone of its own (the parent's) fixes the backbone and the search tunes the rest."""
    if single_species(index, kind, group):
        return {"single_species": True}
    start = start or StartingPoint(None, "scratch")
    if start.backbone:
        space = dataclasses.replace(space, backbones=(start.backbone,))
    if budget.trials == 0:  # no search: the preset's measured values (the demo's cpu preset)
        chosen = {"backbone": start.backbone or base.backbone, "lr": base.lr, "weight_decay": base.weight_decay}
        return {**chosen, "epochs": base.epochs, "searched": False}
    train, val = training_data(store, store.lake_bucket, index, kind, group, base.seed, subset_per_class)
    with registry.run(f"tune-{kind}{'-' + group if group else ''}", _tags(index, kind, group)) as parent_run:
        registry.log_params(
            parent_run,
            {"trials": budget.trials, "seconds": budget.seconds, "subset": len(train), **start.lineage()},
        )

        def objective(params: dict, should_prune) -> float:
            config = dataclasses.replace(base, **params, patience=None)
            result = fit(train, val, config, should_prune=should_prune, init=start.pretrained)
            return result.best_val_accuracy

        def on_trial(trial: TrialRecord) -> None:
            with registry.run(f"trial-{trial.number}", {"state": trial.state}, parent_run_id=parent_run) as run_id:
                registry.log_params(run_id, trial.params)
                if trial.value is not None:
                    registry.log_metrics(run_id, {"val_accuracy": trial.value, "seconds": trial.seconds})

        result = tune(objective, space, budget, on_trial=on_trial)
        registry.log_metrics(parent_run, {"best_val_accuracy": result.best_value, "pruned_trials": result.pruned})
        registry.log_params(parent_run, {f"best_{k}": v for k, v in result.best_params.items()})
    return {
        **result.best_params,
        "best_val_accuracy": result.best_value,
        "trials": len(result.trials),
        "pruned": result.pruned,
        "tuning_run_id": parent_run,
    }


def run_training(
    store: ObjectStore,
    registry: MlflowRegistry,
    index: DatasetIndex,
    kind: str,
    group: str | None,
    params: dict,
    base: TrainConfig,
    per_class: int | None = None,
    start: StartingPoint | None = None,
) -> ModelRef:
    """Full training with tuned params, resumable from lake checkpoints; logs a pt2 model to MLflow.

    Training starts from `start` (scratch, pretrained weights or the parent's backbone, whose architecture
    then wins over the tuned one); the trained weights go to the lake as safetensors for children to
    start from, and the lineage of both into the run's params and the returned ModelRef."""
    classes = label_task(index, kind, group).classes
    common = {
        "task": kind,
        "group": group,
        "classes": tuple(classes),
        "dataset_version": index.dataset_version,
        "dataset_uri": f"s3://{store.lake_bucket}/{index.source}",
    }
    if single_species(index, kind, group):
        return ModelRef(**common, image_size=index.image_size)
    start = start or StartingPoint(None, "scratch")
    config = dataclasses.replace(base, **{k: params[k] for k in TUNED_FIELDS if k in params})
    if start.backbone:
        config = dataclasses.replace(config, backbone=start.backbone)
    train, val = training_data(store, store.lake_bucket, index, kind, group, config.seed, per_class)
    name = f"{kind}{'-' + group if group else ''}"
    key_fields = {**dataclasses.asdict(config), **start.lineage()}
    checkpoint_key = f"checkpoints/{index.dataset_version}/{name}/{fingerprint(key_fields)}.pt"
    with registry.run(name, _tags(index, kind, group)) as run_id:
        registry.log_params(
            run_id,
            {**dataclasses.asdict(config), "train_images": len(train), "val_images": len(val), **start.lineage()},
        )
        result = fit(
            train,
            val,
            config,
            checkpoints=LakeCheckpoints(store, store.lake_bucket, checkpoint_key),
            on_epoch=lambda epoch, metrics: registry.log_metrics(run_id, metrics, step=epoch),
            init=start.pretrained,
        )
        weights_uri, weights_sha256 = save_trained(store, result.state_dict)
        registry.log_params(run_id, {"weights_uri": weights_uri, "weights_sha256": weights_sha256})
        model = create_classifier(config.backbone, len(classes), config.drop_rate)
        model.load_state_dict(result.state_dict)
        example = to_model_input(np.zeros((2, index.image_size, index.image_size, 3), np.uint8)).numpy()
        metadata = {
            "classes": list(classes),
            "task": kind,
            "group": group or "",
            "image_size": index.image_size,
            "dataset_version": index.dataset_version,
            "normalize_mean": list(MEAN),
            "normalize_std": list(STD),
        }
        registry.log_json(run_id, "labels.json", metadata)
        with torch.no_grad():
            model_uri = registry.log_model(run_id, model.eval(), example, metadata)
        registry.log_metrics(
            run_id,
            {
                "best_val_accuracy": result.best_val_accuracy,
                "best_epoch": result.best_epoch,
                "train_seconds": result.train_seconds,
                "parameter_count": result.parameter_count,
            },
        )
    return ModelRef(
        **common,
        image_size=index.image_size,
        run_id=run_id,
        model_uri=model_uri,
        val_accuracy=result.best_val_accuracy,
        parameter_count=result.parameter_count,
        train_seconds=result.train_seconds,
        params={**dataclasses.asdict(config), "resumed_from_epoch": result.resumed_from_epoch},
        weights_uri=weights_uri,
        weights_sha256=weights_sha256,
        lineage=tuple(sorted(start.lineage().items())),
    )
