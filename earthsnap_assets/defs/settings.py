"""Run configuration of the training stage, shared by the parent and child assets.

Fields left unset (None) take the training preset's value (`ml/presets.py`: `cpu` for the demo and CI,
`gpu` for real photos), chosen by `preset:` here or `EARTHSNAP_PRESET`; a value set in a run's config wins.
"""

import dataclasses
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field

from earthsnap_assets.ml.presets import preset
from earthsnap_assets.ml.train import TrainConfig
from earthsnap_assets.ml.tuning import SearchSpace, TuningBudget
from earthsnap_assets.settings import Settings

FROM_PRESET = "None = the preset's"


def visible_gpus() -> int:
    """GPUs this process can use (a Kubernetes step sees the ones its pod requested); 1 without any."""
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


class TrainingConfig(dg.Config):
    kind: ClassVar[str] = "parent"  # whose preset values apply: "parent" (and the flat baseline) or "child"

    preset: str | None = Field(None, description="training preset: cpu | gpu (None = EARTHSNAP_PRESET, else cpu)")
    batch_size: int | None = Field(None, description=FROM_PRESET)
    patience: int | None = Field(
        None, description=f"early stopping: epochs without a better val accuracy; {FROM_PRESET}"
    )
    label_smoothing: float = 0.1
    class_weighting: bool = Field(True, description="inverse-frequency class weights against imbalance")
    warmup_epochs: float = 1.0
    max_train_seconds: float | None = None
    seed: int = 0
    per_class: int | None = Field(None, description="parent: images per group (None = smallest group)")
    weights: str | None = Field(
        None,
        description="starting weights: none, timm:<model>[.<tag>] or hf-hub:<org>/<repo> (from the local Hugging "
        f"Face cache), s3://bucket/key.safetensors or a path; the sha256 is recorded on the model; {FROM_PRESET}",
    )
    allow_download: bool = Field(False, description="let hub weights download when not in the local cache")
    warm_start: str = Field(
        "parent",
        description="children: 'parent' starts from the parent's trained backbone (its architecture), "
        "'weights' from `weights`",
    )
    keep: str | None = Field(
        None, description=f"which epoch a run returns: 'best' validation accuracy or 'last'; {FROM_PRESET}"
    )
    layer_decay: float | None = Field(None, description=f"layer-wise LR decay (timm), 1.0 = off; {FROM_PRESET}")
    freeze_epochs: int | None = Field(None, description=f"epochs training only the new head first; {FROM_PRESET}")
    world_size: int | None = Field(
        None,
        description="data-parallel processes, one per GPU (None = every GPU this step's pod was given, "
        "EARTHSNAP_GPUS_PER_STEP on Kubernetes; 1 on CPU)",
    )

    def resolved(self) -> dict[str, Any]:
        """The preset's values for this kind of model, overridden by every field this run set."""
        values = preset(self.preset or Settings.from_env().preset).values(self.kind)
        return {**values, **{k: v for k, v in self.model_dump().items() if v is not None}}

    def base(self) -> TrainConfig:
        values = self.resolved()
        if values.get("layer_decay") == 1.0:
            values["layer_decay"] = None
        values["world_size"] = values.get("world_size") or visible_gpus()
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in values.items() if k in fields})

    def weights_source(self) -> str:
        return self.resolved()["weights"]


class TuningConfig(TrainingConfig):
    """Search budget and space, plus the training settings every trial uses."""

    trials: int | None = Field(
        None, description=f"at most this many trials (0 = no search: the preset's lr, epochs, ...); {FROM_PRESET}"
    )
    seconds: float = Field(300.0, description="and at most this long")
    subset_per_class: int | None = Field(
        None, description=f"tuning trains on this many images per class; {FROM_PRESET}"
    )
    backbone_choices: list[str] | None = Field(None, description=f"timm backbones to choose from; {FROM_PRESET}")
    epoch_choices: list[int] | None = Field(None, description=f"epoch counts to choose from; {FROM_PRESET}")
    lr_min: float | None = None
    lr_max: float | None = None

    def space(self) -> SearchSpace:
        v = self.resolved()
        return SearchSpace(
            tuple(v["backbone_choices"]), lr=(v["lr_min"], v["lr_max"]), epochs=tuple(v["epoch_choices"])
        )

    def budget(self) -> TuningBudget:
        return TuningBudget(trials=self.resolved()["trials"], seconds=self.seconds, seed=self.seed)

    def subset(self) -> int | None:
        return self.resolved()["subset_per_class"]


class GateConfig(dg.Config):
    min_accuracy: float = Field(0.5, description="test accuracy a version needs to pass the gate")
    tolerance: float = Field(0.02, description="how far below production a version may be and still pass")


class ChildTrainingConfig(TrainingConfig):
    """Children see few images per class: the presets give them smaller batches and more patience."""

    kind: ClassVar[str] = "child"


class ChildTuningConfig(TuningConfig):
    """A child's search (the preset's child values): when it starts from the parent's backbone, the
    backbone is the parent's and the search tunes the rest."""

    kind: ClassVar[str] = "child"


class ChildGateConfig(GateConfig):
    """A child chooses among a group's few species: chance is 1/3 for three, so its floor sits lower."""

    min_accuracy: float = Field(0.4, description="test accuracy a child version needs to pass the gate")
