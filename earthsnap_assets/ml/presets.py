"""Named training presets: the settings a user picks by name instead of tuning twenty knobs.

``cpu``  the demo and CI: 96 px photos, timm's tiny ResNet from scratch, fixed 40-epoch schedules measured on
         the demo data (no search); a 2-core runner trains the whole hierarchy in minutes. Children
         warm-start from the parent's backbone.
``gpu``  real photos on a GPU pool: 224 px (the weights' own pretrained resolution), a modern small
         pretrained backbone (ConvNeXt-Tiny, ImageNet-12k then 1k weights from the local Hugging Face cache,
         sha256 recorded), fine-tuned with layer-wise LR decay after a one-epoch frozen warm-up; children
         warm-start from the parent's fine-tuned backbone.

The preset is chosen by ``EARTHSNAP_PRESET`` (default ``cpu``) or per run (`preset:` in an asset's config);
any field set explicitly in a run's config wins over the preset's value. The image size belongs to the data
side (a layout is built at one resolution), so switching presets builds new layouts: a new dataset
layout, never a silently mixed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT = "cpu"
FALLBACK_RESOLUTION = 224


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int | None  # None: the resolution the parent's pretrained weights were trained at (timm's config)
    parent: dict[str, Any]  # TrainingConfig / TuningConfig values of the parent and the flat baseline
    child: dict[str, Any] = field(default_factory=dict)  # overrides of `parent` for the children

    def resolution(self) -> int:
        """The layouts' image size: set, or taken from the pretrained weights' own config."""
        if self.image_size is not None:
            return self.image_size
        from earthsnap_assets.ml.models import pretrained_resolution

        source = self.parent.get("weights") or ""
        return pretrained_resolution(source.removeprefix("timm:"), default=FALLBACK_RESOLUTION)

    def values(self, kind: str) -> dict[str, Any]:
        """Config values for `kind` ("parent", "flat" or "child")."""
        return {**self.parent, **(self.child if kind == "child" else {})}


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        name="cpu",
        # measured on the demo data (`bench/demo_accuracy.py`, profile p96_drop): 96 px, test_resnet, fixed
        # schedules, children from the parent's backbone: hierarchical top-1 0.72 (flat 0.70); at 64 px
        # nothing tried passed 0.63, and children from scratch reached 0.65 with the same settings
        image_size=96,
        parent={
            "weights": "none",
            "backbone": "test_resnet",
            "epochs": 40,
            "lr": 3e-3,
            "weight_decay": 0.05,
            "drop_rate": 0.0,
            "batch_size": 32,
            "patience": None,  # keep the best epoch of the whole (short) schedule
            "trials": 0,  # no search: these measured values (tuning is for real data; set trials to search)
            "backbone_choices": ["test_resnet", "test_convnext"],
            "epoch_choices": [40],
            "lr_min": 1e-3,
            "lr_max": 5e-3,
            "subset_per_class": 40,
            "layer_decay": None,
            "freeze_epochs": 0,
        },
        child={
            "epochs": 40,
            "lr": 2e-3,
            "weight_decay": 0.1,
            "drop_rate": 0.2,
            "keep": "last",  # a child's val set is ~36 photos: its "best" epoch is noise (ferns kept epoch 8 of 40)
            "batch_size": 16,
            "backbone_choices": ["test_resnet"],  # used only when a child does not start from the parent
            "lr_min": 5e-4,
            "lr_max": 4e-3,
            "subset_per_class": 30,
        },
    ),
    "gpu": Preset(
        name="gpu",
        image_size=None,  # 224: convnext_tiny.in12k_ft_in1k's pretrained input size
        parent={
            "weights": "timm:convnext_tiny.in12k_ft_in1k",
            "batch_size": 128,
            "patience": 3,
            "backbone_choices": ["convnext_tiny"],
            "epoch_choices": [8, 15],
            "lr_min": 5e-5,
            "lr_max": 1e-3,
            "trials": 4,
            "subset_per_class": 200,
            "layer_decay": 0.75,
            "freeze_epochs": 1,
        },
        child={
            "batch_size": 64,
            "patience": 4,
            "epoch_choices": [5, 10],  # from the parent's fine-tuned backbone: a short schedule suffices
            "lr_min": 2e-5,
            "lr_max": 5e-4,
            "trials": 3,
            "subset_per_class": 60,
        },
    ),
}


def preset(name: str | None) -> Preset:
    """The preset called `name` (None: the default); an unknown name is an error listing the known ones."""
    key = name or DEFAULT
    if key not in PRESETS:
        raise ValueError(f"unknown training preset {key!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
