"""Load a logged MLflow PyTorch model only if it is a pt2 (torch.export) program: never a pickle. No Dagster.

`mlflow.pytorch.load_model` picks its path from the files it finds: a `data/model.pth` is unpickled (code
runs, if MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set anywhere in the process's environment), a
`data/model.pt2` goes to `torch.export.load`. Here a model is loaded only when its MLmodel file declares the
pytorch flavor and its data holds `model.pt2` and no pickle (`model.pth`, `pickle_module_info.txt`);
anything else is refused with `UnsafeModel` before any of its bytes are deserialized. A pt2 archive still
carries pickled records that `torch.export.load` unpickles with `weights_only=False`, so the archive is
first checked by MLflow's own validator (every record plain JSON/text, raw tensor bytes, or accepted by
torch's restricted `weights_only` unpickler), always, whatever MLFLOW_ALLOW_PICKLE_DESERIALIZATION says.
Then `torch.export.load(path).module()`, as MLflow does for pt2: the same program, the same outputs.
A `code` directory logged with the model is never put on `sys.path` (pt2 programs do not need it).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import torch

FLAVOR = "pytorch"
MLMODEL = "MLmodel"
PT2_FILE = "model.pt2"  # mlflow.pytorch._EXPORTED_TORCH_MODEL_FILE_NAME
PICKLE_FILES = ("model.pth", "pickle_module_info.txt")  # what mlflow.pytorch writes for serialization "pickle"
PT2 = "pt2"


class UnsafeModel(ValueError):
    """A logged model that is not a pickle-free pt2 program: refused, nothing of it deserialized."""

    def __init__(self, model_uri: str, found: str, detail: str = "") -> None:
        self.model_uri = model_uri
        self.found = found
        message = f"refusing to load {model_uri}: format {found!r}, only pt2 (torch.export) models are loaded"
        super().__init__(f"{message}; {detail}" if detail else message)


def model_format(model_dir: Path) -> tuple[str, Path]:
    """(format, path of the pt2 file) of a downloaded MLflow model, from its MLmodel and its data folder.

    The format is `pt2` only when the data holds `model.pt2` and nothing MLflow would unpickle; else
    `pickle`, `no pytorch flavor`, `<serialization_format>` declared, or `no model.pt2`.
    """
    import yaml

    mlmodel = model_dir / MLMODEL
    if not mlmodel.is_file():
        return f"no {MLMODEL} file", model_dir
    try:
        document = yaml.safe_load(mlmodel.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return f"unreadable {MLMODEL} file", model_dir
    flavors = document.get("flavors") if isinstance(document, dict) else None
    flavor = flavors.get(FLAVOR) if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict) or not isinstance(flavor.get("model_data"), str):
        return "no pytorch flavor", model_dir
    declared = flavor.get("serialization_format", PT2)  # MLflow 3.x writes none; refuse any other it might
    if declared != PT2:
        return str(declared), model_dir
    data = (model_dir / flavor["model_data"]).resolve()
    if not data.is_relative_to(model_dir.resolve()):
        return f"model_data outside the model: {flavor['model_data']!r}", model_dir
    if data.is_file() or any((data / name).exists() for name in PICKLE_FILES):  # MLflow would torch.load these
        return "pickle", data
    if not (data / PT2_FILE).is_file():
        return f"no {PT2_FILE}", data
    return PT2, data / PT2_FILE


def check_archive(model_uri: str, path: Path) -> None:
    """MLflow's pickle-free check of a pt2 archive (what `mlflow.pytorch.load_model` runs by default)."""
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.pytorch import _validate_pt2_archive_is_pickle_free as validate
    except ImportError as exc:  # an MLflow without it: fail closed rather than load unchecked
        raise UnsafeModel(model_uri, PT2, "this MLflow cannot check pt2 archives for pickles") from exc
    try:
        validate(str(path))
    except MlflowException as exc:
        raise UnsafeModel(model_uri, "pt2 with pickled records", exc.message) from exc


def load_pt2(
    model_uri: str,
    tracking_uri: str | None = None,
    lock: contextlib.AbstractContextManager[Any] | None = None,
) -> torch.nn.Module:
    """The program of the pt2 model at `model_uri`, as `torch.export.load(...).module()`; `UnsafeModel` otherwise.

    `lock` is held around `torch.export.load` only (it is not thread-safe); downloads and checks run unlocked.
    """
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="earthsnap-model-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder, tracking_uri=tracking_uri)
        found, path = model_format(Path(local))
        if found != PT2:
            raise UnsafeModel(model_uri, found)
        check_archive(model_uri, path)
        with lock or contextlib.nullcontext():
            return torch.export.load(str(path)).module()
