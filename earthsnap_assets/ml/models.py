"""Classifier networks: any timm architecture, from scratch or from pretrained weights (`ml/weights.py`).

`BACKBONES` are the small ones hyper-parameter search chooses from on the CPU preset, picked by measurement
(see BACKBONE_COSTS) for learning quickly from scratch at 32-64 px: on a 4-class synthetic task each reaches >= 95% val
accuracy within 4 short epochs. The mobile nets one would reach for first (lcnet_035/050,
mobilenetv3_small_050, mobilenetv4_conv_small_035, mobilenetv2_035) cost the same per step but stayed
below 45% there: depthwise BN nets need long schedules, and at 32 px their last stage is 1 x 1.
`test_resnet` and `test_convnext` are timm's smallest ResNet-D and ConvNeXt configurations (timm pins
them for its own tests; we pin timm). `resnet10t` is the capacity option for GPUs and larger data.
"""

from __future__ import annotations

import timm
from torch import nn

from earthsnap_assets.ml.weights import LoadReport, Pretrained, apply

# backbone -> (parameters at 10 classes, CPU-ms per train step: batch 32, 64 px, AdamW, one thread)
BACKBONE_COSTS: dict[str, tuple[int, int]] = {
    "test_convnext": (207_778, 46),
    "test_resnet": (373_658, 76),
    "starnet_s050": (415_018, 96),
    "resnet10t": (4_927_618, 253),
}
BACKBONES: tuple[str, ...] = tuple(BACKBONE_COSTS)
DEFAULT_BACKBONE = "test_convnext"


def validate_backbone(backbone: str) -> str:
    """`backbone` if timm knows the architecture, else an error naming close matches."""
    name = backbone.split(".", 1)[0]  # "resnet50.a1_in1k" names weights of the architecture "resnet50"
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:8]
        raise ValueError(f"{backbone!r} is not a timm architecture{f' (close: {close})' if close else ''}")
    return name


def create_classifier(
    backbone: str, num_classes: int, drop_rate: float = 0.0, pretrained: Pretrained | None = None
) -> nn.Module:
    """A timm classifier for `num_classes`: random, or `pretrained`'s backbone with a fresh zero head.

    timm itself never downloads here (`pretrained=False`): weights come only through `ml/weights.py`,
    which reads a local cache or a URI and records what it read.
    """
    model, _ = create_classifier_with_report(backbone, num_classes, drop_rate, pretrained)
    return model


def create_classifier_with_report(
    backbone: str, num_classes: int, drop_rate: float = 0.0, pretrained: Pretrained | None = None
) -> tuple[nn.Module, LoadReport | None]:
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    name = validate_backbone(backbone)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    report = apply(model, pretrained) if pretrained is not None else None
    _zero_init_classifier(model)
    return model, report


def pretrained_resolution(backbone: str, default: int) -> int:
    """The image size a backbone's pretrained weights were trained at (timm's config), else `default`."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(backbone)
    except RuntimeError:  # an unknown pretrained tag
        cfg = None
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else default


def _zero_init_classifier(model: nn.Module) -> None:
    """Start from logits of 0 (loss = log K): mobile nets at 32-64 px otherwise begin with logits of
    magnitude 5-20 from an unnormalised head, and the first epochs are spent undoing that."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
