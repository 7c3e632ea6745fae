"""The parent sample's choice of rows: balanced over species, seeded by content, stable as photos arrive."""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa

from earthsnap_assets.lake.sample import choose, ranks


def _rows(count: int, start: int = 0, rare: int = 3) -> pa.Table:
    """`count` photos of a common species in train, plus `rare` of a rare one, and a few in test."""
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + count + rare + 4)]
    species = ["common"] * count + ["rare"] * rare + ["common", "rare", "common", "rare"]
    splits = ["train"] * (count + rare) + ["test"] * 4
    return pa.table({"sha256": shas, "species": species, "split": splits})


def test_each_split_takes_up_to_n_spread_over_species_and_fills_from_the_next_ranked():
    chosen = choose(_rows(100), {"train": 10, "test": 2, "val": 5}, seed=0)
    per = Counter(zip(chosen["split"].to_pylist(), chosen["species"].to_pylist(), strict=True))
    assert per[("train", "rare")] == 3 and per[("train", "common")] == 7  # rare all in, common fills up
    assert per[("test", "common")] == 1 and per[("test", "rare")] == 1
    assert chosen.num_rows == 12 and len(set(chosen["sha256"].to_pylist())) == 12  # no val rows: none taken
    assert chosen.equals(choose(_rows(100), {"train": 10, "test": 2, "val": 5}, seed=0))  # deterministic


def test_new_photos_change_the_sample_a_little_and_another_seed_changes_it():
    before = set(choose(_rows(1000), {"train": 100}, seed=0)["sha256"].to_pylist())
    grown = pa.concat_tables([_rows(1000), _rows(20, start=10_000, rare=0)])
    after = set(choose(grown, {"train": 100}, seed=0)["sha256"].to_pylist())
    assert len(before ^ after) <= 2 * 10  # 20 new of ~1,020: a few percent of the sample moves
    other = set(choose(_rows(1000), {"train": 100}, seed=1)["sha256"].to_pylist())
    assert len(before & other) < 50


def test_ranks_are_seeded_and_spread_over_the_whole_range():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    a, b = ranks(shas, 0), ranks(shas, 1)
    assert (a != b).all() and (a == ranks(shas, 0)).all()
    assert a.max() > 2**63 and a.min() < 2**60  # uniform-ish over uint64
