"""Safe model loading (issue 13): pt2 programs load as MLflow loads them; pickles are refused, never unpickled.

The hostile models here run code when unpickled: they write a marker file. Each refusal is checked by the
marker's absence, and a control (MLflow with pickles allowed, or `torch.export.load` unchecked) shows that
the same bytes do run code when deserialized the unsafe way.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml

from earthsnap_assets.registry import pt2
from earthsnap_assets.registry.client import ExportedModel
from earthsnap_assets.registry.pt2 import UnsafeModel, load_pt2, model_format
from earthsnap_assets.settings import Settings
from earthsnap_assets_tests.serving.helpers import IMAGE_SIZE, MeanColor, TinyModels

EXAMPLE = np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
REQUIREMENTS = ["torch"]  # given, so MLflow does not load the model in a subprocess to infer them


def tiny() -> MeanColor:
    return MeanColor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], [0.25, -0.5]).eval()


def planted(marker: str) -> MeanColor:
    """What the hostile pickles call when unpickled: leave a trace, then look like a model."""
    Path(marker).write_text("code ran while loading")
    return tiny()


def planted_tensor(marker: str) -> torch.Tensor:
    Path(marker).write_text("code ran while loading")
    return torch.tensor([0.25, -0.5])


class Hostile(torch.nn.Module):
    """A model whose pickle runs `planted` on load (torch.save pickles the module object itself)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.inner = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def __reduce__(self) -> tuple:
        return planted, (self.marker,)


class HostileTensor:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return planted_tensor, (self.marker,)


def save_pt2(path: Path) -> Path:
    mlflow.pytorch.save_model(
        tiny(), str(path), input_example=EXAMPLE, serialization_format="pt2", pip_requirements=REQUIREMENTS
    )
    return path


def save_pickle(path: Path, model: torch.nn.Module) -> Path:
    mlflow.pytorch.save_model(model, str(path), serialization_format="pickle", pip_requirements=REQUIREMENTS)
    return path


def pixels() -> torch.Tensor:
    return torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def test_a_pt2_model_loads_and_answers_exactly_as_mlflow_loads_it(tmp_path: Path) -> None:
    path = save_pt2(tmp_path / "model")
    ours = load_pt2(str(path))
    theirs = mlflow.pytorch.load_model(str(path))
    x = pixels()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        assert torch.allclose(ours(x), tiny()(x), atol=1e-6)
    assert isinstance(ours, torch.fx.GraphModule) and isinstance(theirs, torch.fx.GraphModule)
    assert model_format(path)[0] == "pt2"


def test_a_pickled_model_is_refused_and_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    path = save_pickle(tmp_path / "model", Hostile(marker))
    assert not marker.exists()  # saving does not run it
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow would unpickle; we never do
    with pytest.raises(UnsafeModel, match="format 'pickle'") as refused:
        load_pt2(str(path))
    assert str(path) in str(refused.value) and isinstance(refused.value, ValueError)
    assert refused.value.found == "pickle"
    assert not marker.exists(), "the refused model's code ran"
    mlflow.pytorch.load_model(str(path))  # control: the unsafe way does run the planted code
    assert marker.exists()


def test_a_pt2_archive_with_a_pickled_weight_is_refused(tmp_path: Path) -> None:
    """A pt2 archive whose weight is a pickle: `torch.export.load` unpickles it (weights_only=False)."""
    marker = tmp_path / "marker"
    path = save_pt2(tmp_path / "model")
    archive = path / "data" / pt2.PT2_FILE
    with zipfile.ZipFile(archive) as original:
        records = {info.filename: original.read(info) for info in original.infolist()}
    config_name = next(name for name in records if name.endswith("model_weights_config.json"))
    config = json.loads(records[config_name])
    entry = config["config"]["fc.bias"]
    entry["use_pickle"] = True
    records[config_name] = json.dumps(config).encode()
    records[config_name.rsplit("/", 1)[0] + "/" + entry["path_name"]] = pickle.dumps(HostileTensor(marker))
    with zipfile.ZipFile(archive, "w") as crafted:
        for name, data in records.items():
            crafted.writestr(name, data)
    assert model_format(path)[0] == "pt2"  # the files look right: only the archive check tells
    with pytest.raises(UnsafeModel, match="pickled records"):
        load_pt2(str(path))
    assert not marker.exists(), "the refused archive's code ran"
    with contextlib.suppress(Exception):  # control: loading it unchecked runs the planted code (then fails)
        torch.export.load(str(archive))
    assert marker.exists()


def test_what_is_not_a_pt2_pytorch_model_is_refused(tmp_path: Path) -> None:
    path = save_pt2(tmp_path / "model")
    mlmodel = path / "MLmodel"
    original = yaml.safe_load(mlmodel.read_text())

    def found_with(flavors: dict) -> str:
        mlmodel.write_text(yaml.safe_dump({**original, "flavors": flavors}))
        with pytest.raises(UnsafeModel) as refused:
            load_pt2(str(path))
        return refused.value.found

    pytorch = original["flavors"]["pytorch"]
    assert found_with({"sklearn": {"pickled_model": "model.pkl"}}) == "no pytorch flavor"
    assert found_with({"pytorch": {**pytorch, "serialization_format": "pickle"}}) == "pickle"
    assert found_with({"pytorch": {**pytorch, "model_data": "../.."}}).startswith("model_data outside")
    assert found_with({"pytorch": {**pytorch, "model_data": "data/model.pt2"}}) == "pickle"  # a file: torch.load
    mlmodel.write_text("flavors: [pytorch")
    with pytest.raises(UnsafeModel, match="unreadable MLmodel"):
        load_pt2(str(path))
    mlmodel.write_text(yaml.safe_dump(original))
    (path / "data" / "model.pth").write_bytes(b"")  # MLflow loads a model.pth first, whatever else is there
    with pytest.raises(UnsafeModel, match="'pickle'"):
        load_pt2(str(path))
    (path / "data" / "model.pth").unlink()
    (path / "data" / pt2.PT2_FILE).unlink()
    with pytest.raises(UnsafeModel, match=r"no model\.pt2"):
        load_pt2(str(path))


@pytest.mark.stack
def test_registered_pt2_models_load_through_the_registry_as_before(stack: Settings) -> None:
    models = TinyModels.create()
    registry = models.registry
    with registry.run("pt2") as run_id:
        logged = registry.log_model(run_id, tiny(), EXAMPLE, {"classes": ["a", "b"]})
    version = registry.register(logged, models.prefix + "pt2", run_id, {})
    x = pixels()
    for uri in (logged, f"models:/{models.prefix}pt2/{version}"):
        loaded = registry.load_model(uri)
        assert isinstance(loaded, ExportedModel)
        with torch.no_grad():
            assert torch.equal(loaded(x), mlflow.pytorch.load_model(uri)(x))  # what load_model returned before


@pytest.mark.stack
def test_a_registered_pickle_is_refused_by_the_registry_and_runs_nothing(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    models = TinyModels.create()
    registry = models.registry
    registry._mlflow()  # the session's MLflow and the registry's experiment, for mlflow.start_run
    with registry.run("pickle") as run_id, mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            Hostile(marker), name="model", serialization_format="pickle", pip_requirements=REQUIREMENTS
        )
    version = registry.register(info.model_uri, models.prefix + "pickled", run_id, {})
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    for uri in (info.model_uri, f"models:/{models.prefix}pickled/{version}"):
        with pytest.raises(UnsafeModel, match="format 'pickle'") as refused:
            registry.load_model(uri)
        assert uri in str(refused.value)
    assert not marker.exists(), "the refused model's code ran"
