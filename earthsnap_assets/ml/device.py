"""Where training runs: one place decides CUDA vs CPU, mixed precision and memory layout.

On CUDA we train in bf16 autocast (no loss scaling needed, unlike fp16) with channels_last tensors, which
is what tensor cores want for convolutions. On CPU everything stays float32 and contiguous, which is also
what makes CPU runs bit-for-bit reproducible.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


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


def on_device(model: nn.Module, device: torch.device, image_size: int) -> nn.Module:
    """The model on `device`, or on the CPU when an exported program cannot run there (it then still runs)."""
    if device.type == "cpu":
        return model
    try:
        moved = model.to(device)
        with torch.inference_mode(), autocast(device):
            moved(torch.zeros(2, 3, image_size, image_size, device=device))
        return moved
    except Exception:  # a torch.export graph may pin constants to the CPU it was exported on
        log.warning("model does not run on %s; evaluating it on the CPU", device, exc_info=True)
        return model.to("cpu")


def device_of(model: nn.Module, default: torch.device) -> torch.device:
    """Where a model's weights are (inputs must go there), `default` for a model without any."""
    for tensor in model.parameters():
        return tensor.device
    return default
