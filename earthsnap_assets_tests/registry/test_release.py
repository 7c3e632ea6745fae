"""Which tags prove a release at an alias, and the deploy job's signature (no services)."""

from earthsnap_assets.registry import release


def test_production_needs_the_stage_test_staging_does_not() -> None:
    staged = {"gate": "passed", "approval": "approved"}
    assert release.refusal("staging", staged) is None
    assert release.refusal("production", staged) == "stage_test=unset (needs passed)"
    assert release.refusal("production", {**staged, "stage_test": "passed"}) is None
    refused = release.refusal("staging", {"gate": "failed", "approval": "pending"})
    assert refused == "gate=failed (needs passed); approval=pending (needs approved)"


def test_with_a_key_only_the_deploy_jobs_signature_for_that_version_and_alias_passes() -> None:
    tags = release.released_tags("production")
    assert release.refusal("production", tags, "m", "3", key=None) is None  # no key: tags alone
    assert "release_signature_production unset" in release.refusal("production", tags, "m", "3", key="k")
    signed = {**tags, release.signature_tag("production"): release.sign("k", "m", "3", "production")}
    assert release.refusal("production", signed, "m", "3", key="k") is None
    assert "invalid" in release.refusal("production", signed, "m", "4", key="k")  # another version
    assert "invalid" in release.refusal("production", signed, "m", "3", key="other-key")
    staging_only = {**tags, release.signature_tag("production"): release.sign("k", "m", "3", "staging")}
    assert "invalid" in release.refusal("production", staging_only, "m", "3", key="k")  # another alias


def test_the_key_comes_from_the_environment() -> None:
    assert release.release_key({}) is None and release.release_key({"EARTHSNAP_RELEASE_KEY": ""}) is None
    assert release.release_key({"EARTHSNAP_RELEASE_KEY": "s3cr3t"}) == "s3cr3t"
