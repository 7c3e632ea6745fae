"""The CPU feed is the training data path as it was before GPU feeding: same rows, same augmentation, bit for bit."""

import torch

from earthsnap_assets.ml.feeding import make_feed, steps_per_epoch
from earthsnap_assets.ml.transforms import augment_batch
from earthsnap_assets_tests.ml.training_fixtures import color_squares

CPU = torch.device("cpu")


def _before(data, batch_size: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What `train._array_batches` + `augment_batch` produced before the feed existed."""
    order = torch.randperm(len(data), generator=generator).numpy()
    out = []
    for start in range(0, steps_per_epoch(len(data), batch_size) * batch_size, batch_size):
        rows = order[start : start + batch_size]
        out.append((augment_batch(torch.from_numpy(data.pixels[rows]), generator), torch.from_numpy(data.labels[rows])))
    return out


def test_cpu_batches_are_bit_identical_to_the_pre_feed_path():
    data = color_squares(37, size=16, seed=4)  # batches of 8: 8, 8, 8, 8, 5
    feed = make_feed(data, 8, CPU)
    assert feed.store.kind == "host"
    for epoch in range(2):
        got = list(feed.epoch(epoch, torch.Generator().manual_seed(epoch)))
        expected = _before(data, 8, torch.Generator().manual_seed(epoch))
        assert [len(y) for _, y in got] == [8, 8, 8, 8, 5]
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_a_last_batch_of_one_is_dropped_as_before():
    data = color_squares(17, size=16, seed=5)
    batches = list(make_feed(data, 8, CPU).epoch(0, torch.Generator().manual_seed(0), augment=False))
    assert [len(y) for _, y in batches] == [8, 8] and batches[0][0].dtype == torch.uint8
