"""deploy/iam: the S3 (and SQS) permissions of serving and of the pipeline, against the lake paths the code uses.

The serving policy must allow exactly what `earthsnap serve` does to the lake, computed from the path functions of
earthsnap_assets/lake/paths.py that the serving modules call (a test also checks that list against their source):
read the taxonomy, write the prediction and feedback logs and kept photos. Nothing else: no delete, no other bucket,
no reading its own logs back. The bucket names are `${EARTHSNAP_*}` placeholders (fill them in with `envsubst`),
substituted here with test names. Matching follows IAM: `*` is any run of characters (slashes included), `?` one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from earthsnap_assets.lake import paths

ROOT = Path(__file__).resolve().parents[2]
IAM = ROOT / "deploy" / "iam"
SERVING_SOURCES = ("feedback.py", "production.py", "prediction_log.py")
BUCKETS = {"EARTHSNAP_RAW_BUCKET": "test-raw", "EARTHSNAP_LAKE_BUCKET": "test-lake", "EARTHSNAP_MLFLOW_BUCKET": "x"}
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:test-raw-events"
PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")
ENVIRONMENTS = ("staging", "production")
DAY, SHA = "2030-01-31", "ab" * 32


def serving_paths() -> dict[str, dict[str, set[str]]]:
    """path function or constant of paths.py -> {S3 action: example keys} of what serving does with it."""
    writes = {
        "predictions_batch": {paths.predictions_batch(env, DAY, "120000", "pod-1", "d1g3st") for env in ENVIRONMENTS},
        "feedback_batch": {paths.feedback_batch(env, DAY, "120000", "pod-1", "d1g3st") for env in ENVIRONMENTS},
        "request_photo": {paths.request_photo(env, DAY, SHA) for env in ENVIRONMENTS},
    }
    # The head names the taxonomy file (taxonomy_key, written by the pipeline) that serving reads next.
    reads = {"TAXONOMY_HEAD": {paths.TAXONOMY_HEAD, paths.taxonomy_key("0123456789abcdef")}}
    return {
        **{name: {"s3:PutObject": keys} for name, keys in writes.items()},
        **{name: {"s3:GetObject": keys} for name, keys in reads.items()},
    }


def load(name: str) -> dict[str, Any]:
    text = (IAM / name).read_text(encoding="utf-8")
    values = {**BUCKETS, "EARTHSNAP_RAW_EVENTS_QUEUE_ARN": QUEUE_ARN}
    unknown = set(PLACEHOLDER.findall(text)) - set(values)
    assert not unknown, f"{name}: unknown placeholders {unknown}"
    return json.loads(PLACEHOLDER.sub(lambda m: values[m.group(1)], text))


def statements(policy: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(action, resource pattern, condition) of every Allow statement, Action/Resource lists flattened."""
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, statement
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            for resource in resources:
                yield action, resource, statement.get("Condition", {})


def iam_match(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def allowed(policy: dict[str, Any], action: str, bucket: str, key: str) -> bool:
    arn = f"arn:aws:s3:::{bucket}/{key}"
    return any(a == action and iam_match(r, arn) and not c for a, r, c in statements(policy))


@pytest.mark.parametrize("name", sorted(p.name for p in IAM.glob("*.json")))
def test_policy_documents_are_valid_and_never_grant_everything(name: str) -> None:
    policy = load(name)
    assert policy["Version"] == "2012-10-17"
    for action, resource, _ in statements(policy):
        assert "*" not in action.split(":", 1)[1], f"{name}: wildcard action {action}"
        assert resource != "*" and not resource.startswith("arn:aws:s3:::*"), f"{name}: any bucket ({resource})"


def test_serving_modules_use_only_the_paths_tested_here() -> None:
    """If serving starts reading or writing another lake path, it must be added here (and to the policy)."""
    used: set[str] = set()
    for source in SERVING_SOURCES:
        text = (ROOT / "earthsnap_assets" / "serving" / source).read_text(encoding="utf-8")
        used |= set(re.findall(r"\bpaths\.([A-Za-z_]+)", text))
    every = {p.name for p in (ROOT / "earthsnap_assets" / "serving").glob("*.py")}
    for source in sorted(every - set(SERVING_SOURCES)):
        text = (ROOT / "earthsnap_assets" / "serving" / source).read_text(encoding="utf-8")
        assert not re.search(r"\bpaths\.[A-Za-z_]+", text), f"serving/{source} uses lake paths: add it here"
    assert used == set(serving_paths()), f"serving uses {sorted(used)}, the test knows {sorted(serving_paths())}"


def test_serving_may_do_what_it_does_to_the_lake() -> None:
    policy = load("serving-policy.json")
    lake = BUCKETS["EARTHSNAP_LAKE_BUCKET"]
    for name, actions in serving_paths().items():
        for action, keys in actions.items():
            for key in keys:
                assert allowed(policy, action, lake, key), f"{action} {key} ({name}) is refused"


def test_serving_may_do_nothing_else() -> None:
    """Exactly: every grant is used by some path serving touches, and it is only ever read or write, never both."""
    policy = load("serving-policy.json")
    lake = BUCKETS["EARTHSNAP_LAKE_BUCKET"]
    needed = [(action, key) for actions in serving_paths().values() for action, keys in actions.items() for key in keys]
    for action, resource, condition in statements(policy):
        assert action in {"s3:GetObject", "s3:PutObject"}, f"serving needs no {action}"
        assert not condition
        assert resource.startswith(f"arn:aws:s3:::{lake}/"), f"serving touches only the lake's objects: {resource}"
        assert any(a == action and iam_match(resource, f"arn:aws:s3:::{lake}/{k}") for a, k in needed), (
            f"{action} on {resource} is granted but serving never needs it"
        )
    for actions in serving_paths().values():
        for action, keys in actions.items():
            other = "s3:GetObject" if action == "s3:PutObject" else "s3:PutObject"
            for key in keys:
                assert not allowed(policy, other, lake, key), f"{other} {key}: serving only needs {action}"
                assert not allowed(policy, "s3:DeleteObject", lake, key)
    # A few things a compromised serving pod must not reach: the training data, the raw photos, the models.
    for bucket, key in [
        (lake, paths.manifest_head("birds")),
        (lake, paths.weights_key("0" * 64)),
        (lake, paths.review_photo(SHA)),
        (BUCKETS["EARTHSNAP_RAW_BUCKET"], "taxonomy.csv"),
        (BUCKETS["EARTHSNAP_MLFLOW_BUCKET"], "artifacts/1/model.pt"),
    ]:
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert not allowed(policy, action, bucket, key), f"{action} s3://{bucket}/{key}"


def test_pipeline_owns_the_lake_reads_raw_and_drains_the_queue() -> None:
    policy = load("pipeline-policy.json")
    raw, lake = BUCKETS["EARTHSNAP_RAW_BUCKET"], BUCKETS["EARTHSNAP_LAKE_BUCKET"]
    for key in (paths.manifest_head("birds"), paths.TAXONOMY_HEAD, "dagster/compute-logs/run/step.out"):
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):  # garbage collection deletes
            assert allowed(policy, action, lake, key), f"{action} {key}"
    assert allowed(policy, "s3:GetObject", raw, "images/robin/1.jpg")
    assert allowed(policy, "s3:GetObject", raw, "taxonomy.csv")
    assert not allowed(policy, "s3:DeleteObject", raw, "images/robin/1.jpg"), "raw photos are the users' data"
    grants = list(statements(policy))
    assert ("s3:ListBucket", f"arn:aws:s3:::{lake}", {}) in grants
    assert ("sqs:ReceiveMessage", QUEUE_ARN, {}) in grants and ("sqs:DeleteMessage", QUEUE_ARN, {}) in grants
    assert not any(BUCKETS["EARTHSNAP_MLFLOW_BUCKET"] in r for _, r, _ in grants), "artifacts go through MLflow"


def test_placeholders_are_the_configmaps_variables() -> None:
    """`envsubst` with the ConfigMap's bucket variables fills the policies in (the queue ARN is the only extra)."""
    import yaml

    data = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text(encoding="utf-8"))["data"]
    for path in IAM.glob("*.json"):
        names = set(PLACEHOLDER.findall(path.read_text(encoding="utf-8"))) - {"EARTHSNAP_RAW_EVENTS_QUEUE_ARN"}
        assert names <= set(data), f"{path.name}: {sorted(names - set(data))} are not in the ConfigMap"
