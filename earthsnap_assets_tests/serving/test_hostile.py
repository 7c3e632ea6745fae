"""Hostile clients against a real uvicorn (issue 13): routing errors as JSON, stalled bodies, huge headers,
costly images, and more concurrent decodes than allowed. No stack: no model is loaded, the deployment's
bundle is a stand-in, and the tests stop before (or fake) the forward pass.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from starlette.testclient import TestClient

from earthsnap_assets.lake.storage import MemoryBlobs
from earthsnap_assets.serving import app as app_module
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.inputs import InputError, decode_cost, prepare
from earthsnap_assets.serving.production import Lake
from earthsnap_assets_tests.serving.helpers import GREEN, IMAGE_SIZE, photo, serving


class NoRegistry:
    """Every registry call fails: the deployment keeps the bundle a test puts in."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"no registry in these tests ({name})")

        return refuse


@contextlib.contextmanager
def endpoint(tmp_path: Path, **overrides: Any) -> Iterator[str]:
    """The endpoint under uvicorn (with its `server_options`), a stand-in bundle of IMAGE_SIZE as current."""
    values: dict[str, Any] = {"poll_interval_s": 3600.0, "log_predictions": False, "spool_dir": str(tmp_path)}
    config = ServeConfig(**{**values, **overrides})
    app = create_app("staging", registry=NoRegistry(), config=config, lake=Lake(MemoryBlobs(), "lake"))
    with serving(app) as url:
        app.state.deployment._current = SimpleNamespace(image_size=IMAGE_SIZE)
        yield url


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or stops sending for the socket's timeout)."""
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def sixteen_bit_png(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG (Pillow mode I;16) of a large blank canvas: a few tens of KB."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def test_routing_errors_are_json(tmp_path: Path) -> None:
    with endpoint(tmp_path) as url:
        missing = requests.get(f"{url}/no-such-route", timeout=10)
        wrong_method = requests.get(f"{url}/predict", timeout=10)
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    assert missing.json() == {"error": "Not Found"}
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}
    assert wrong_method.headers["allow"] == "POST"


def test_stalled_body_gets_408_and_does_not_block_others(tmp_path: Path) -> None:
    with endpoint(tmp_path, body_timeout_s=1.0) as url:
        stalled = socket.create_connection(address(url), timeout=15)
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        stalled.sendall(head + b"\xff\xd8" + b"x" * 500)  # then nothing more
        started = time.monotonic()
        assert requests.get(f"{url}/health", timeout=5).status_code == 200  # served meanwhile
        response = read_response(stalled)
        elapsed = time.monotonic() - started
        stalled.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b'"error":"body not received within 1 s' in response
    assert elapsed < 10.0  # 1 s deadline, generous margin for a busy machine


def test_trickled_body_gets_408_the_deadline_is_for_the_whole_body(tmp_path: Path) -> None:
    """A byte every 0.1 s never stalls a read for long: only a total deadline stops it."""
    with endpoint(tmp_path, body_timeout_s=1.0) as url:
        trickle = socket.create_connection(address(url), timeout=15)
        trickle.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        stop = threading.Event()

        def drip() -> None:
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    trickle.sendall(b"x")
                    time.sleep(0.1)

        dripping = threading.Thread(target=drip, daemon=True)
        started = time.monotonic()
        dripping.start()
        try:
            first = trickle.recv(65536)  # blocks until the server answers (or 15 s)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            dripping.join(5)
            trickle.close()
    assert first.startswith(b"HTTP/1.1 408"), first[:200]
    assert elapsed < 10.0  # would run for 10000 s of dripping without a total deadline


def test_huge_headers_are_refused_normal_ones_pass(tmp_path: Path) -> None:
    """100 KB of headers: refused by h11 (400, close) if the head comes in several reads, else by the app (431)."""
    with endpoint(tmp_path) as url:  # default max_header_bytes: 16 KiB
        assert requests.get(f"{url}/health", headers={"X-Pad": "a" * 8000}, timeout=10).status_code == 200
        huge = socket.create_connection(address(url), timeout=15)
        pads = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
        with contextlib.suppress(OSError):  # the server may close while we still send
            huge.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + pads + b"\r\n")
        response = read_response(huge)
        huge.close()
        assert requests.get(f"{url}/health", timeout=10).status_code == 200  # the server is fine
    assert response.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")) or response == b"", response[:200]
    assert b"alive" not in response
    if response.startswith(b"HTTP/1.1 431"):
        assert b'"error":"request headers of ' in response


def test_whole_oversized_head_is_a_431_json(tmp_path: Path) -> None:
    """What h11 lets through when the head arrives in one read, the app refuses (in-process: no socket reads)."""
    config = ServeConfig(poll_interval_s=3600.0, log_predictions=False, spool_dir=str(tmp_path))
    app = create_app("staging", registry=NoRegistry(), config=config, lake=Lake(MemoryBlobs(), "lake"))
    with TestClient(app) as client:
        assert client.get("/health", headers={"X-Pad": "a" * 15000}).status_code == 200
        refused = client.get("/health", headers={"X-Pad": "a" * 17000})
    assert refused.status_code == 431 and refused.headers["connection"] == "close"
    assert "larger than the limit of 16384 bytes" in refused.json()["error"]


def test_incomplete_huge_head_is_cut_by_uvicorn(tmp_path: Path) -> None:
    """Headers that keep coming without an end: h11 refuses once its buffer passes `max_header_bytes`."""
    with endpoint(tmp_path, max_header_bytes=4096) as url:
        endless = socket.create_connection(address(url), timeout=15)
        with contextlib.suppress(OSError):  # the server may close while we still send
            endless.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            for i in range(10):
                endless.sendall(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000))  # never the blank line
                time.sleep(0.05)
        response = read_response(endless)
        endless.close()
    # uvicorn's answer to h11's "Receive buffer too long": plain-text 400 and close (no 431 at this level)
    assert response.startswith(b"HTTP/1.1 400"), response[:200]


def test_decode_cost_comes_from_the_header() -> None:
    big16 = sixteen_bit_png(6300, 6300)
    assert len(big16) < 200_000  # a small file...
    cost, pixels, mode = decode_cost(big16, 224)
    assert (pixels, mode) == (6300 * 6300, "I;16") and cost > ServeConfig().max_decode_bytes  # ...a costly decode
    phone = io.BytesIO()
    Image.new("RGB", (7000, 5000), GREEN).save(phone, "JPEG")  # 35 MP, within QA's 40 MP
    cost, pixels, mode = decode_cost(phone.getvalue(), 224)
    assert pixels < 7000 * 5000 // 16 and cost < ServeConfig().max_decode_bytes  # libjpeg decodes it at 1/8 scale


def test_costly_image_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded")

    rules = ServeConfig().rules
    big16 = sixteen_bit_png(6300, 6300)
    monkeypatch.setattr("earthsnap_assets.serving.inputs.load_image_array", no_decoding)
    with pytest.raises(InputError) as refused:
        prepare(big16, IMAGE_SIZE, rules, ServeConfig().max_decode_bytes)
    assert refused.value.status == 413 and "MiB" in refused.value.message
    monkeypatch.undo()
    assert prepare(photo(GREEN, size=(3000, 2000)), IMAGE_SIZE, rules, ServeConfig().max_decode_bytes).width == 3000
    small16 = sixteen_bit_png(600, 400)
    assert prepare(small16, IMAGE_SIZE, rules, ServeConfig().max_decode_bytes).pixels.shape == (1, 3, 64, 64)


def test_costly_image_is_a_413_over_http(tmp_path: Path) -> None:
    with endpoint(tmp_path) as url:
        response = requests.post(f"{url}/predict", data=sixteen_bit_png(6300, 6300), timeout=30)
    assert response.status_code == 413, response.text
    assert "not decoded" in response.json()["error"]


class SlowPrepare:
    """A stand-in for `prepare` that holds its worker thread and records how many run at once."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.running = self.most = self.calls = 0
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any) -> Any:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        self.started.set()
        try:
            if self.hold_s:
                time.sleep(self.hold_s)
            else:
                self.release.wait(30)
            raise InputError(422, "fake prepare")
        finally:
            with self.lock:
                self.running -= 1


def test_decodes_never_exceed_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = SlowPrepare(hold_s=0.2)
    monkeypatch.setattr(app_module, "prepare", slow)
    config = {"max_concurrent_decodes": 1, "decode_queue_timeout_s": 60.0}
    with endpoint(tmp_path, **config) as url, ThreadPoolExecutor(4) as pool:
        statuses = list(
            pool.map(lambda _: requests.post(f"{url}/predict", data=photo(GREEN), timeout=60).status_code, range(4))
        )
    assert statuses == [422] * 4 and slow.calls == 4
    assert slow.most == 1


def test_waiting_too_long_for_a_decode_slot_is_a_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = SlowPrepare()  # holds its slot until released
    monkeypatch.setattr(app_module, "prepare", slow)
    config = {"max_concurrent_decodes": 1, "decode_queue_timeout_s": 0.5}
    with endpoint(tmp_path, **config) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(requests.post, f"{url}/predict", data=photo(GREEN), timeout=60)
        assert slow.started.wait(30)
        second = requests.post(f"{url}/predict", data=photo(GREEN), timeout=30)
        slow.release.set()
        assert first.result().status_code == 422
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "busy" in second.json()["error"]
    assert slow.calls == 1
