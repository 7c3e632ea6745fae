"""The eval transform (shared with serving) and the seeded batch augmentation."""

import numpy as np
import pytest
import torch

from earthsnap_assets.ml.preprocessing import PreprocessConfig, load_image_array
from earthsnap_assets.ml.transforms import MEAN, STD, augment_batch, preprocess_bytes, to_model_input
from earthsnap_assets_tests.ml.training_fixtures import photo

LOW = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD, strict=True)]).view(1, 3, 1, 1)
HIGH = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD, strict=True)]).view(1, 3, 1, 1)


def _batch(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_eval_transform_gives_normalised_float_chw_and_nchw():
    pixels = np.zeros((5, 7, 3), np.uint8)
    pixels[..., :] = np.round(np.array(MEAN) * 255).astype(np.uint8)
    single = to_model_input(pixels)
    assert single.shape == (3, 5, 7) and single.dtype == torch.float32
    assert single.abs().max() < 0.01  # the mean colour maps to ~0
    white = to_model_input(np.full((2, 4, 4, 3), 255, np.uint8))
    assert white.shape == (2, 3, 4, 4)
    assert torch.allclose(white, HIGH.expand_as(white))


def test_eval_transform_rejects_what_is_not_uint8_rgb():
    with pytest.raises(ValueError):
        to_model_input(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        to_model_input(np.zeros((4, 4, 4), np.uint8))


def test_endpoint_preprocessing_equals_the_eval_transform_of_the_shard_pixels():
    data = photo(7)
    expected = to_model_input(load_image_array(data, PreprocessConfig(image_size=40)))[None]
    got = preprocess_bytes(data, 40)
    assert got.shape == (1, 3, 40, 40) and torch.equal(got, expected)


def test_augmentation_is_a_function_of_the_generator_state():
    batch = _batch()
    a = augment_batch(batch, torch.Generator().manual_seed(3))
    b = augment_batch(batch, torch.Generator().manual_seed(3))
    c = augment_batch(batch, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentation_differs_per_sample_and_stays_in_the_normalised_range():
    batch = _batch(n=1).expand(8, -1, -1, -1).contiguous()  # 8 copies of one image
    out = augment_batch(batch, torch.Generator().manual_seed(0))
    assert len({out[i].sum().item() for i in range(8)}) == 8
    assert (out >= LOW.expand_as(out) - 1e-5).all() and (out <= HIGH.expand_as(out) + 1e-5).all()


def test_augmenting_a_flat_gray_image_keeps_it_flat_and_gray():
    """Crop, flip and jitter move pixels and scale intensities; none may invent structure or colour."""
    batch = torch.full((4, 12, 12, 3), 128, dtype=torch.uint8)
    out = augment_batch(batch, torch.Generator().manual_seed(1))
    unnormalised = out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    flat = unnormalised - unnormalised[:, :, :1, :1]
    assert flat.abs().max() < 1e-5
    assert (unnormalised[:, 0] - unnormalised[:, 1]).abs().max() < 1e-5
