"""Routed inference: the parent on every photo, then each expanded group's child once per batch.

This is the one code path from pixels to a hierarchical prediction: the serving endpoint answers with it
and `hierarchical_evaluation` scores it, so the accuracy evaluation reports is the accuracy served.
Which groups a photo expands and how probabilities combine is `ml/routing.py`; this module runs the
networks (on CPU or CUDA) and keeps, per photo, only its best `keep` species: never a photos x species
matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from earthsnap_assets.ml.device import autocast, device_of, to_device_batch
from earthsnap_assets.ml.hierarchy import Hierarchy
from earthsnap_assets.ml.routing import Routes, RoutingConfig, TopK, route


@dataclass(frozen=True)
class RoutedBatch:
    """A batch's routed predictions: parent probabilities, the routes taken and each photo's top species."""

    parent_probs: np.ndarray  # N x G
    routes: Routes
    top: TopK  # N x keep, flat species indices, best first
    children_run: dict[str, int]  # group -> photos its child ran on (groups with a network only)

    def __len__(self) -> int:
        return len(self.parent_probs)


class RoutedClassifier:
    """Parent -> routed children over one hierarchy.

    `child(group)` returns the group's network (a cache lookup in serving and evaluation); it is called
    only for groups in `deployed` that some photo of the batch expands. A one-species group needs no
    network (P = 1); a multi-species group outside `deployed` (its child is not at this alias yet) gets a
    uniform P(species | group), so the answer can still back off to that group.
    """

    def __init__(
        self,
        parent: torch.nn.Module,
        hierarchy: Hierarchy,
        child: Callable[[str], torch.nn.Module],
        deployed: frozenset[str],
        routing: RoutingConfig,
        device: torch.device | None = None,
        keep: int = 5,
        chunk: int = 256,
    ) -> None:
        self.parent = parent
        self.hierarchy = hierarchy
        self.child = child
        self.deployed = deployed
        self.routing = routing
        self.device = device or torch.device("cpu")
        self.keep = keep
        self.chunk = chunk

    def predict(self, x: torch.Tensor) -> RoutedBatch:
        """N x 3 x S x S model inputs -> routed predictions; each needed child runs once on its photos."""
        parent_probs, routes = self.route(x)
        return self.finish(x, parent_probs, routes)

    def route(self, x: torch.Tensor) -> tuple[np.ndarray, Routes]:
        """The parent's pass and the groups each photo expands (the first half of `predict`)."""
        parent_probs = self.probabilities(self.parent, x)
        if parent_probs.shape[1] != len(self.hierarchy.groups):
            raise ValueError(
                f"the parent outputs {parent_probs.shape[1]} groups, expected {len(self.hierarchy.groups)}"
            )
        return parent_probs, route(parent_probs, self.routing)

    def finish(self, x: torch.Tensor, parent_probs: np.ndarray, routes: Routes) -> RoutedBatch:
        """The routed children's passes and each photo's top species (the second half of `predict`)."""
        top = TopK.empty(len(x), self.keep)
        children_run: dict[str, int] = {}
        for group, rows in routes.rows_by_group().items():
            conditional = self.conditional(group, x[torch.from_numpy(rows)])
            if self.hierarchy.groups[group] in self.deployed:
                children_run[self.hierarchy.groups[group]] = len(rows)
            species = self.hierarchy.offsets[group] + np.arange(conditional.shape[1])
            joint = parent_probs[rows, group][:, None] * conditional
            top.merge(rows, np.broadcast_to(species, conditional.shape), joint, conditional)
        return RoutedBatch(parent_probs, routes, top, children_run)

    def conditional(self, group: int, x: torch.Tensor) -> np.ndarray:
        """P(species | group) of the photos `x` (len(x) x the group's species), in the child's output order."""
        name, width = self.hierarchy.groups[group], self.hierarchy.width(group)
        if width == 1:
            return np.ones((len(x), 1))
        if name not in self.deployed:
            return np.full((len(x), width), 1.0 / width)
        probs = self.probabilities(self.child(name), x)
        if probs.shape[1] != width:
            raise ValueError(f"the child of {name!r} outputs {probs.shape[1]} species, the hierarchy has {width}")
        return probs

    def probabilities(self, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        return softmax_probs(model, x, self.device, self.chunk)


def softmax_probs(model: torch.nn.Module, x: torch.Tensor, device: torch.device, chunk: int = 256) -> np.ndarray:
    """Softmax of a network's logits, float64 on the CPU, computed `chunk` photos at a time on `device`."""
    outputs = []
    device = device_of(model, device)  # a model that could not move to the GPU still runs on the CPU
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(x), chunk):
            logits = model(to_device_batch(x[start : start + chunk], device))
            outputs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(outputs).astype(np.float64) if outputs else np.zeros((0, 0))
