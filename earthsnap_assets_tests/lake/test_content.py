"""The global checks: verdicts of copies, one pass over the content table for many groups, races."""

from __future__ import annotations

from dataclasses import replace

import pytest

from earthsnap_assets.lake.content import ContentTable, Copy, Verdict, check_groups, copy_verdicts, with_retries
from earthsnap_assets.lake.intake import intake_group
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


def _many_groups(groups: int, per_group: int) -> Lake:
    rows = "".join(f"s{g}a,g{g}\ns{g}b,g{g}\n" for g in range(groups))
    lake = Lake(taxonomy_text="species,group\n" + rows, config=replace(CONFIG, sample=CONFIG.sample))
    seed = 0
    for g in range(groups):
        for i in range(per_group):
            seed += 1
            lake.put(f"images/s{g}{'ab'[i % 2]}/{i:03d}.jpg", photo(seed))
    return lake


def _intake_all(lake: Lake) -> None:
    for group, species in lake.taxonomy.by_group.items():
        intake_group(lake.blobs, "raw", "lake", group, species, lake.config.intake())


def test_one_run_checks_every_changed_group_touching_each_bucket_at_most_a_few_times():
    lake = _many_groups(groups=20, per_group=6)
    _intake_all(lake)
    checks = replace(CONFIG.manifest(), buckets=16).checks()
    first = check_groups(lake.blobs, "lake", lake.taxonomy.groups, checks)
    assert len(first.groups) == 20 and first.new_rows == 120 and first.probed == 120
    # 20 groups, 16 buckets: each bucket read for verdicts and for the dHash scan, written once at the
    # commit, never once per group (per-group transactions would read 20 x 16)
    assert first.buckets_read <= 3 * 16 and first.buckets_written <= 16
    for g in range(20):  # a second upload to every group: still one pass
        lake.put(f"images/s{g}a/late.jpg", photo(10_000 + g))
    _intake_all(lake)
    second = check_groups(lake.blobs, "lake", lake.taxonomy.groups, checks)
    assert len(second.groups) == 20 and second.new_rows == 20 and second.buckets_read <= 3 * 16
    assert second.buckets_written <= 16  # a delta per touched bucket (or its compaction), once
    quiet = check_groups(lake.blobs, "lake", lake.taxonomy.groups, checks)
    assert quiet.groups == {} and quiet.buckets_read == 0  # nothing new: no bucket is read


def test_a_commit_over_a_head_someone_else_moved_fails_and_the_whole_step_is_retried():
    attempts = []

    def step():
        attempts.append(1)
        if len(attempts) == 1:
            raise ConcurrentUpdate("someone committed in between")
        return "done"

    assert with_retries(step, base_delay=0.001) == "done" and len(attempts) == 2
    with pytest.raises(ConcurrentUpdate, match="gave up after 2"):
        with_retries(lambda: (_ for _ in ()).throw(ConcurrentUpdate("always")), attempts=2, base_delay=0.001)


class RacingBlobs(MemoryBlobs):
    """Runs `interloper` just before the first commit of the content head: another run in between."""

    def __init__(self, source: MemoryBlobs, interloper) -> None:
        super().__init__()
        self.objects, self.modified, self.interloper = source.objects, source.modified, interloper

    def write_if(self, bucket, key, data, expected_etag):
        if key == "content/head.json" and self.interloper:
            run, self.interloper = self.interloper, None
            run()
        return super().write_if(bucket, key, data, expected_etag)


def test_two_checks_running_at_once_on_the_same_bytes_still_find_their_conflict():
    lake = Lake()
    for species, seed in (("rose", 1), ("tulip", 2), ("moth", 3)):
        for i in range(3):
            lake.put(f"images/{species}/{i}.jpg", photo(100 * seed + i))
    lake.run()
    shared = photo(777)
    lake.put("images/rose/shared.jpg", shared).put("images/moth/shared.jpg", shared)
    _intake_all(lake)
    checks = CONFIG.manifest().checks()
    racing = RacingBlobs(lake.blobs, lambda: check_groups(lake.blobs, "lake", ["insects"], checks))
    result = check_groups(racing, "lake", ["flowers"], checks)  # its first commit loses, the retry sees insects
    assert "insects" in result.groups  # the conflict moved the other group's verdict: it gets a delta
    lake.run()
    assert lake.rows("flowers")["images/rose/shared.jpg"]["reason"] == "conflicting_labels"
    assert lake.rows("insects")["images/moth/shared.jpg"]["reason"] == "conflicting_labels"


def test_a_big_first_build_is_checked_in_bounded_commits_with_the_same_outcome():
    bounded, whole = _many_groups(groups=8, per_group=6), _many_groups(groups=8, per_group=6)
    for lake in (bounded, whole):
        _intake_all(lake)
    checks = CONFIG.manifest().checks()
    small = check_groups(bounded.blobs, "lake", bounded.taxonomy.groups, checks, max_rows=10)
    one = check_groups(whole.blobs, "lake", whole.taxonomy.groups, checks)
    assert small.new_rows == one.new_rows == 48 and set(small.groups) == set(one.groups)
    bounded.run(), whole.run()
    for group in bounded.taxonomy.groups:  # same verdicts, clusters and splits, in 5 commits instead of 1
        strip = lambda rows: {k: (r["verdict"], r["cluster"], r["split"]) for k, r in rows.items()}  # noqa: E731
        assert strip(bounded.rows(group)) == strip(whole.rows(group))


def test_new_rules_check_every_group_again_from_scratch_even_across_commits():
    lake = _many_groups(groups=4, per_group=6)
    lake.run()
    before = {g: lake.rows(g) for g in lake.taxonomy.groups}
    stricter = replace(CONFIG.manifest(), splits=replace(CONFIG.splits, seed=7)).checks()
    result = check_groups(lake.blobs, "lake", [], stricter, max_rows=10)  # no group asked for: rules decide
    assert result.reset and set(result.groups) == set(lake.taxonomy.groups)
    lake.run(replace(CONFIG, splits=replace(CONFIG.splits, seed=7)))
    moved = sum(before[g][k]["split"] != r["split"] for g in before for k, r in lake.rows(g).items())
    assert moved > 0 and all(set(lake.rows(g)) == set(before[g]) for g in before)  # same rows, new splits


def _row(key: str, sha: str = "aa", split: str | None = None) -> dict:
    return {"sha256": sha, "group": "g", "key": key, "species": "s", "dhash": 1, "accepted": True, "split": split}


def test_the_content_table_writes_deltas_merges_them_and_compacts_into_a_new_base():
    blobs = MemoryBlobs()
    table = ContentTable(blobs, "lake", {}, buckets=1)
    table.stage(0, [_row(f"k{i:03d}") for i in range(100)])
    table.flush()
    assert [e["rows"] for e in table.files["00000"]] == [100]  # the first write is a base

    table.stage(0, [_row("k000", split="test"), _row("new")], removed=[("g", "k001")])
    table.flush()
    entries = table.files["00000"]
    assert [e["rows"] for e in entries] == [100, 3]  # a delta of what changed, not the table again
    loaded = {r["key"]: r for r in table.load(0).to_pylist()}
    assert len(loaded) == 100 and "k001" not in loaded and loaded["k000"]["split"] == "test"

    for i in range(3):  # small deltas merge with the last one while it is at most twice their size
        table.stage(0, [_row(f"m{i}")])
        table.flush()
    assert len(table.files["00000"]) <= 3
    assert {"m0", "m1", "m2", "new"} <= set(table.load(0, columns=["key"])["key"].to_pylist())
    assert "k001" not in set(table.load(0, columns=["key"])["key"].to_pylist())  # a merged removal still holds

    table.stage(0, [_row(f"z{i:02d}") for i in range(30)])  # deltas reach a quarter of the base: one base
    table.flush()
    assert [e["rows"] for e in table.files["00000"]] == [133]
    again = ContentTable(blobs, "lake", table.files, buckets=1)  # what the head records reads back the same
    assert again.load(0).sort_by("key").equals(table.load(0).sort_by("key"))


def test_a_content_head_from_before_deltas_still_reads_and_is_rewritten_in_the_new_form():
    blobs = MemoryBlobs()
    table = ContentTable(blobs, "lake", {}, buckets=1)
    table.stage(0, [_row(f"k{i}") for i in range(5)])
    table.flush()
    legacy = {"00000": table.files["00000"][0]["key"]}  # the old head named one file per bucket
    old = ContentTable(blobs, "lake", legacy, buckets=1)
    assert old.files["00000"][0]["rows"] == 5 and old.load(0).num_rows == 5
