"""`POST /feedback` and the prediction log's rows, on the tiny models of the session's MLflow, lake in memory."""

from __future__ import annotations

import contextlib
import hashlib
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.lake.taxonomy import Taxonomy
from earthsnap_assets.lake.versions import save_taxonomy
from earthsnap_assets.monitoring.records import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, TRAFFIC_HEADER
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.production import Lake
from earthsnap_assets_tests.serving.conftest import Deployed
from earthsnap_assets_tests.serving.helpers import BLUE, GREEN, GROUP_SPECIES, photo, wait_until

pytestmark = pytest.mark.stack

BUCKET = "lake"
# the lake's taxonomy knows a species the deployed models do not (oak): validation reads the lake's
TAXONOMY = {**{s: g for g, species in GROUP_SPECIES.items() for s in species}, "oak": "trees"}


@dataclass
class App:
    client: TestClient
    lake: MemoryBlobs

    def predict(self, data: bytes) -> dict[str, Any]:
        response = self.client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
        assert response.status_code == 200, response.text
        return response.json()

    def feedback(self, body: Any = None, raw: bytes | None = None) -> Any:
        if raw is not None:
            return self.client.post("/feedback", content=raw, headers={"content-type": "application/json"})
        return self.client.post("/feedback", json=body)

    def table(self, prefix: str) -> pa.Table:
        keys = self.lake.list_keys(BUCKET, prefix)
        return pa.concat_tables([pq.read_table(io.BytesIO(self.lake.objects[(BUCKET, k)])) for k in keys])


@contextlib.contextmanager
def start(deployed: Deployed, tmp_path: Path, lake: MemoryBlobs, **config: Any) -> Iterator[App]:
    values = {"log_flush_interval_s": 0.05, "spool_dir": str(tmp_path / "spool"), **config}
    app = create_app("staging", config=deployed.models.config(**values), lake=Lake(lake, BUCKET))
    with TestClient(app) as client:
        yield App(client, lake)


@pytest.fixture(scope="module")
def served(deployed: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """Staging, uncertain photos kept, the lake's taxonomy published, models loaded."""
    lake = MemoryBlobs()
    save_taxonomy(lake, BUCKET, Taxonomy(TAXONOMY))
    with start(deployed, tmp_path_factory.mktemp("feedback"), lake, keep_photos="uncertain") as app:
        wait_until(lambda: app.client.get("/ready").status_code == 200, 30)
        wait_until(lambda: app.client.get("/stats").json()["taxonomy"]["source"] == "lake", 30)
        yield app


def flushed(app: App, prefix: str, request_ids: set[str]) -> pa.Table:
    """The rows of `prefix` once the writer has flushed the ones of `request_ids`."""

    def present() -> bool:
        keys = app.lake.list_keys(BUCKET, prefix)
        return bool(keys) and request_ids <= set(app.table(prefix).column("request_id").to_pylist())

    wait_until(present, 20)
    return app.table(prefix)


def test_an_answer_has_a_request_id_and_its_row_in_the_log(served: App, deployed: Deployed) -> None:
    data = photo(GREEN)
    answer = served.predict(data)
    request_id = answer["request_id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    rows = flushed(served, "predictions/staging/", {request_id})
    assert rows.schema.equals(PREDICTION_SCHEMA)
    row = next(r for r in rows.to_pylist() if r["request_id"] == request_id)
    assert (row["env"], row["level"], row["species"], row["group"]) == ("staging", "species", "rose", "flowers")
    assert row["probability"] == pytest.approx(answer["probability"])
    assert dict(row["model_versions"]) == answer["model_versions"] and row["dataset_version"] == "test"
    assert row["top_k"] == answer["top_k"] and row["routed_groups"] == ["flowers"]
    assert (row["width"], row["height"], row["image_bytes"]) == (96, 80, len(data))
    assert row["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["brightness"] == pytest.approx((20 + 230 + 20) / 3 / 255, abs=0.02)  # a solid green JPEG
    assert row["latency_ms"] > 0 and row["photo_key"] is None  # sure of its answer: the photo is not kept
    assert row["replica"] == served.client.get("/stats").json()["replica"]
    assert row["traffic"] == "app"  # no X-Earthsnap-Traffic header: a user of the app


def test_stage_test_traffic_is_labelled_keeps_no_photo_and_unknown_labels_are_refused(served: App) -> None:
    data = photo(BLUE, size=(90, 70))  # backs off to the group: kept if it were app traffic
    response = served.client.post(
        "/predict", content=data, headers={"content-type": "image/jpeg", TRAFFIC_HEADER: "stage-test"}
    )
    assert response.status_code == 200 and response.json()["level"] == "group"
    request_id = response.json()["request_id"]
    row = next(
        r for r in flushed(served, "predictions/staging/", {request_id}).to_pylist() if r["request_id"] == request_id
    )
    assert row["traffic"] == "stage-test" and row["photo_key"] is None
    refused = served.client.post(
        "/predict", content=data, headers={"content-type": "image/jpeg", TRAFFIC_HEADER: "bot"}
    )
    assert refused.status_code == 400 and TRAFFIC_HEADER in refused.json()["error"]


def test_uncertain_answers_keep_their_photo(served: App) -> None:
    data = photo(BLUE)  # insects' child is uniform: the answer backs off to the group
    answer = served.predict(data)
    assert answer["level"] == "group"
    row = next(
        r
        for r in flushed(served, "predictions/staging/", {answer["request_id"]}).to_pylist()
        if r["request_id"] == answer["request_id"]
    )
    sha = hashlib.sha256(data).hexdigest()
    assert row["photo_key"] == paths.request_photo("staging", row["ts"].date().isoformat(), sha)
    wait_until(lambda: served.lake.exists(BUCKET, row["photo_key"]), 20)
    assert served.lake.read(BUCKET, row["photo_key"]) == data


def test_feedback_on_an_answer_of_this_replica_derives_the_verdict(served: App) -> None:
    answer = served.predict(photo(GREEN))  # rose
    rid = answer["request_id"]
    contradicting = served.feedback({"request_id": rid, "species": "tulip", "verdict": "confirmed"})
    assert contradicting.status_code == 422 and "contradicts" in contradicting.json()["error"]
    confirmed = served.feedback({"request_id": rid, "species": "rose"})
    corrected = served.feedback({"request_id": rid, "species": "tulip", "verdict": "corrected"})
    assert (confirmed.status_code, corrected.status_code) == (202, 202), (confirmed.text, corrected.text)
    assert {k: confirmed.json()[k] for k in ("request_id", "verdict", "species", "group", "env")} == {
        "request_id": rid,
        "verdict": "confirmed",
        "species": "rose",
        "group": "flowers",
        "env": "staging",
    }
    assert corrected.json()["verdict"] == "corrected"
    group_level = served.predict(photo(BLUE))["request_id"]  # no species was answered: any species corrects it
    assert served.feedback({"request_id": group_level, "species": "moth"}).json()["verdict"] == "corrected"
    rows = flushed(served, "feedback/staging/", {rid, group_level})
    assert rows.schema.equals(FEEDBACK_SCHEMA)
    mine = sorted((r["verdict"], r["species"], r["group"]) for r in rows.to_pylist() if r["request_id"] == rid)
    assert mine == [("confirmed", "rose", "flowers"), ("corrected", "tulip", "flowers")]


def test_feedback_on_a_request_another_replica_answered_needs_the_verdict(served: App) -> None:
    elsewhere = uuid.uuid4().hex
    missing = served.feedback({"request_id": elsewhere, "species": "rose"})
    assert missing.status_code == 422 and "verdict" in missing.json()["error"]
    accepted = served.feedback({"request_id": elsewhere, "species": "oak", "verdict": "corrected"})
    assert accepted.status_code == 202, accepted.text
    assert (accepted.json()["group"], accepted.json()["verdict"]) == ("trees", "corrected")  # the lake's taxonomy
    row = next(r for r in flushed(served, "feedback/staging/", {elsewhere}).to_pylist() if r["request_id"] == elsewhere)
    assert (row["species"], row["group"], row["verdict"]) == ("oak", "trees", "corrected")


def test_unknown_species_is_refused_with_close_matches(served: App) -> None:
    response = served.feedback({"request_id": uuid.uuid4().hex, "species": "tulpi", "verdict": "corrected"})
    assert response.status_code == 422
    assert "tulip" in response.json()["suggestions"] and "tulip" in response.json()["error"]
    far = served.feedback({"request_id": uuid.uuid4().hex, "species": "xylophone", "verdict": "corrected"})
    assert far.status_code == 422 and far.json()["suggestions"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "ABCDEF" + "0" * 26, "species": "rose", "verdict": "corrected"},  # uppercase
        {"request_id": "0" * 31, "species": "rose", "verdict": "corrected"},
        {"request_id": "0" * 32 + "\n", "species": "rose", "verdict": "corrected"},
        {"request_id": 12, "species": "rose", "verdict": "corrected"},
        {"request_id": "0" * 32, "species": "rose", "verdict": "maybe"},
        {"request_id": "0" * 32},
        ["not", "an", "object"],
    ],
)
def test_malformed_feedback_is_a_422(served: App, body: Any) -> None:
    response = served.feedback(body)
    assert response.status_code == 422 and response.json()["error"]


def test_feedback_that_is_not_json_is_a_400(served: App) -> None:
    response = served.feedback(raw=b"{not json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_without_the_lake_s_taxonomy_the_deployed_species_are_the_reference(deployed: Deployed, tmp_path: Path) -> None:
    with start(deployed, tmp_path, MemoryBlobs()) as app:  # nothing published in this lake
        wait_until(lambda: app.client.get("/ready").status_code == 200, 30)
        assert app.client.get("/stats").json()["taxonomy"]["source"] == "deployed models"
        oak = app.feedback({"request_id": uuid.uuid4().hex, "species": "oak", "verdict": "corrected"})
        assert oak.status_code == 422
        rose = app.feedback({"request_id": uuid.uuid4().hex, "species": "rose", "verdict": "confirmed"})
        assert rose.status_code == 202 and rose.json()["group"] == "flowers"


def test_with_no_taxonomy_at_all_feedback_is_refused_not_accepted(deployed: Deployed, tmp_path: Path) -> None:
    nothing = f"test-{uuid.uuid4().hex[:8]}-nothing-"  # no models under this prefix: never ready
    with start(deployed, tmp_path, MemoryBlobs(), model_prefix=nothing) as app:
        response = app.feedback({"request_id": uuid.uuid4().hex, "species": "rose", "verdict": "confirmed"})
        assert response.status_code == 503 and "taxonomy" in response.json()["error"]
