"""Resource bindings: the one place that says which implementation each resource key gets."""

from earthsnap_assets.resources.dataset import DatasetSettings
from earthsnap_assets.resources.endpoints import Endpoints
from earthsnap_assets.resources.label_studio import LabelStudio
from earthsnap_assets.resources.lake_io_manager import LakeIOManager
from earthsnap_assets.resources.mlflow_registry import MlflowRegistry
from earthsnap_assets.resources.object_store import ObjectStore
from earthsnap_assets.resources.raw_events import RawEvents


def bindings() -> dict[str, object]:
    """Resources for every asset; configuration comes from the environment when a run starts."""
    store = ObjectStore()
    return {
        "store": store,
        "registry": MlflowRegistry(),
        "endpoints": Endpoints(),
        "io_manager": LakeIOManager(store=store),
        "dataset": DatasetSettings(),
        "raw_events": RawEvents(),
        "label_studio": LabelStudio(),
    }
