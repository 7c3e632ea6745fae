"""Run configuration of the training stage, shared by the parent and child assets."""

import dataclasses

import dagster as dg
from pydantic import Field

from earthsnap_assets.ml.models import BACKBONES
from earthsnap_assets.ml.train import TrainConfig
from earthsnap_assets.ml.tuning import SearchSpace, TuningBudget


class TrainingConfig(dg.Config):
    batch_size: int = 32
    patience: int = Field(4, description="early stopping: epochs without a better validation accuracy")
    label_smoothing: float = 0.1
    class_weighting: bool = Field(True, description="inverse-frequency class weights against imbalance")
    warmup_epochs: float = 1.0
    max_train_seconds: float | None = None
    seed: int = 0
    per_class: int | None = Field(None, description="parent: images per group (None = smallest group)")
    weights: str = Field(
        "none",
        description="starting weights: none, timm:<model>[.<tag>] or hf-hub:<org>/<repo> (from the local Hugging "
        "Face cache), s3://bucket/key.safetensors or a path; the sha256 is recorded on the model",
    )
    allow_download: bool = Field(False, description="let hub weights download when not in the local cache")
    warm_start: str = Field(
        "parent",
        description="children: 'parent' starts from the parent's trained backbone (its architecture), "
        "'weights' from `weights`",
    )
    layer_decay: float | None = Field(None, description="layer-wise LR decay for fine-tuning (timm), e.g. 0.75")
    freeze_epochs: int = Field(0, description="epochs that train only the new head before the whole network")

    def base(self) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.model_dump().items() if k in fields})


class TuningConfig(TrainingConfig):
    """Search budget and space, plus the training settings every trial uses."""

    trials: int = Field(6, description="at most this many trials")
    seconds: float = Field(300.0, description="and at most this long")
    subset_per_class: int = Field(40, description="tuning trains on this many images per class")
    backbone_choices: list[str] = Field(list(BACKBONES[:2]), description="timm backbones to choose from")
    epoch_choices: list[int] = Field([6, 12], description="epoch counts to choose from")
    lr_min: float = 3e-4
    lr_max: float = 1e-2
    seed: int = 0

    def space(self) -> SearchSpace:
        return SearchSpace(
            tuple(self.backbone_choices), lr=(self.lr_min, self.lr_max), epochs=tuple(self.epoch_choices)
        )

    def budget(self) -> TuningBudget:
        return TuningBudget(trials=self.trials, seconds=self.seconds, seed=self.seed)


class GateConfig(dg.Config):
    min_accuracy: float = Field(0.5, description="test accuracy a version needs to pass the gate")
    tolerance: float = Field(0.02, description="how far below production a version may be and still pass")


class ChildTrainingConfig(TrainingConfig):
    """Children see few images per class: smaller batches and more patience give them enough steps."""

    batch_size: int = 16
    patience: int = Field(12, description="early stopping: epochs without a better validation accuracy")


class ChildTuningConfig(TuningConfig):
    """A child's search: the residual backbone (it learns within-group traits from ~40 photos per species,
    where the ConvNeXt-style one stayed at chance in our runs), longer schedules, three trials."""

    batch_size: int = 16
    patience: int = 12
    lr_min: float = 5e-4
    lr_max: float = 4e-3
    trials: int = Field(3, description="at most this many trials")
    subset_per_class: int = Field(30, description="tuning trains on this many images per class")
    backbone_choices: list[str] = Field(["test_resnet"], description="timm backbones to choose from")
    epoch_choices: list[int] = Field([30], description="epoch counts to choose from")


class ChildGateConfig(GateConfig):
    """A child chooses among a group's few species: chance is 1/3 for three, so its floor sits lower."""

    min_accuracy: float = Field(0.4, description="test accuracy a child version needs to pass the gate")
