"""The global content indexes: verdicts of copies, bucketed updates, and conditional commits under races."""

from __future__ import annotations

import numpy as np
import pytest

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.indexes import Copy, IndexTransaction, Verdict, copy_verdicts, with_retries
from earthsnap_assets.lake.manifest import validate_group
from earthsnap_assets.lake.storage import ConcurrentUpdate, MemoryBlobs
from earthsnap_assets_tests.lake.harness import CONFIG, Lake
from earthsnap_assets_tests.ml.training_fixtures import photo


def test_copies_of_one_species_keep_the_smallest_key_and_conflicts_reject_every_copy():
    same = [Copy("s", "flowers", "images/rose/b.jpg", "rose"), Copy("s", "flowers", "images/rose/a.jpg", "rose")]
    assert copy_verdicts(same) == {
        ("flowers", "images/rose/a.jpg"): Verdict(True),
        ("flowers", "images/rose/b.jpg"): Verdict(False, "duplicate", "same content as images/rose/a.jpg"),
    }
    assert copy_verdicts(reversed(same)) == copy_verdicts(same)  # arrival order does not matter
    mixed = [*same, Copy("s", "insects", "images/moth/z.jpg", "moth")]
    verdicts = copy_verdicts(mixed)
    assert {v.reason for v in verdicts.values()} == {"conflicting_labels"}
    assert "['moth', 'rose']" in verdicts[("insects", "images/moth/z.jpg")].detail


def test_updating_copies_replaces_only_the_groups_own_entries_and_reports_before_and_after():
    blobs = MemoryBlobs()
    first = IndexTransaction(blobs, "lake", sha_buckets=4)
    first.update_copies("flowers", set(), [Copy("aa" * 32, "flowers", "images/rose/1.jpg", "rose")])
    first.commit()
    second = IndexTransaction(blobs, "lake")
    assert second.sha_buckets == 4  # fixed by the index once it exists
    seen = second.update_copies("insects", set(), [Copy("aa" * 32, "insects", "images/moth/1.jpg", "moth")])
    before, after = seen["aa" * 32]
    assert [c.group for c in before] == ["flowers"] and sorted(c.group for c in after) == ["flowers", "insects"]
    gone = second.update_copies("flowers", {"images/rose/1.jpg"}, [], look={"aa" * 32})
    assert [c.group for c in gone["aa" * 32][1]] == ["insects"]


def test_neighbours_are_found_through_any_band_and_a_groups_own_rows_can_be_ignored():
    import pyarrow as pa

    from earthsnap_assets.lake.indexes import BAND_SCHEMA

    blobs = MemoryBlobs()
    txn = IndexTransaction(blobs, "lake", band_buckets=16)
    base = 0x0123456789ABCDEF
    rows = [
        {
            "dhash": base,
            "sha256": "x",
            "group": "flowers",
            "key": "k1",
            "species": "rose",
            "cluster": "x",
            "split": "test",
        },
        {
            "dhash": base ^ 0xFFFF,
            "sha256": "y",
            "group": "insects",
            "key": "k2",
            "species": "moth",
            "cluster": "y",
            "split": "train",
        },
    ]
    txn.replace_bands(
        "any",
        pa.table({"dhash": pa.array([], pa.uint64()), "sha256": pa.array([], pa.string())}),
        pa.Table.from_pylist(rows, schema=BAND_SCHEMA),
    )
    probe = np.array([base ^ 0b101], dtype=np.uint64)  # 2 bits from row x, 18 from y
    found = txn.neighbours(probe, 3)
    assert found["sha256"].to_pylist() == ["x"] and found["distance"].to_pylist() == [2]
    assert txn.neighbours(probe, 3, ignore=("flowers", {"x"})).num_rows == 0


def test_a_commit_over_a_head_someone_else_moved_fails_and_a_retry_succeeds():
    blobs = MemoryBlobs()
    slow, fast = IndexTransaction(blobs, "lake"), IndexTransaction(blobs, "lake")
    fast.update_copies("a", set(), [Copy("bb" * 32, "a", "k", "s")])
    fast.commit()
    slow.update_copies("b", set(), [Copy("cc" * 32, "b", "k2", "s2")])
    with pytest.raises(ConcurrentUpdate):
        slow.commit()
    attempts = []

    def step():
        attempts.append(1)
        txn = IndexTransaction(blobs, "lake")
        txn.update_copies("b", set(), [Copy("cc" * 32, "b", "k2", "s2")])
        if len(attempts) == 1:  # someone commits in between, once
            other = IndexTransaction(blobs, "lake")
            other.update_copies("c", set(), [Copy("dd" * 32, "c", "k3", "s3")])
            other.commit()
        txn.commit()

    with_retries(step, base_delay=0.001)
    assert len(attempts) == 2
    files = IndexTransaction(blobs, "lake").files
    assert len(files) == 3  # all three entries made it, none lost


class RacingBlobs(MemoryBlobs):
    """Runs `interloper` just before the first commit of the index head: another group's run in between."""

    def __init__(self, source: MemoryBlobs, interloper) -> None:
        super().__init__()
        self.objects, self.modified, self.interloper = source.objects, source.modified, interloper

    def write_if(self, bucket, key, data, expected_etag):
        if key == paths.INDEXES_HEAD and self.interloper:
            run, self.interloper = self.interloper, None
            run()
        return super().write_if(bucket, key, data, expected_etag)


def test_two_groups_validating_the_same_bytes_at_the_same_time_still_find_their_conflict():
    lake = Lake()
    for species, seed in (("rose", 1), ("tulip", 2), ("moth", 3)):
        for i in range(3):
            lake.put(f"images/{species}/{i}.jpg", photo(100 * seed + i))
    lake.run()
    shared = photo(777)
    lake.put("images/rose/shared.jpg", shared).put("images/moth/shared.jpg", shared)
    from earthsnap_assets.lake.intake import intake_group

    for group, species in lake.taxonomy.by_group.items():
        intake_group(lake.blobs, "raw", "lake", group, species, CONFIG.intake())
    config = CONFIG.manifest()
    insects = lambda blobs: validate_group(blobs, "lake", "insects", ["moth"], config)  # noqa: E731
    racing = RacingBlobs(lake.blobs, lambda: insects(lake.blobs))
    flowers = validate_group(racing, "lake", "flowers", ["rose", "tulip"], config)
    assert flowers.revalidate == {"insects": ["images/moth/shared.jpg"]}  # found on the retry
    assert lake.rows("flowers")["images/rose/shared.jpg"]["reason"] == "conflicting_labels"
    lake.run()  # insects validates again, as automation does after the revalidation event
    assert lake.rows("insects")["images/moth/shared.jpg"]["reason"] == "conflicting_labels"
