"""Classifier networks: small timm backbones trained from scratch on 32-96 px species photos.

These are the backbones hyper-parameter search chooses from, picked by measurement (see BACKBONE_COSTS)
for learning quickly from scratch at 32-64 px: on a 4-class synthetic task each reaches >= 95% val
accuracy within 4 short epochs. The mobile nets one would reach for first (lcnet_035/050,
mobilenetv3_small_050, mobilenetv4_conv_small_035, mobilenetv2_035) cost the same per step but stayed
below 45% there: depthwise BN nets need long schedules, and at 32 px their last stage is 1 x 1.
`test_resnet` and `test_convnext` are timm's smallest ResNet-D and ConvNeXt configurations (timm pins
them for its own tests; we pin timm). `resnet10t` is the capacity option for GPUs and larger data.
"""

from __future__ import annotations

import timm
from torch import nn

# backbone -> (parameters at 10 classes, CPU-ms per train step: batch 32, 64 px, AdamW, one thread)
BACKBONE_COSTS: dict[str, tuple[int, int]] = {
    "test_convnext": (207_778, 46),
    "test_resnet": (373_658, 76),
    "starnet_s050": (415_018, 96),
    "resnet10t": (4_927_618, 253),
}
BACKBONES: tuple[str, ...] = tuple(BACKBONE_COSTS)
DEFAULT_BACKBONE = "test_convnext"


def create_classifier(backbone: str, num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """A randomly initialised timm classifier (never downloads weights: the platform runs offline)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    _zero_init_classifier(model)
    return model


def _zero_init_classifier(model: nn.Module) -> None:
    """Start from logits of 0 (loss = log K): mobile nets at 32-64 px otherwise begin with logits of
    magnitude 5-20 from an unnormalised head, and the first epochs are spent undoing that."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
