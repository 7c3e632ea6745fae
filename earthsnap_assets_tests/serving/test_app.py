"""The serving endpoint over real sockets, against tiny models registered on the session's real MLflow."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import torch
from click.testing import CliRunner

from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.batching import MicroBatcher
from earthsnap_assets.serving.cli import serve
from earthsnap_assets_tests.serving.conftest import Deployed, Served
from earthsnap_assets_tests.serving.helpers import (
    BLUE,
    GREEN,
    GROUP_SPECIES,
    RED,
    WITHOUT_DAGSTER,
    Recorder,
    TinyModels,
    expected_probabilities,
    free_port,
    noise_jpeg,
    photo,
    png_header,
    serving,
    wait_ready,
    wait_until,
)

needs_stack = pytest.mark.stack  # every test but the batcher's runs against the real MLflow


def predict(url: str, data: Any = None, **kwargs: Any) -> requests.Response:
    return requests.post(f"{url}/predict", data=data, timeout=30, **kwargs)


@needs_stack
def test_species_answer_is_parent_times_the_routed_child(staging: Served, deployed: Deployed) -> None:
    data = photo(GREEN)
    response = predict(staging.url, data, headers={"Content-Type": "image/jpeg"}, params={"top_k": 6})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = expected_probabilities(data)
    p_flowers = expected["rose"] + expected["tulip"]
    assert (body["species"], body["group"], body["level"], body["note"]) == ("rose", "flowers", "species", None)
    assert body["probability"] == pytest.approx(expected["rose"], abs=1e-5)
    # the parent is sure (P(flowers) > 0.95): only the flowers child ran, and only its species are claimed
    assert body["groups_evaluated"] == [{"group": "flowers", "probability": pytest.approx(p_flowers, abs=1e-5)}]
    assert [entry["species"] for entry in body["top_k"]] == ["rose", "tulip"]
    for entry in body["top_k"]:
        assert entry["probability"] == pytest.approx(expected[entry["species"]], abs=1e-5)
    assert body["unexpanded_mass"] == pytest.approx(1.0 - p_flowers, abs=1e-5)
    flowers = deployed.models.prefix + "child-flowers"
    assert body["model_versions"] == {
        k: v for k, v in deployed.model_versions.items() if "child" not in k or k == flowers
    }
    assert len(predict(staging.url, data, params={"top_k": 1}).json()["top_k"]) == 1


@needs_stack
def test_routing_every_group_answers_with_the_full_hierarchy(deployed: Deployed) -> None:
    routing = RoutingConfig.everything(len(GROUP_SPECIES))
    with serving(create_app("staging", config=deployed.models.config(routing=routing))) as url:
        wait_ready(url)
        data = photo(GREEN)
        body = predict(url, data, params={"top_k": 6}).json()
    expected = expected_probabilities(data)
    assert [entry["species"] for entry in body["top_k"]] == sorted(expected, key=lambda s: -expected[s])
    for entry in body["top_k"]:
        assert entry["probability"] == pytest.approx(expected[entry["species"]], abs=1e-5)
    assert sum(entry["probability"] for entry in body["top_k"]) == pytest.approx(1.0, abs=1e-5)
    assert body["unexpanded_mass"] == pytest.approx(0.0, abs=1e-6)
    assert body["model_versions"] == deployed.model_versions  # birds has one species: no child model


@needs_stack
def test_multipart_upload_gives_the_raw_body_answer(staging: Served) -> None:
    data = photo(GREEN, fmt="PNG")
    raw = predict(staging.url, data).json()
    files = {"file": ("leaf.png", data, "image/png")}
    multipart = predict(staging.url, {"comment": "ignored"}, files=files)
    assert multipart.status_code == 200, multipart.text
    body = multipart.json()
    assert body.pop("request_id") != raw.pop("request_id")  # every answer has its own
    assert body == raw


@needs_stack
def test_unsure_child_backs_off_to_the_group(staging: Served) -> None:
    data = photo(BLUE)
    body = predict(staging.url, data, params={"top_k": 3}).json()
    p_insects = sum(p for s, p in expected_probabilities(data).items() if s in ("moth", "bee", "ant"))
    assert (body["species"], body["group"], body["level"]) == (None, "insects", "group")
    assert body["probability"] == pytest.approx(p_insects, abs=1e-5)
    assert "insects" in body["note"] and "0.333" in body["note"]
    assert {entry["species"] for entry in body["top_k"]} == {"moth", "bee", "ant"}
    assert all(entry["probability"] == pytest.approx(p_insects / 3, abs=1e-5) for entry in body["top_k"])


@needs_stack
def test_one_species_group_needs_no_child(staging: Served) -> None:
    data = photo(RED)
    body = predict(staging.url, data).json()
    assert (body["species"], body["group"], body["level"]) == ("robin", "birds", "species")
    assert body["probability"] == pytest.approx(expected_probabilities(data)["robin"], abs=1e-5)


class Chunks:
    """A chunked upload that can be sent more than once (a bare iterator is empty the second time: the fault
    suite's hostile catalogue sends these cases too)."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk, self.count = chunk, count

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.chunk] * self.count)


BAD_INPUTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "empty": ({"data": b""}, 400, "empty body"),
    "not-an-image": ({"data": b"hello, world " * 20}, 415, "not an image"),
    "gif": ({"data": photo(GREEN, fmt="GIF")}, 415, "GIF"),
    "too-small": ({"data": photo(GREEN, size=(40, 300))}, 422, "short side"),
    "truncated": ({"data": noise_jpeg()[:6000]}, 422, "does not decode"),
    "too-many-pixels": ({"data": png_header(8000, 6000)}, 413, "48000000 pixels"),
    "decompression-bomb": ({"data": png_header(60000, 60000)}, 413, "pixels"),
    "declared-too-large": ({"data": b"x" * 250_000}, 413, "limit of 200000 bytes"),
    "streamed-too-large": ({"data": Chunks(b"x" * 50_000, 5)}, 413, "limit of 200000 bytes"),
    "multipart-no-file": ({"files": {"image": ("a.jpg", photo(GREEN))}}, 400, "'file'"),
    "multipart-two-files": ({"files": [("file", ("a.jpg", b"a")), ("file", ("b.jpg", b"b"))]}, 400, "found 2"),
    "multipart-mixed": ({"data": b"--x--", "headers": {"Content-Type": "multipart/mixed; boundary=x"}}, 400, ""),
    "multipart-no-boundary": ({"data": photo(GREEN), "headers": {"Content-Type": "multipart/form-data"}}, 400, ""),
    "multipart-garbage": ({"data": b"junk", "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400, ""),
    "multipart-empty-file": ({"files": {"file": ("a.jpg", b"")}}, 400, "empty body"),
    "top-k-zero": ({"data": photo(GREEN), "params": {"top_k": "0"}}, 400, "top_k"),
    "top-k-text": ({"data": photo(GREEN), "params": {"top_k": "many"}}, 400, "top_k"),
}


@needs_stack
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_4xx(staging: Served, case: str) -> None:
    kwargs, status, message = BAD_INPUTS[case]
    response = predict(staging.url, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@needs_stack
def test_health_ready_and_models(staging: Served, deployed: Deployed) -> None:
    assert requests.get(f"{staging.url}/health", timeout=5).status_code == 200
    assert requests.get(f"{staging.url}/ready", timeout=5).json()["ready"] is True
    models = requests.get(f"{staging.url}/models", timeout=5).json()
    assert (models["env"], models["alias"], models["versions"]) == ("staging", "staging", deployed.model_versions)
    assert models["dataset_version"] == "test" and models["loaded_at"]
    assert models["classes"]["groups"] == ["birds", "flowers", "insects"]
    assert models["classes"]["species"]["flowers"] == ["rose", "tulip"]


@needs_stack
def test_ready_only_once_the_alias_is_loaded(deployed: Deployed) -> None:
    app = create_app("production", config=deployed.models.config())
    with serving(app) as url:
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        ready = requests.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert predict(url, photo(GREEN)).status_code == 503
        assert requests.get(f"{url}/models", timeout=5).status_code == 503
        deployed.models.set_alias("production", deployed.versions)
        wait_ready(url, timeout=20)
        models = requests.get(f"{url}/models", timeout=5).json()
        assert (models["env"], models["versions"]) == ("production", deployed.model_versions)
        assert predict(url, photo(GREEN)).json()["species"] == "rose"


@needs_stack
def test_with_a_release_key_only_signed_releases_are_served(stack: Any) -> None:
    from earthsnap_assets.registry import release

    models = TinyModels.create()
    versions = models.deploy_first_versions("production")  # every release tag set by hand, none signed
    config = models.config(release_key="deploy-job-key", recheck_refused_s=0.5)
    with serving(create_app("production", models.registry, config)) as url:
        wait_until(lambda: "not signed" in (requests.get(f"{url}/ready", timeout=5).json()["problem"] or ""), 20)
        assert requests.get(f"{url}/ready", timeout=5).status_code == 503  # nothing good to fall back on
        for name, version in versions.items():
            full = models.prefix + name
            signature = release.sign("deploy-job-key", full, version, "production")
            models.registry.set_version_tags(full, version, {release.signature_tag("production"): signature})
        wait_ready(url, timeout=20)
        assert predict(url, photo(GREEN)).json()["species"] == "rose"


@needs_stack
def test_concurrent_requests_share_forward_passes(staging: Served) -> None:
    n, data = 16, photo(GREEN)
    before = requests.get(f"{staging.url}/stats", timeout=5).json()
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        barrier.wait()
        return predict(staging.url, data).status_code

    with ThreadPoolExecutor(n) as pool:
        assert list(pool.map(one, range(n))) == [200] * n
    after = requests.get(f"{staging.url}/stats", timeout=5).json()
    assert after["items"] - before["items"] == n
    assert after["forward_passes"] - before["forward_passes"] < n
    assert after["largest_batch"] > 1


def test_batcher_keeps_each_item_on_the_model_it_was_submitted_with() -> None:
    batcher, old, new, broken = MicroBatcher(max_batch=16, max_wait_s=5.0), Recorder(), Recorder(), Recorder(True)
    batcher.start()
    try:
        with batcher.expecting() as slot:  # the worker waits for this announced item: all land in one batch
            models = [old, new, old]
            futures = [batcher.submit(model, torch.full((1, 3, 2, 2), float(i))) for i, model in enumerate(models)]
            futures.append(slot.submit(broken, torch.zeros(1, 3, 2, 2)))
        assert [futures[i].result(5) for i in (0, 1, 2)] == [0.0, 1.0, 2.0]
        with pytest.raises(RuntimeError, match="broken model"):
            futures[3].result(5)
        assert (old.batches, new.batches, batcher.stats.forward_passes) == ([2], [1], 2)
        started = time.monotonic()  # nothing announced: a lone item runs at once, it does not wait max_wait_s
        assert batcher.submit(new, torch.ones(1, 3, 2, 2)).result(5) == 1.0
        assert time.monotonic() - started < 1.0
    finally:
        batcher.stop()


@needs_stack
def test_alias_move_under_traffic_never_mixes_versions(stack: Any) -> None:
    models = TinyModels.create()
    first = models.deploy_first_versions("staging")
    parent, flowers = models.prefix + "parent", models.prefix + "child-flowers"
    answers: list[dict] = []
    errors: list[dict] = []
    stop = threading.Event()

    def client() -> None:
        session, data = requests.Session(), photo(GREEN)
        while not stop.is_set():
            try:
                response = session.post(f"{url}/predict", data=data, timeout=30)
                (answers if response.status_code == 200 else errors).append(response.json())
            except Exception as exc:  # a dropped connection is an error too
                errors.append({"exception": repr(exc)})

    def moved() -> bool:
        return (
            sum(a["model_versions"] == {parent: second["parent"], flowers: second["child-flowers"]} for a in answers)
            >= 20
        )

    with serving(create_app("staging", config=models.config())) as url:
        wait_ready(url)
        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(client) for _ in range(4)]
            try:
                wait_until(lambda: len(answers) >= 20)
                second = {"parent": models.register_parent(), "child-flowers": models.register_flowers(favourite=1)}
                models.set_alias("staging", second)
                wait_until(moved, timeout=30)
            finally:
                stop.set()
            for worker in workers:
                worker.result()
        assert requests.get(f"{url}/models", timeout=5).json()["versions"] == models.full_names({**first, **second})
    assert errors == []
    assert answers[0]["model_versions"] == {parent: first["parent"], flowers: first["child-flowers"]}
    for answer in answers:  # each answer comes from one bundle: the flowers child it names picked the species
        assert set(answer["model_versions"]) == {parent, flowers}
        assert answer["species"] == (
            "tulip" if answer["model_versions"][flowers] == second["child-flowers"] else "rose"
        )


@needs_stack
def test_cli_serves_an_environment_without_dagster(deployed: Deployed, tmp_path: Any) -> None:
    assert CliRunner().invoke(serve, ["--env", "dev"]).exit_code == 2
    port = free_port()
    args = [
        "serve",
        "--env",
        "staging",
        "--port",
        str(port),
        "--model-prefix",
        deployed.models.prefix,
        "--poll-interval",
        "1",
    ]
    code = WITHOUT_DAGSTER + "from earthsnap_assets.cli import main; main()"  # as `earthsnap serve` runs it
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            wait_ready(url, timeout=90)
            body = predict(url, photo(GREEN)).json()
            flowers = {k: v for k, v in deployed.model_versions.items() if k.endswith(("parent", "child-flowers"))}
            assert (body["species"], body["model_versions"]) == ("rose", flowers), body
            assert time.monotonic() - started < 90
        finally:
            process.terminate()
            process.wait(20)
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()  # a graceful stop
