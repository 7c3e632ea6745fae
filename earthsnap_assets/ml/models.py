"""Classifier networks: small timm backbones trained from scratch on 32-96 px species photos.

The list is what hyper-parameter search chooses from. Each was measured on CPU (batch 32, 64 px, one
AdamW step, 2 cores): they train an epoch of a few thousand images in seconds to a minute, which keeps
CPU-only runs and CI practical; on a GPU they are cheap enough to train one child model per group.
"""

from __future__ import annotations

import timm
from torch import nn

# backbone -> (parameters at 10 classes, approx. ms per train step at batch 32, 64 px, 2 CPU cores)
BACKBONE_COSTS: dict[str, tuple[int, int]] = {
    "lcnet_035": (376_180, 170),
    "mobilenetv3_small_050": (578_474, 260),
    "mobilenetv4_conv_small_035": (637_194, 235),
    "lcnet_050": (612_666, 420),
}
BACKBONES: tuple[str, ...] = tuple(BACKBONE_COSTS)
DEFAULT_BACKBONE = "lcnet_035"


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
