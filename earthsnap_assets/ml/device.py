"""Where training runs: one place decides CUDA vs CPU, mixed precision and memory layout.

On CUDA we train in bf16 autocast (no loss scaling needed, unlike fp16) with channels_last tensors, which
is what tensor cores want for convolutions. On CPU everything stays float32 and contiguous, which is also
what makes CPU runs bit-for-bit reproducible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present, else CPU; `prefer` ("cpu", "cuda", "cuda:1", "auto" or None) pins a choice."""
    if prefer and prefer != "auto":
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA; a no-op on CPU (CPU bf16 is slow on most hosts and breaks reproducibility)."""
    if is_cuda(device):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device`, in channels_last layout on CUDA."""
    model = model.to(device)
    if is_cuda(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch (asynchronously from pinned memory); 4-D float batches become channels_last on CUDA."""
    x = x.to(device, non_blocking=True)
    if is_cuda(device) and x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x
