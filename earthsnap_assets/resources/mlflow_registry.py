"""MLflow as tracking server and model registry, behind a small verb API."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import torch
from pydantic import Field

from earthsnap_assets.settings import Settings


class ExportedModel(torch.nn.Module):
    """Wraps a loaded torch.export program so code written for nn.Modules (`.eval()`) can call it."""

    def __init__(self, program: torch.nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedModel:
        return self  # exported in eval mode; train/eval switching is not supported by exported programs

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.program(pixels)


PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31"]


class MlflowRegistry(dg.ConfigurableResource):
    """Runs, artifacts, pt2 models and registered versions. Unset fields come from the environment."""

    tracking_uri: str | None = Field(default=None, description="None = MLFLOW_TRACKING_URI / local stack")
    experiment: str = Field(default="earthsnap", description="experiment that holds the pipeline's runs")

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    @property
    def uri(self) -> str:
        return self.tracking_uri or Settings.from_env().mlflow_tracking_uri

    def _mlflow(self, with_experiment: bool = True):
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        if with_experiment:  # readers (serving) must not create the pipeline's experiment as a side effect
            mlflow.set_experiment(self.experiment)
        return mlflow

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

    def log_model(self, run_id: str, model, input_example, metadata: dict) -> str:
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

    def register(self, model_uri: str, name: str, run_id: str, tags: dict[str, str]) -> str:
        """Register `model_uri` (a `models:/m-...` logged model) as a new, tagged version of `name`."""
        mlflow = self._mlflow()
        version = mlflow.register_model(model_uri, name, tags=tags)
        return str(version.version)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def search_versions(self, filter_string: str) -> list:
        """Model versions matching an MLflow filter, e.g. "tags.approval = 'approved'"."""
        return list(self.client.search_model_versions(filter_string))

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version an alias points to, or None when the model or alias does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def load_model(self, model_uri: str):
        """The logged network, ready for inference (an exported pt2 program is already in eval mode)."""
        import mlflow.pytorch

        self._mlflow(with_experiment=False)
        return ExportedModel(mlflow.pytorch.load_model(model_uri))
