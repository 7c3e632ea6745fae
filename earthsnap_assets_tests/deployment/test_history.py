from earthsnap_assets.deployment.history import Event, events, history_table, production_before, record
from earthsnap_assets.lake.storage import MemoryBlobs


def _event(version: str, action: str) -> Event:
    return Event("earthsnap-parent", version, action, at="2026-11-25T00:00:00+00:00", by="ana")


def test_events_round_trip_in_order():
    blobs = MemoryBlobs()
    for version, action in [("1", "approved"), ("1", "production"), ("2", "approved")]:
        record(blobs, "lake", _event(version, action))
    stored = events(blobs, "lake", "earthsnap-parent")
    assert [(e.version, e.action) for e in stored] == [("1", "approved"), ("1", "production"), ("2", "approved")]
    assert history_table(stored)[0][:4] == ("2026-11-25T00:00:00+00:00", "1", "approved", "ana")
    assert events(blobs, "lake", "earthsnap-child-ferns") == []


def test_previous_production_skips_the_current_version_and_rollbacks():
    history = [_event("1", "production"), _event("2", "production"), _event("3", "production")]
    assert production_before(history, "3") == "2"
    history.append(_event("2", "rollback"))
    assert production_before(history, "2") == "1"
    assert production_before([_event("1", "production")], "1") is None
