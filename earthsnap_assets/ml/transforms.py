"""Pixels -> model input: one eval transform shared by evaluation and serving, and the train augmentation.

Shards hold `load_image_array` output (uint8, S x S x 3), and the endpoint decodes uploads with the same
function, so `to_model_input` is the whole eval path. Augmentation works on a whole uint8 batch at once
(one `grid_sample` does crop + flip for every sample) and draws all its randomness from the generator it
is given, so an epoch's augmentation is a pure function of (batch, generator state).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from earthsnap_assets.ml.preprocessing import PreprocessConfig, load_image_array

# Fixed normalisation constants (ImageNet statistics): part of the model contract, never fitted per dataset.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

CROP_SCALE = (0.6, 1.0)  # fraction of the image area kept by the random crop
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratio range of the crop
JITTER = 0.3  # brightness / contrast / saturation factors drawn from [1 - JITTER, 1 + JITTER]
_GRAY = (0.299, 0.587, 0.114)


@functools.lru_cache(maxsize=32)
def _constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor, made once per device: `torch.tensor(list, device=gpu)` waits for the GPU's
    queue to drain (a blocking copy), which three times a step would stall every training step. Read-only."""
    return torch.tensor(values, dtype=dtype, device=device)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float NCHW or CHW in [0, 1] -> normalised with MEAN/STD."""
    shape = (3, 1, 1)
    mean = _constant(MEAN, x.dtype, x.device).view(shape)
    std = _constant(STD, x.dtype, x.device).view(shape)
    return (x - mean) / std


def _normalize_(x: torch.Tensor) -> torch.Tensor:
    """`normalize` in place, for a float NCHW batch that nothing else holds."""
    shape = (3, 1, 1)
    x.sub_(_constant(MEAN, x.dtype, x.device).view(shape))
    return x.div_(_constant(STD, x.dtype, x.device).view(shape))


def as_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor view of pixels, copying only arrays torch cannot share (read-only or strided)."""
    if isinstance(pixels, torch.Tensor):
        return pixels
    if not (pixels.flags.writeable and pixels.flags.c_contiguous):
        pixels = np.array(pixels, order="C")
    return torch.from_numpy(pixels)


def to_model_input(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 HWC -> float32 CHW, or uint8 NHWC -> float32 NCHW, scaled to [0, 1] and normalised."""
    x = as_tensor(pixels)
    if x.dtype != torch.uint8 or x.dim() not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 HWC or NHWC pixels with 3 channels, got {x.dtype} {tuple(x.shape)}")
    x = x.permute(2, 0, 1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return normalize(x.to(torch.float32).div(255.0)).contiguous()


def preprocess_bytes(data: bytes, image_size: int) -> torch.Tensor:
    """Photo bytes -> a 1 x 3 x S x S model input: exactly the path the serving endpoint takes."""
    return to_model_input(load_image_array(data, PreprocessConfig(image_size=image_size)))[None]


def _crop_flip_grid(n: int, height: int, width: int, u: torch.Tensor) -> torch.Tensor:
    """`grid_sample` grid (N x H x W x 2) of a random resized crop with a random h-flip, on `u`'s device.

    The transform is axis-aligned, so x depends only on the output column and y only on the row: two
    N x W / N x H vectors broadcast into the grid, instead of `affine_grid`'s batched matmul over every pixel.
    """
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[:, 0]
    log_ratio = math.log(CROP_RATIO[0]) + (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])) * u[:, 1]
    ratio = torch.exp(log_ratio)
    crop_w = torch.sqrt(area * ratio).clamp(max=1.0)
    crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
    center_x = (1.0 - crop_w) * (2.0 * u[:, 2] - 1.0)
    center_y = (1.0 - crop_h) * (2.0 * u[:, 3] - 1.0)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    gx = _base_coords(width, u.device) * (crop_w * flip)[:, None] + center_x[:, None]  # N x W
    gy = _base_coords(height, u.device) * crop_h[:, None] + center_y[:, None]  # N x H
    gx, gy = gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)
    return torch.stack((gx, gy), dim=-1)


def _base_coords(size: int, device: torch.device) -> torch.Tensor:
    """Pixel centres in [-1, 1] (align_corners=False), as `affine_grid` places them."""
    return (torch.arange(size, dtype=torch.float32, device=device) * 2.0 + 1.0) / size - 1.0


def _color_jitter_(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast, then saturation, each with a per-sample factor; x is NCHW in [0, 1], in place."""
    gray_weights = _constant(_GRAY, x.dtype, x.device).view(1, 3, 1, 1)
    brightness, contrast, saturation = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    x.mul_(brightness).clamp_(0.0, 1.0)
    mean_gray = (x * gray_weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x.sub_(mean_gray).mul_(contrast).add_(mean_gray).clamp_(0.0, 1.0)
    gray = (x * gray_weights).sum(dim=1, keepdim=True)
    return x.sub_(gray).mul_(saturation).add_(gray).clamp_(0.0, 1.0)


AUGMENT_DRAWS = 8  # uniform numbers per sample: crop area, ratio, x, y, flip, 3 jitter factors


def augment_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """The random numbers `augment_with` uses for `n` samples (N x 8, CPU), in one draw from `generator`.

    Separate from applying them so a data-parallel rank can draw a whole global batch's numbers, keeping the
    generator in step with a single process, and apply only the rows of its own slice.
    """
    return torch.rand(n, AUGMENT_DRAWS, generator=generator)


def augment_batch(batch_uint8_nhwc: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop, horizontal flip and colour jitter per sample -> normalised float NCHW.

    All random numbers come from `generator` (a CPU generator; the batch may live on any device) in one
    draw, so the result depends only on the batch and the generator's state.
    """
    _check_batch(batch_uint8_nhwc)
    return augment_with(batch_uint8_nhwc, augment_draws(batch_uint8_nhwc.shape[0], generator))


def augment_with(batch_uint8_nhwc: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """`augment_batch` with its random numbers given (`augment_draws` rows, one per sample).

    The crop grid and jitter factors are computed where the batch is: on a GPU, the draws cross once
    instead of a grid and factors per step.
    """
    _check_batch(batch_uint8_nhwc)
    n, device = batch_uint8_nhwc.shape[0], batch_uint8_nhwc.device
    if device.type == "cuda":  # from pageable memory the copy could wait for the queued steps; pinned, it need not
        draws = draws.pin_memory()
    u = draws.to(device, non_blocking=True)
    x = batch_uint8_nhwc.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    grid = _crop_flip_grid(n, x.shape[2], x.shape[3], u)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    factors = 1.0 - JITTER + 2.0 * JITTER * u[:, 5:8]
    return _normalize_(_color_jitter_(x, factors))


def _check_batch(batch_uint8_nhwc: torch.Tensor) -> None:
    if batch_uint8_nhwc.dtype != torch.uint8 or batch_uint8_nhwc.dim() != 4:
        raise ValueError(f"expected a uint8 NHWC batch, got {batch_uint8_nhwc.dtype} {tuple(batch_uint8_nhwc.shape)}")
