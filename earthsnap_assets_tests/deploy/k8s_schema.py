"""Offline Kubernetes schema checks for the YAML under deploy/, shared by the manifest tests.

`kubernetes_validate` ships the OpenAPI schemas of each Kubernetes minor version as JSON Schema; its
strict variant forbids unknown fields, so a misspelled key (`replica:`) or a field put one level too
deep fails here instead of being silently dropped by the API server (or refused by it, at deploy time).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate.utils import VersionNotSupportedError, all_versions, major_minor

# The oldest minor version the manifests must work on, and the newest the schemas go up to: a field
# missing from either (too new for 1.33, or removed since) fails. Keep the newest in step with the wheel.
K8S_VERSIONS: tuple[str, ...] = ("1.33", "1.37")
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"


class ManifestError(AssertionError):
    """A document that does not match the Kubernetes schema; the message says where and why."""


def k8s_documents(path: Path | str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a (multi-document) file, in order."""
    with open(path, encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def describe(doc: Mapping[str, Any]) -> str:
    """`Kind/name` of a document, for messages and test ids."""
    metadata = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{metadata.get('name', '?')}"


def _location(error: jsonschema.ValidationError) -> str:
    return error.json_path if error.path else "$"


def validate_manifest(doc: Mapping[str, Any], versions: Iterable[str] = K8S_VERSIONS) -> None:
    """Raise ManifestError unless `doc` is a valid object of its kind in every version, unknown fields included.

    Only built-in kinds have schemas: a custom resource (or a Kustomization) raises too, so that it is never
    mistaken for a validated one.
    """
    if not isinstance(doc, Mapping) or not doc.get("apiVersion") or not doc.get("kind"):
        raise ManifestError(f"not a Kubernetes object (no apiVersion/kind): {str(doc)[:200]}")
    for version in versions:
        try:
            kubernetes_validate.validate(dict(doc), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise ManifestError(
                f"{describe(doc)} is invalid for Kubernetes {exc.version}: {_location(exc)}: {exc.message}"
            ) from exc
        except (kubernetes_validate.SchemaNotFoundError, VersionNotSupportedError) as exc:
            raise ManifestError(f"{describe(doc)}: {exc.message}") from exc


def _schema_dir(version: str) -> str:
    matches = [v for v in all_versions() if major_minor(v) == major_minor(version)]
    if not matches:
        raise ManifestError(f"kubernetes_validate has no schemas for Kubernetes {version}; it has {all_versions()}")
    return f"v{matches[-1]}-local-strict"


@functools.cache
def _definitions(version: str) -> tuple[frozenset[str], referencing.Registry]:
    """Names of the strict definitions of `version`, and a registry that resolves references to them."""
    schemas = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = schemas / _schema_dir(version) / "_definitions.json"
    contents = json.loads(path.read_text(encoding="utf-8"))
    registry = referencing.Registry().with_resource(DEFINITIONS_ID, referencing.Resource.from_contents(contents))
    return frozenset(contents["$defs"]), registry


def validate_fragment(fragment: Any, definition: str, versions: Iterable[str] = K8S_VERSIONS) -> None:
    """Raise ManifestError unless `fragment` matches one named definition, e.g. `io.k8s.api.core.v1.PodSpec`.

    For pieces of Kubernetes objects embedded in other YAML (pod specs, containers, tolerations in Helm
    values or in Dagster's run config), which are applied later by some other program.
    """
    for version in versions:
        names, registry = _definitions(version)
        if definition not in names:
            close = sorted(n for n in names if n.rsplit(".", 1)[-1] == definition.rsplit(".", 1)[-1])
            hint = f"; did you mean {close}?" if close else ""
            raise ManifestError(f"no definition {definition!r} in Kubernetes {version}{hint}")
        schema = {"$ref": f"{DEFINITIONS_ID}#/$defs/{definition}"}
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        error = jsonschema.exceptions.best_match(validator.iter_errors(fragment))
        if error is not None:
            raise ManifestError(
                f"{definition} is invalid for Kubernetes {version}: {_location(error)}: {error.message}"
            )


VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_vars(parts: Iterable[str], values: Mapping[str, str]) -> list[str]:
    """`$(VAR)` references in a command or args replaced from `values`, as the kubelet does."""
    return [VAR_REF.sub(lambda m: values[m.group(1)], part) for part in parts]
