"""Serve an app under a real uvicorn in a background thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serving_in_thread(app: Any, start_timeout: float = 30.0) -> Iterator[str]:
    """Run `app` on a free port of 127.0.0.1 and yield its base URL; stopped on exit.

    An app of `create_app` runs with its `ServeConfig.server_options` (header size limit), as the CLI runs it.
    """
    import uvicorn

    config = getattr(getattr(app, "state", None), "config", None)
    options = config.server_options() if hasattr(config, "server_options") else {}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(start_timeout)
        sock.close()
