"""Every path of the raw bucket and the lake, in one place: the storage contract of the platform.

Raw bucket (written by the app, users and the review loop; public, documented in the README):
    images/<species>/<file>.<jpg|jpeg|png|webp>     the folder is the label
    taxonomy.csv                                     species,group[,extra columns]

Lake bucket (written by the pipeline). Per species group `g`; `<h>` is a content hash, so a file is never
rewritten in place, and each group's current state is one small *head* moved by a conditional write:
    taxonomy/<fingerprint>.json                      a parsed taxonomy (species -> group, extras)
    taxonomy/current.json                            head: which taxonomy is current (read by the change sensor)
    changes/<g>/<ts>-<h>.parquet                     change log: raw-bucket events routed to group g
    changes/_unassigned/<ts>-<h>.parquet             events for keys in no group (unknown species, off layout)
    objects/<g>/head.json                            object table head: segments, change-log watermark, counts
    objects/<g>/segments/<h>.parquet                 object table rows (key, etag, sha256, dhash, verdict, ...)
    pixels/<preprocess>/<g>/<h>.npy (+ <h>.parquet)  preprocessed pixels of accepted objects, by sha256
    content/head.json                                global checks: content-table buckets, per-group state
    content/<bucket>/<h>.parquet                     content table: every QA-passed object by sha256 bucket
    checks/<g>/<seq>-<h>.parquet                     verdict deltas for group g's manifest
    manifests/<g>/head.json                          current manifest segment of the group
    manifests/<g>/<h>.parquet                        every object of the group with its verdict, cluster, split
    manifests/<g>/<h>.json                           its QA report: counts a person reviews
    datasets/<layout>/<g>/head.json                  current training layout of the group
    datasets/<layout>/<g>/index-<h>.parquet          training index: sha256, key, species, split, shard, row
    datasets/<layout>/<g>/shards/<split>/<h>.npy     content-addressed uint8 shards (append-only deltas)
    versions/<dataset_version>/manifest.json         a dataset version: rules, taxonomy, every group's manifest
    versions/<dataset_version>/<layout>.json         the version's training layout: every group's index
    samples/<layout>/head.json                       the parent's sample: committed and latest candidate
    samples/<layout>/<h>/index.parquet               a sample: rows of every group, pointing into chunks
    samples/<layout>/chunks/<g>/<h>.parquet (+ .npy) one group's share of the sample, pixels copied
    deployments/<model>/events.jsonl                 deployment history
    checkpoints/...                                  training checkpoints
    weights/<sha256>.safetensors                     trained state dicts, by the sha256 of their bytes (children
                                                     warm-start from the parent's; never garbage-collected)
    predictions/<env>/day=<YYYY-MM-DD>/<hhmmss>-<replica>-<h>.parquet
                                                     prediction log: every answered request (append-only batches)
    feedback/<env>/day=<YYYY-MM-DD>/<hhmmss>-<replica>-<h>.parquet
                                                     what app users confirmed or corrected, by request id
    photos/<env>/day=<YYYY-MM-DD>/<sha256>           request photos, only where the privacy switch keeps them
    review/photos/<sha256>                           photos sent to people for review (Label Studio reads these)
    review/<g>/...                                   the review queue's state (tasks created, labels collected)
    monitoring/<env>/day=<YYYY-MM-DD>/report.json    a day's monitoring summary
    monitoring/reference/<dataset_version>.json      a dataset version's train counts per group and species
                                                     (the drift reference; computed once from its QA reports)
    dagster/io/...                                   small asset values (references, never data)
"""

from __future__ import annotations

import re

from earthsnap_assets.lake.taxonomy import SLUG

IMAGES_PREFIX = "images/"
TAXONOMY_KEY = "taxonomy.csv"
UNASSIGNED = "_unassigned"  # not a slug, so never a species group


def check_group(group: str) -> str:
    """Group names become path segments and partition keys: slugs only (or the unassigned bucket)."""
    if group != UNASSIGNED and not SLUG.match(group):
        raise ValueError(f"not a species group name: {group!r}")
    return group


# --- raw bucket --------------------------------------------------------------------------------------------


def species_prefix(species: str) -> str:
    return f"{IMAGES_PREFIX}{species}/"


def species_of(key: str, prefix: str = IMAGES_PREFIX) -> str | None:
    """`images/<species>/<file>` -> species; None for anything not in that layout."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    return parts[0] if len(parts) == 2 and parts[0] and parts[1] else None


# --- taxonomy ----------------------------------------------------------------------------------------------

TAXONOMY_HEAD = "taxonomy/current.json"


def taxonomy_key(fingerprint: str) -> str:
    return f"taxonomy/{fingerprint}.json"


# --- change log --------------------------------------------------------------------------------------------


def changes_prefix(group: str) -> str:
    return f"changes/{check_group(group)}/"


def change_batch_key(group: str, first_ts_ns: int, digest: str) -> str:
    """Zero-padded time first: a listing after the last consumed key returns exactly the newer batches."""
    return f"{changes_prefix(group)}{first_ts_ns:020d}-{digest}.parquet"


# --- object table ------------------------------------------------------------------------------------------


def objects_head(group: str) -> str:
    return f"objects/{check_group(group)}/head.json"


def objects_segment(group: str, digest: str) -> str:
    return f"objects/{check_group(group)}/segments/{digest}.parquet"


def pixel_pack(preprocess: str, group: str, digest: str) -> str:
    """`<digest>.npy` holds the pixels, `<digest>.parquet` the sha256 of each row."""
    return f"pixels/{preprocess}/{check_group(group)}/{digest}"


# --- global content checks -------------------------------------------------------------------------------

CONTENT_HEAD = "content/head.json"


def content_bucket(bucket: int, digest: str) -> str:
    return f"content/{bucket:05d}/{digest}.parquet"


def checks_prefix(group: str) -> str:
    return f"checks/{check_group(group)}/"


def check_delta(group: str, seq: int, digest: str) -> str:
    """Numbered per group: a manifest lists exactly the deltas after the last one it applied."""
    return f"{checks_prefix(group)}{seq:012d}-{digest}.parquet"


# --- manifests ---------------------------------------------------------------------------------------------


def manifest_head(group: str) -> str:
    return f"manifests/{check_group(group)}/head.json"


def manifest_file(group: str, digest: str, ext: str) -> str:
    """A group's manifest segment (`parquet`) or QA report (`json`), named by content."""
    return f"manifests/{check_group(group)}/{digest}.{ext}"


# --- training layouts --------------------------------------------------------------------------------------


def layout_prefix(layout: str, group: str) -> str:
    return f"datasets/{layout}/{check_group(group)}/"


def layout_head(layout: str, group: str) -> str:
    return layout_prefix(layout, group) + "head.json"


def layout_index(layout: str, group: str, digest: str) -> str:
    return f"{layout_prefix(layout, group)}index-{digest}.parquet"


def shard_key(layout: str, group: str, split: str, digest: str) -> str:
    return f"{layout_prefix(layout, group)}shards/{split}/{digest}.npy"


# --- dataset versions and the parent's sample --------------------------------------------------------------


def version_manifest(dataset_version: str) -> str:
    return f"versions/{dataset_version}/manifest.json"


def version_layout(dataset_version: str, layout: str) -> str:
    return f"versions/{dataset_version}/{layout}.json"


def sample_head(layout: str) -> str:
    return f"samples/{layout}/head.json"


def sample_index(layout: str, digest: str) -> str:
    return f"samples/{layout}/{digest}/index.parquet"


def sample_chunk(layout: str, group: str, digest: str) -> str:
    """A group's share of the sample: `<name>.parquet` rows (named by its inputs), pixels in a `<digest>.npy`."""
    return f"samples/{layout}/chunks/{check_group(group)}/{digest}"


def weights_key(sha256: str) -> str:
    """A trained state dict, named by the sha256 of its safetensors bytes (same weights, same key)."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"weights/{sha256}.safetensors"


# --- production: prediction log, feedback, monitoring, review ----------------------------------------------

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def check_day(day: str) -> str:
    """Days are partition keys and path segments: ISO dates only (UTC)."""
    if not DAY.match(day):
        raise ValueError(f"not a day (YYYY-MM-DD): {day!r}")
    return day


def _check_env(env: str) -> str:
    if not SLUG.match(env):
        raise ValueError(f"not an environment name: {env!r}")
    return env


def predictions_prefix(env: str, day: str) -> str:
    """One day's prediction-log batches of one environment: listing it is reading dN, never N."""
    return f"predictions/{_check_env(env)}/day={check_day(day)}/"


def predictions_batch(env: str, day: str, hhmmss: str, replica: str, digest: str) -> str:
    """Time first, so a listing is in write order; replica and content digest make names unique."""
    return f"{predictions_prefix(env, day)}{hhmmss}-{replica}-{digest}.parquet"


def feedback_prefix(env: str, day: str) -> str:
    return f"feedback/{_check_env(env)}/day={check_day(day)}/"


def feedback_batch(env: str, day: str, hhmmss: str, replica: str, digest: str) -> str:
    return f"{feedback_prefix(env, day)}{hhmmss}-{replica}-{digest}.parquet"


def request_photo(env: str, day: str, sha256: str) -> str:
    """A request's photo, kept only when the endpoint's privacy switch says so; by day, so retention is a prefix."""
    return f"photos/{_check_env(env)}/day={check_day(day)}/{sha256}"


def review_photo(sha256: str) -> str:
    return f"review/photos/{sha256}"


def review_prefix(group: str) -> str:
    return f"review/{check_group(group)}/"


def monitoring_report(env: str, day: str) -> str:
    return f"monitoring/{_check_env(env)}/day={check_day(day)}/report.json"


def monitoring_reference(dataset_version: str) -> str:
    """Train counts of a dataset version (a cache: derived from `version_manifest`, rebuilt when missing)."""
    if not SLUG.match(dataset_version):
        raise ValueError(f"not a dataset version: {dataset_version!r}")
    return f"monitoring/reference/{dataset_version}.json"


# Everything the garbage collector may consider; anything else in the lake is never touched by it.
COLLECTABLE_PREFIXES = (
    "changes/",
    "objects/",
    "pixels/",
    "indexes/",
    "manifests/",
    "datasets/",
    "versions/",
    "samples/",
)
