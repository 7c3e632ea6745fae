"""Stage tests: a deployed endpoint, exercised over HTTP the way the app will use it.

Three verdicts, all required: accuracy on a held-out golden set is not below the version's own test
accuracy minus a tolerance; p95 latency is under the SLO; every bad-input probe gets a 4xx.
"""

from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from earthsnap_assets.monitoring.records import TRAFFIC_HEADER
from earthsnap_assets.serving.auth import bearer_headers


@dataclass(frozen=True)
class GoldenImage:
    data: bytes
    species: str
    group: str


@dataclass
class StageTestReport:
    passed: bool
    accuracy: float
    expected_accuracy: float
    p95_ms: float
    slo_p95_ms: float
    images: int
    probes: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


STAGE_TEST = "stage-test"  # the traffic label of every request the stage tests send


def post(
    url: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    timeout: float = 30,
    traffic: str | None = None,
    token: str | None = None,
) -> tuple[int, dict]:
    """POST bytes; returns (status, JSON body) also for 4xx/5xx answers. `traffic` names who is asking
    (`monitoring/records.TRAFFIC`): the stage tests say so, so monitoring and review leave them out.
    `token`: the endpoint's bearer token, when it requires one (`serving/auth.py`)."""
    headers = {"Content-Type": content_type, **({TRAFFIC_HEADER: traffic} if traffic else {}), **bearer_headers(token)}
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"{}")
        except json.JSONDecodeError:
            return error.code, {"raw": body[:200].decode(errors="replace")}


def _bomb_png(side: int = 50_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels: must be refused without decoding."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


BAD_INPUT_PROBES: dict[str, bytes] = {
    "empty_body": b"",
    "text_not_image": b"this is not an image, it is a sentence",
    "decompression_bomb": _bomb_png(),
    "truncated_png": _bomb_png(64)[:40],
}


def _correct(answer: dict, image: GoldenImage, scope: str) -> bool | None:
    """Top-1 correctness for what the deployed model decides; None when it does not apply."""
    best = (answer.get("top_k") or [{}])[0]
    if scope == "parent":
        return best.get("group") == image.group
    if best.get("group") != image.group:
        return None  # routed elsewhere by the parent: not this child's error
    return best.get("species") == image.species


def run_stage_tests(
    base_url: str,
    golden: Sequence[GoldenImage],
    scope: str,
    expected_accuracy: float,
    tolerance: float,
    slo_p95_ms: float,
    token: str | None = None,
) -> StageTestReport:
    """Send the golden set and the probes to `base_url`; `scope` is "parent" or "child".

    `token` goes with every request, probes included: a probe refused for want of a token (401) would pass
    as a 4xx without testing the input checks.
    """
    latencies, scores, reasons = [], [], []
    for image in golden:
        started = time.perf_counter()
        status, answer = post(f"{base_url}/predict?top_k=5", image.data, traffic=STAGE_TEST, token=token)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 200:
            reasons.append(f"golden image answered {status}: {answer}")
            scores.append(False)
            continue
        verdict = _correct(answer, image, scope)
        if verdict is not None:
            scores.append(verdict)
    accuracy = float(np.mean(scores)) if scores else 0.0
    p95 = float(np.percentile(latencies, 95)) if latencies else float("inf")
    probes = {
        name: post(f"{base_url}/predict", data, traffic=STAGE_TEST, token=token)[0]
        for name, data in BAD_INPUT_PROBES.items()
    }
    if accuracy < expected_accuracy - tolerance:
        reasons.append(f"accuracy {accuracy:.3f} < expected {expected_accuracy:.3f} - tolerance {tolerance:.3f}")
    if p95 > slo_p95_ms:
        reasons.append(f"p95 latency {p95:.1f} ms > SLO {slo_p95_ms:.1f} ms")
    reasons += [  # 401: refused for its token (see `token`), the input checks were not reached
        f"probe {name} answered {status}, not 4xx from the input checks"
        for name, status in probes.items()
        if not 400 <= status < 500 or status == 401
    ]
    return StageTestReport(
        passed=not reasons,
        accuracy=accuracy,
        expected_accuracy=expected_accuracy,
        p95_ms=p95,
        slo_p95_ms=slo_p95_ms,
        images=len(golden),
        probes=probes,
        reasons=reasons,
    )
