"""Content hashes that make versions: stable across runs, machines and dict orderings."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: equal values always give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def fingerprint(value: Any, length: int = 16) -> str:
    """Short sha256 of a JSON-able value, for names of versions and caches."""
    return hashlib.sha256(canonical_json(value)).hexdigest()[:length]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
