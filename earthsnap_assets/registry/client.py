"""MLflow as tracking server and model registry, behind a small verb API; no Dagster.

`RegistryVerbs` holds the verbs; a subclass provides `tracking_uri` (None: the environment's) and
`experiment`. `RegistryClient` is the plain one (serving, CLI, scripts); the Dagster resource
`MlflowRegistry` is the same verbs with Dagster config fields.

Registry errors are errors: only MLflow's RESOURCE_DOES_NOT_EXIST means "absent". A timeout or a 5xx
raises, so an outage is never read as "no production version" (which would pass the non-regression gate)
or "no such alias" (which would leave an endpoint serving nothing). Every call is bounded in time and
retries (`registry/limits.py`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from earthsnap_assets.hashing import sha256_bytes
from earthsnap_assets.registry import limits, names
from earthsnap_assets.settings import Settings

PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31"]
SEARCH_PAGE = 1000  # MLflow's largest page of registered models
# torch.export.load keeps its deserializer in a global: two loads at once fail ("_CURRENT_DESERIALIZER is
# already set"). Serving loads children on a pool of threads, so loads in this process take turns.
_LOAD_LOCK = threading.Lock()


class ExportedModel(torch.nn.Module):
    """Wraps a loaded torch.export program so code written for nn.Modules (`.eval()`) can call it."""

    def __init__(self, program: torch.nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedModel:
        return self  # exported in eval mode; train/eval switching is not supported by exported programs

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.program(pixels)


class MappingMismatch(ValueError):
    """A version's group -> species artifact is missing or does not match the sha256 in its tags."""


def is_missing(exc: BaseException) -> bool:
    """True only for MLflow's "does not exist": the one registry error that is an answer, not a failure."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


class RegistryVerbs:
    """Runs, artifacts, pt2 models, registered versions, aliases. Needs `tracking_uri` and `experiment`."""

    tracking_uri: str | None
    experiment: str

    @property
    def uri(self) -> str:
        return self.tracking_uri or Settings.from_env().mlflow_tracking_uri

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        limits.apply()  # bounded timeouts and retries: an outage is an error within seconds, not minutes
        return MlflowClient(tracking_uri=self.uri)

    def _mlflow(self, with_experiment: bool = True) -> Any:
        import mlflow

        limits.apply()
        mlflow.set_tracking_uri(self.uri)
        if with_experiment:  # readers (serving) must not create the pipeline's experiment as a side effect
            mlflow.set_experiment(self.experiment)
        return mlflow

    # ------------------------------------------------------------------------------------------ runs

    @contextlib.contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> Iterator[str]:
        """Start a run (nested under `parent_run_id` when given) and yield its id."""
        mlflow = self._mlflow()
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(
            mlflow.get_experiment_by_name(self.experiment).experiment_id, run_name=name, tags=all_tags
        )
        status = "FAILED"
        try:
            yield run.info.run_id
            status = "FINISHED"
        finally:
            self.client.set_terminated(run.info.run_id, status=status)

    def log_params(self, run_id: str, params: dict) -> None:
        for key, value in params.items():
            self.client.log_param(run_id, key, value)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value), step=step or 0)

    def log_bytes(self, run_id: str, path: str, data: bytes) -> None:
        """Store `data` as artifact `path` (e.g. 'plots/confusion.png') of the run."""
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / Path(path).name
            target.write_bytes(data)
            parent = str(Path(path).parent)
            self.client.log_artifact(run_id, str(target), artifact_path=None if parent == "." else parent)

    def log_json(self, run_id: str, path: str, value: object) -> None:
        self.log_bytes(run_id, path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def read_bytes(self, artifact_uri: str) -> bytes:
        """The bytes of one artifact file (`runs:/<run_id>/<path>`)."""
        import mlflow.artifacts

        with tempfile.TemporaryDirectory() as folder:
            local = mlflow.artifacts.download_artifacts(artifact_uri, dst_path=folder, tracking_uri=self.uri)
            return Path(local).read_bytes()

    # ------------------------------------------------------------------------------------------ models

    def log_model(self, run_id: str, model: torch.nn.Module, input_example: Any, metadata: dict) -> str:
        """Log a torch model in MLflow's pt2 (torch.export) format; labels travel in its metadata."""
        import mlflow.pytorch

        self._mlflow()
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model.eval(),
                name="model",
                input_example=input_example,
                pip_requirements=PIP_REQUIREMENTS,
                metadata=metadata,
            )
        return info.model_uri

    def load_model(self, model_uri: str) -> ExportedModel:
        """The logged network, ready for inference (an exported pt2 program is already in eval mode).

        Only a pickle-free pt2 program loads: anything else raises `pt2.UnsafeModel` before deserializing.
        Thread-safe: loads in one process take turns (see `_LOAD_LOCK`).
        """
        from earthsnap_assets.registry import pt2

        self._mlflow(with_experiment=False)
        return ExportedModel(pt2.load_pt2(model_uri, self.uri, lock=_LOAD_LOCK))

    # ------------------------------------------------------------------------------------------ versions

    def register(self, model_uri: str, name: str, run_id: str, tags: dict[str, str]) -> str:
        """Register `model_uri` (a `models:/m-...` logged model) as a new, tagged version of `name`."""
        mlflow = self._mlflow()
        version = mlflow.register_model(model_uri, name, tags=tags)
        return str(version.version)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)

    def delete_version_tag(self, name: str, version: str, key: str) -> None:
        """Remove one tag; a tag that is not there is not an error."""
        try:
            self.client.delete_model_version_tag(name, version, key)
        except Exception as exc:
            if not is_missing(exc):
                raise

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def search_versions(self, filter_string: str) -> list:
        """Model versions matching an MLflow filter, e.g. "tags.approval = 'approved'"."""
        return list(self.client.search_model_versions(filter_string))

    # ------------------------------------------------------------------------------------------ aliases

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `alias` points to; None when the model does not exist or has no such alias.

        Read from the registered model's alias table: MLflow answers a missing alias of an existing model
        with INVALID_PARAMETER_VALUE, which cannot be told apart from a malformed request.
        """
        try:
            model = self.client.get_registered_model(name)
        except Exception as exc:
            if is_missing(exc):
                return None
            raise
        version = model.aliases.get(alias)
        return None if version is None else str(version)

    def aliases(self, prefix: str) -> dict[str, dict[str, str]]:
        """{registered model: {alias: version}} of every model whose name starts with `prefix`.

        One paged search (a page holds 1,000 models) instead of one call per model: an endpoint polls this
        every few seconds, whatever the number of groups.
        """
        found: dict[str, dict[str, str]] = {}
        token = None
        while True:
            page = self.client.search_registered_models(
                filter_string=f"name LIKE '{prefix}%'", max_results=SEARCH_PAGE, page_token=token
            )
            for model in page:
                if model.name.startswith(prefix):
                    found[model.name] = {alias: str(version) for alias, version in model.aliases.items()}
            token = page.token
            if not token:
                return found

    # ------------------------------------------------------------------------------------------ mapping

    def log_group_species(self, run_id: str, mapping: Mapping[str, Sequence[str]]) -> dict[str, str]:
        """Store the group -> species mapping as an artifact of `run_id`; the version tags that point at it."""
        tags = names.group_species_tags(mapping, run_id)
        path = tags[names.GROUP_SPECIES_URI].removeprefix(f"runs:/{run_id}/")
        self.log_bytes(run_id, path, names.group_species_bytes(mapping))
        return tags

    def group_species(self, tags: Mapping[str, str]) -> dict[str, list[str]]:
        """The mapping a parent version's tags point at, checked against their sha256.

        Versions registered before the artifact existed carry the whole mapping in one tag; they still load.
        """
        uri = tags.get(names.GROUP_SPECIES_URI)
        if uri is None:
            if names.LEGACY_GROUP_SPECIES in tags:
                return json.loads(tags[names.LEGACY_GROUP_SPECIES])
            raise MappingMismatch(f"no {names.GROUP_SPECIES_URI} tag: the version has no group -> species mapping")
        data = self.read_bytes(uri)
        if sha256_bytes(data) != tags.get(names.GROUP_SPECIES_SHA256):
            raise MappingMismatch(f"{uri} does not match its {names.GROUP_SPECIES_SHA256} tag")
        return json.loads(data)


class RegistryClient(RegistryVerbs):
    """The registry verbs for code that runs outside Dagster (the serving endpoint, the CLI, benchmarks)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "earthsnap") -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    def __repr__(self) -> str:
        return f"RegistryClient(tracking_uri={self.tracking_uri!r}, experiment={self.experiment!r})"
