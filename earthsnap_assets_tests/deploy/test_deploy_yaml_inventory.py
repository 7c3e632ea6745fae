"""Every YAML file under deploy/ parses and has a checker: a new file cannot slip in unvalidated."""

from pathlib import Path

import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from earthsnap_assets_tests.deploy.k8s_schema import k8s_documents, validate_manifest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# file -> what checks it (beyond parsing, which this module does for all of them)
CHECKED_BY = {
    "dagster.yaml": "Dagster's instance-config schema (here) and test_production_instance on PostgreSQL",
    "docker/.hadolint.yaml": "test_dockerfile (hadolint --config)",
    "helm/dagster-values.yaml": "test_helm_values",
    "k8s/kustomization.yaml": "test_k8s_manifests (lists exactly the manifests)",
}


def yaml_files() -> list[str]:
    return sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


@pytest.mark.parametrize("name", yaml_files())
def test_each_yaml_file_parses_and_is_validated_somewhere(name: str):
    documents = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    assert documents, f"{name} is empty"
    if name in CHECKED_BY:
        return
    assert name.startswith("k8s/"), f"{name}: add a checker for it and list it in CHECKED_BY"
    for document in k8s_documents(DEPLOY / name):
        validate_manifest(document)  # strict, Kubernetes 1.33 and 1.37


def test_deploy_dagster_yaml_matches_dagsters_instance_schema():
    """Dagster's own validation of the file (unknown keys, wrong types fail), without any database."""
    validated = dagster_instance_config(str(DEPLOY), "dagster.yaml")[0]
    assert validated["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert validated["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_the_inventory_has_no_stale_entries():
    assert set(CHECKED_BY) <= set(yaml_files())
