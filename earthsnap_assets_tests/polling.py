"""Waiting for something another process does, with a deadline."""

import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll `check()` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
