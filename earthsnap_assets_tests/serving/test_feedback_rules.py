"""Feedback rules without a server: the taxonomy source's refresh and fallback, verdicts, the answers cache."""

from __future__ import annotations

import pytest

from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.lake.versions import save_taxonomy
from earthsnap_assets.serving.feedback import (
    Feedback,
    FeedbackError,
    RecentAnswers,
    TaxonomySource,
    decide_verdict,
)

BUCKET = "lake"


class BrokenBlobs(MemoryBlobs):
    def read(self, bucket: str, key: str) -> bytes:
        raise ConnectionError("lake unreachable")

    def exists(self, bucket: str, key: str) -> bool:
        raise ConnectionError("lake unreachable")


def test_a_refresh_picks_up_the_new_taxonomy_and_a_failed_one_keeps_the_last() -> None:
    lake = MemoryBlobs()
    source = TaxonomySource(lake, BUCKET, refresh_s=60, fallback=lambda: {"robin": "birds"})
    assert not source.refresh() and source.species_to_group() == ({"robin": "birds"}, "deployed models")
    save_taxonomy(lake, BUCKET, Taxonomy({"rose": "flowers"}))
    assert source.refresh() and source.species_to_group() == ({"rose": "flowers"}, "lake")
    save_taxonomy(lake, BUCKET, Taxonomy({"rose": "flowers", "oak": "trees"}))
    assert source.refresh() and source.species_to_group()[0] == {"oak": "trees", "rose": "flowers"}
    source.lake = BrokenBlobs()
    assert not source.refresh() and "unreachable" in source.as_dict()["last_error"]
    assert source.species_to_group() == ({"oak": "trees", "rose": "flowers"}, "lake")  # the last good one


def test_no_lake_and_no_models_means_no_reference() -> None:
    source = TaxonomySource(BrokenBlobs(), BUCKET, refresh_s=60)
    assert not source.refresh() and source.species_to_group() == (None, "none")


def test_verdicts() -> None:
    answers = RecentAnswers(capacity=2)
    answers.add("a" * 32, "rose")
    answers.add("b" * 32, None)  # answered at the group level
    assert decide_verdict(Feedback("a" * 32, "rose", None), answers.get("a" * 32)) == "confirmed"
    assert decide_verdict(Feedback("a" * 32, "tulip", None), answers.get("a" * 32)) == "corrected"
    assert decide_verdict(Feedback("b" * 32, "rose", None), answers.get("b" * 32)) == "corrected"
    with pytest.raises(FeedbackError, match="contradicts"):
        decide_verdict(Feedback("b" * 32, "rose", "confirmed"), answers.get("b" * 32))
    answers.add("c" * 32, "moth")  # the oldest is forgotten: the cache stays bounded
    assert len(answers) == 2
    with pytest.raises(FeedbackError, match="say verdict"):
        decide_verdict(Feedback("a" * 32, "rose", None), answers.get("a" * 32))
    assert decide_verdict(Feedback("a" * 32, "rose", "confirmed"), answers.get("a" * 32)) == "confirmed"
