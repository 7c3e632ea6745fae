"""The plain MLflow client against the real stack: the mapping artifact at 10^4 species, and errors that are errors."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from earthsnap_assets.pipeline.registration import production_accuracy, register
from earthsnap_assets.refs import ModelRef
from earthsnap_assets.registry import names
from earthsnap_assets.registry.client import MappingMismatch, RegistryClient
from earthsnap_assets.settings import Settings
from earthsnap_assets_tests.serving.helpers import IMAGE_SIZE, MeanColor, TinyModels

MLFLOW_TAG_LIMIT = 100_000  # characters MLflow accepts in one tag value


def big_mapping(groups: int = 100, per_group: int = 100) -> dict[str, list[str]]:
    return {f"group-{g:03d}": [f"genus-{g:03d}-species-{s:04d}" for s in range(per_group)] for g in range(groups)}


@pytest.mark.stack
def test_a_mapping_of_ten_thousand_species_registers_as_an_artifact(stack: Settings) -> None:
    mapping = big_mapping()
    assert len(json.dumps(mapping)) > MLFLOW_TAG_LIMIT  # the old `group_species` tag could not hold it
    models = TinyModels.create()
    registry = models.registry
    example = np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    with registry.run("parent") as run_id:
        uri = registry.log_model(run_id, MeanColor(np.zeros((100, 3)), np.zeros(100)), example, {})
    ref = ModelRef("parent", None, tuple(mapping), "test", IMAGE_SIZE, run_id=run_id, model_uri=uri)
    version = register(registry, ref, {"accuracy": 0.9}, 0.0, 1.0, group_species=mapping)
    tags = registry.version_tags(version.name, version.version)
    assert (tags[names.GROUP_SPECIES_GROUPS], tags[names.GROUP_SPECIES_SPECIES]) == ("100", "10000")
    assert names.LEGACY_GROUP_SPECIES not in tags
    assert max(len(value) for key, value in tags.items() if key != names.CLASSES) < 200  # none grows with species
    assert registry.group_species(tags) == mapping  # what serving reads, checked against the sha256
    with pytest.raises(MappingMismatch, match="does not match"):
        registry.group_species({**tags, names.GROUP_SPECIES_SHA256: "0" * 64})


@pytest.mark.stack
def test_only_a_missing_model_or_alias_reads_as_absent(stack: Settings) -> None:
    models = TinyModels.create()
    versions = models.deploy_first_versions("staging")
    registry = models.registry
    parent = models.prefix + "parent"
    assert registry.alias_version(parent, "staging") == versions["parent"]
    assert registry.alias_version(parent, "production") is None  # the model exists, the alias does not
    assert registry.alias_version(models.prefix + "child-nothing", "staging") is None
    aliases = registry.aliases(models.prefix)
    assert aliases == {models.prefix + name: {"staging": v} for name, v in versions.items()}


@pytest.mark.stack
def test_models_load_from_several_threads_at_once(stack: Settings) -> None:
    models = TinyModels.create()
    versions = models.deploy_first_versions("staging")
    uris = [f"models:/{models.prefix}{name}/{versions[name]}" for name in ("child-flowers", "child-insects")] * 4
    with ThreadPoolExecutor(4) as pool:  # torch.export.load alone fails when two threads deserialize at once
        loaded = list(pool.map(models.registry.load_model, uris))
    assert [m(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).shape[-1] for m in loaded] == [2, 3] * 4


@contextlib.contextmanager
def failing_server(status: int = 503) -> Iterator[str]:
    """An HTTP server that answers every request with `status`: an MLflow outage."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "down"}')

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_an_outage_is_an_error_not_an_empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of MLflow's backoff
    with failing_server() as url:
        registry = RegistryClient(tracking_uri=url)
        with pytest.raises(MlflowException):
            registry.alias_version("earthsnap-parent", "production")
        with pytest.raises(MlflowException):  # the non-regression gate must not read an outage as "no production"
            production_accuracy(registry, "earthsnap-parent")
        with pytest.raises(MlflowException):
            registry.aliases("earthsnap-")
