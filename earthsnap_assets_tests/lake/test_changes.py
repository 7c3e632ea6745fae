"""The change log: routing events to groups, what each key ended as, idempotent batches, listing after."""

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.changes import append_batch, latest_per_key, pending_batches, read_events, route
from earthsnap_assets.lake.events import RawEvent
from earthsnap_assets.lake.storage import MemoryBlobs

GROUPS = {"oak": "trees", "robin": "birds"}


def ev(key: str, op: str = "put", ts: int = 1, etag: str | None = "e") -> RawEvent:
    return RawEvent(key, op, etag, 1 if op == "put" else None, ts, "test")


def test_events_go_to_the_group_of_their_species_folder():
    routed = route(
        [
            ev("images/oak/1.jpg"),
            ev("images/robin/2.jpg"),
            ev("images/eagle/3.jpg"),
            ev("images/oak/sub/4.jpg"),
            ev("taxonomy.csv"),
            ev("notes/readme.txt"),
        ],
        GROUPS,
    )
    assert {g: [e.key for e in events] for g, events in routed.by_group.items()} == {
        "birds": ["images/robin/2.jpg"],
        "trees": ["images/oak/1.jpg"],
    }
    assert [e.key for e in routed.unassigned] == ["images/eagle/3.jpg", "images/oak/sub/4.jpg"]
    assert routed.taxonomy_changed


def test_the_last_event_of_a_key_wins():
    latest = latest_per_key([ev("a", "put", 1), ev("a", "delete", 2), ev("a", "put", 3, "e2"), ev("b", "put", 5)])
    assert (latest["a"].op, latest["a"].etag) == ("put", "e2") and latest["b"].op == "put"
    assert latest_per_key([ev("a", "put", 1), ev("a", "delete", 2)])["a"].op == "delete"


def test_a_batch_written_twice_is_one_file_and_intake_lists_only_newer_batches():
    blobs = MemoryBlobs()
    first = append_batch(blobs, "lake", "trees", [ev("images/oak/1.jpg", ts=10)])
    assert append_batch(blobs, "lake", "trees", [ev("images/oak/1.jpg", ts=10)]) == first  # a retried tick
    second = append_batch(blobs, "lake", "trees", [ev("images/oak/2.jpg", ts=20)])
    assert pending_batches(blobs, "lake", "trees", None) == [first, second]
    assert pending_batches(blobs, "lake", "trees", first) == [second]
    assert [e.key for e in read_events(blobs, "lake", [second])] == ["images/oak/2.jpg"]
    assert append_batch(blobs, "lake", "trees", []) is None


def test_species_of_reads_only_the_public_layout():
    assert paths.species_of("images/rose/a.jpg") == "rose"
    for key in ("images/rose.jpg", "images/rose/sub/a.jpg", "photos/rose/a.jpg", "images/", "images//a.jpg"):
        assert paths.species_of(key) is None, key
