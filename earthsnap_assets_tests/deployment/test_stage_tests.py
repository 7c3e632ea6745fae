"""Stage tests against a real (tiny) HTTP server standing in for an endpoint's behaviour."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from earthsnap_assets.deployment.stage_tests import GoldenImage, run_stage_tests

TOKEN = "stage-test-token-0123456789"


def _serve(answer_bad_input_with: int, token: str | None = None):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                status, answer = 401, {"error": "missing bearer token"}
            elif body.startswith(b"GOOD:"):
                species, group = body[5:].decode().split("/")
                status, answer = 200, {"top_k": [{"species": species, "group": group, "probability": 0.9}]}
            elif body.startswith(b"WRONG:"):
                status, answer = 200, {"top_k": [{"species": "other", "group": "flowers", "probability": 0.9}]}
            else:
                status, answer = answer_bad_input_with, {"error": "bad input"}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def golden():
    good = [GoldenImage(b"GOOD:rose/flowers", "rose", "flowers") for _ in range(8)]
    return good + [GoldenImage(b"WRONG:", "tulip", "flowers") for _ in range(2)]


def test_passes_when_accuracy_latency_and_probes_are_fine(golden):
    server = _serve(answer_bad_input_with=400)
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        report = run_stage_tests(url, golden, "child", expected_accuracy=0.85, tolerance=0.1, slo_p95_ms=2000)
    finally:
        server.shutdown()
    assert report.passed and report.accuracy == pytest.approx(0.8) and report.images == 10
    assert set(report.probes.values()) == {400}


def test_fails_on_accuracy_and_on_a_probe_answered_with_5xx(golden):
    server = _serve(answer_bad_input_with=500)
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        report = run_stage_tests(url, golden, "child", expected_accuracy=0.95, tolerance=0.05, slo_p95_ms=2000)
    finally:
        server.shutdown()
    assert not report.passed
    assert any("accuracy" in r for r in report.reasons) and any("not 4xx" in r for r in report.reasons)


def test_sends_the_endpoint_token_with_every_request_probes_included(golden):
    """With auth on, a probe refused for its token (401) must not pass as a 4xx: the token goes with each request."""
    server = _serve(answer_bad_input_with=400, token=TOKEN)
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with_token = run_stage_tests(url, golden, "child", 0.85, 0.1, slo_p95_ms=2000, token=TOKEN)
        without = run_stage_tests(url, golden, "child", 0.85, 0.1, slo_p95_ms=2000)
    finally:
        server.shutdown()
    assert with_token.passed and set(with_token.probes.values()) == {400}, with_token.reasons
    assert not without.passed and set(without.probes.values()) == {401}
    assert sum("probe" in r and "401" in r for r in without.reasons) == len(without.probes)
