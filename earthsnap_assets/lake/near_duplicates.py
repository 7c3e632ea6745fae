"""Near-duplicates by 64-bit difference hash, vectorised: look-alike photos never straddle splits.

A dHash is cut into 4 bands of 16 bits. Two hashes within 3 bits of each other agree exactly on at least
one band (pigeonhole), so comparing only hashes that share a band value is exact for `max_bits < 4`, and
with the bands sorted, finding the candidates of many new hashes is `searchsorted` plus XOR and popcount
in numpy: no Python loop per pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BANDS = 4
BAND_BITS = 16
MAX_EXACT_BITS = BANDS - 1


def band_values(hashes: np.ndarray, band: int) -> np.ndarray:
    return ((hashes.astype(np.uint64) >> np.uint64(BAND_BITS * band)) & np.uint64(0xFFFF)).astype(np.uint16)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64)))


def _check_bits(max_bits: int) -> None:
    if not 0 <= max_bits <= MAX_EXACT_BITS:
        raise ValueError(f"max_bits must be 0..{MAX_EXACT_BITS}: banded search is exact only below {BANDS} bits")


MAX_CANDIDATES = 4_000_000  # candidate pairs compared at once: bounds memory when many hashes share a band


def _candidate_chunks(probe_bands: np.ndarray, sorted_bands: np.ndarray):
    """(probe index, position in the sorted array) of every pair sharing a band value, in bounded chunks.

    Flat or blank photos all hash alike, so one band value can hold many hashes; chunking keeps the pairs
    compared at once under `MAX_CANDIDATES` whatever the distribution.
    """
    lo = np.searchsorted(sorted_bands, probe_bands, side="left")
    counts = np.searchsorted(sorted_bands, probe_bands, side="right") - lo
    start = 0
    while start < len(probe_bands):
        total = np.cumsum(counts[start:])
        stop = start + max(1, int(np.searchsorted(total, MAX_CANDIDATES, side="right")))
        chunk = counts[start:stop]
        probes = np.repeat(np.arange(start, stop), chunk)
        offsets = np.repeat(lo[start:stop] - np.concatenate(([0], np.cumsum(chunk)[:-1])), chunk)
        yield probes, offsets + np.arange(int(chunk.sum()))
        start = stop


def probe(new: np.ndarray, existing: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (new index, existing index, distance) within `max_bits`, each pair once.

    Each band of `existing` is sorted once, so probing many new hashes costs O((n + m) log m + candidates).
    """
    return probe_bands(new, existing, max_bits, range(BANDS))


def probe_bands(new: np.ndarray, existing: np.ndarray, max_bits: int, bands) -> tuple[np.ndarray, ...]:
    """`probe` restricted to candidates that share one of `bands` (a band index bucket holds one band)."""
    _check_bits(max_bits)
    new, existing = np.asarray(new, np.uint64), np.asarray(existing, np.uint64)
    found_new, found_old = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for band in bands:
        values = band_values(existing, band)
        order = np.argsort(values, kind="stable")
        for probes, positions in _candidate_chunks(band_values(new, band), values[order]):
            candidates = order[positions]
            close = hamming(new[probes], existing[candidates]) <= max_bits
            found_new.append(probes[close])
            found_old.append(candidates[close])
    return _unique_pairs(np.concatenate(found_new), np.concatenate(found_old), new, existing)


def _unique_pairs(a: np.ndarray, b: np.ndarray, left: np.ndarray, right: np.ndarray):
    if not len(a):
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    a, b = pairs[:, 0], pairs[:, 1]
    return a, b, hamming(left[a], right[b]).astype(np.int64)


def pairs_within(hashes: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of one set within `max_bits` of each other."""
    hashes = np.asarray(hashes, np.uint64)
    a, b, _ = probe(hashes, hashes, max_bits)
    keep = a < b
    return a[keep], b[keep]


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes and edges (a, b): each node's component root (its smallest index).

    scipy's csgraph labels them in C: a big cluster of look-alikes (flat or blank photos) brings millions of
    edges, which a Python union-find loop took minutes over.
    """
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (np.asarray(a, np.int64), np.asarray(b, np.int64))), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


def cluster_names(names: Sequence[str], hashes: np.ndarray, max_bits: int) -> list[str]:
    """Each item's cluster, named by the smallest name in it (stable when unrelated items arrive)."""
    a, b = pairs_within(np.asarray(hashes, np.uint64), max_bits)
    roots = components(len(names), a, b)
    smallest: dict[int, str] = {}
    for root, name in zip(roots.tolist(), names, strict=True):
        smallest[root] = min(smallest.get(root, name), name)
    return [smallest[root] for root in roots.tolist()]
