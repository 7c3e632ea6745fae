"""The registry contract in one place: model names, version tags and the group -> species artifact.

Whatever writes a version (registration) and whatever reads one (serving, deployment, the CLI) takes the
names and tag keys from here. Tag values stay small whatever the taxonomy's size: MLflow caps a tag value
at 100,000 characters, so the group -> species mapping of the parent (every species the app knows) is an
artifact of the version's run, and its tags hold only where it is, its sha256 and its counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from earthsnap_assets.hashing import canonical_json, sha256_bytes

DEFAULT_PREFIX = "earthsnap-"
ALIASES = ("staging", "production")  # each serving environment follows the alias of the same name


def parent_name(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}parent"


def child_name(group: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}child-{group}"


PARENT = parent_name()

# Version tags written at registration and read by serving and deployment.
CLASSES = "classes"  # comma-separated output order: groups for the parent, a group's species for a child
IMAGE_SIZE = "image_size"
DATASET_VERSION = "dataset_version"
DATASET_URI = "dataset_uri"
GROUP = "group"
TEST_ACCURACY = "test_accuracy"
# Lineage of the weights: where training started, and the trained state dict (safetensors in the lake).
INIT_FROM = "init_from"  # "scratch" | "weights" (a pretrained source) | "parent" (the parent's backbone)
INIT_SOURCE = "init_source"  # the weights source as configured: timm:<name>, hf-hub:<repo>, s3://..., a path
INIT_SHA256 = "init_sha256"  # of the starting weights' safetensors bytes
INIT_PARENT_RUN = "init_parent_run_id"  # the MLflow run of the parent a child started from
WEIGHTS_URI = "weights_uri"
WEIGHTS_SHA256 = "weights_sha256"

# The release state of a version: the gate's verdict (registration), a person's decision (MLflow UI or
# `earthsnap approve`), the deploy job's stage test and progress. Serving reads them to refuse a version the
# deploy job did not release (`registry/release.py`).
GATE = "gate"  # passed | failed
GATE_REASON = "gate_reason"
APPROVAL = "approval"  # pending | approved | rejected | refused (approved although the gate failed) | deploy-failed
APPROVED_BY = "approved_by"
APPROVED_AT = "approved_at"
APPROVAL_SOURCE = "approval_source"  # cli | mlflow-ui (stamped by the approval sensor)
APPROVAL_REFUSED = "approval_refused"  # why the sensor refused an approval (gate failed)
STAGE_TEST = "stage_test"  # passed | failed: the deploy job's tests over HTTP against staging
DEPLOY_STATUS = "deploy_status"  # staging | stage_test | production | deploy_failed
DEPLOY_ERROR = "deploy_error"  # why the last deploy of this version failed

# The parent's group -> species mapping: an artifact of the version's run, pointed at by these tags.
GROUP_SPECIES_URI = "group_species_uri"  # runs:/<run_id>/<GROUP_SPECIES_DIR>/<sha256>.json
GROUP_SPECIES_SHA256 = "group_species_sha256"  # of the artifact's bytes: serving refuses a mismatch
GROUP_SPECIES_GROUPS = "group_species_groups"  # counts, for people browsing the registry
GROUP_SPECIES_SPECIES = "group_species_species"
GROUP_SPECIES_DIR = "registry"
LEGACY_GROUP_SPECIES = "group_species"  # the whole mapping as a tag: versions registered before the artifact


def group_species_bytes(mapping: Mapping[str, Sequence[str]]) -> bytes:
    """Canonical JSON of the mapping (sorted keys, species kept in their order): equal mappings, equal bytes."""
    return canonical_json({group: list(species) for group, species in mapping.items()})


def group_species_tags(mapping: Mapping[str, Sequence[str]], run_id: str) -> dict[str, str]:
    """The tags that point at the mapping's artifact (see `RegistryVerbs.log_group_species`)."""
    digest = sha256_bytes(group_species_bytes(mapping))
    return {
        GROUP_SPECIES_URI: f"runs:/{run_id}/{GROUP_SPECIES_DIR}/group_species-{digest}.json",
        GROUP_SPECIES_SHA256: digest,
        GROUP_SPECIES_GROUPS: str(len(mapping)),
        GROUP_SPECIES_SPECIES: str(sum(len(species) for species in mapping.values())),
    }


# Production monitoring (`defs/monitoring.py`): one MLflow run per environment and day, in its own experiment,
# and tags on the parent version that answered most of that day pointing at the latest day's run. Values are
# a day, a run id and rounded numbers: small whatever the traffic.
MONITORING_EXPERIMENT = "earthsnap-monitoring"
MONITORING_LAST_DAY = "monitoring.last_day"  # YYYY-MM-DD of the run the other tags come from (never moves back)
MONITORING_RUN_ID = "monitoring.run_id"
MONITORING_VOLUME = "monitoring.volume"
MONITORING_PSI_GROUP = "monitoring.psi_group"
MONITORING_PSI_SPECIES = "monitoring.psi_species"
MONITORING_BACK_OFF_RATE = "monitoring.back_off_rate"
MONITORING_FEEDBACK_ACCURACY = "monitoring.feedback_accuracy"
MONITORING_REPORT_ARTIFACT = "monitoring/report.json"


def monitoring_run_name(env: str, day: str) -> str:
    return f"{env}-{day}"
