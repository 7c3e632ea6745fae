"""Networks with fixed outputs and a small hierarchy, for routing and hierarchical evaluation tests."""

from __future__ import annotations

import torch

from earthsnap_assets.ml.hierarchy import Hierarchy


class Fixed(torch.nn.Module):
    """Logits = log of fixed probabilities, whatever the input: P is exactly `probs`."""

    def __init__(self, probs: list[list[float]] | list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.log(torch.tensor(probs, dtype=torch.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits if self.logits.dim() == 2 else self.logits.expand(len(x), -1)
        return logits[: len(x)]


HIERARCHY = Hierarchy(
    groups=["birds", "flowers", "insects", "fungi"],
    species={"birds": ["robin"], "flowers": ["rose", "tulip"], "insects": ["moth", "bee", "ant"], "fungi": ["a", "b"]},
)
