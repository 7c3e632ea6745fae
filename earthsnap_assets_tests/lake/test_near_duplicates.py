"""Vectorised near-duplicate search: it must agree exactly with brute force, in bounded memory."""

import numpy as np
import pytest

from earthsnap_assets.lake import near_duplicates as nd


def _flip(value: int, bits) -> int:
    for bit in bits:
        value ^= 1 << int(bit)
    return value


def _case(rng: np.random.Generator, n: int = 12, relatives: int = 20) -> np.ndarray:
    """Random 64-bit hashes plus relatives of some of them 0..5 bits away (random bit positions, any band)."""
    values = [int(rng.integers(0, 2**63)) for _ in range(n)]
    for _ in range(relatives):
        parent = values[int(rng.integers(0, len(values)))]
        values.append(_flip(parent, rng.choice(64, size=int(rng.integers(0, 6)), replace=False)))
    return np.array(values, dtype=np.uint64)


def _brute(new: np.ndarray, old: np.ndarray, bits: int) -> set[tuple[int, int]]:
    return {
        (i, j) for i in range(len(new)) for j in range(len(old)) if bin(int(new[i]) ^ int(old[j])).count("1") <= bits
    }


@pytest.mark.parametrize("max_bits", [0, 1, 2, 3])
def test_probe_agrees_with_brute_force(max_bits):
    rng = np.random.default_rng(1234 + max_bits)
    seen = 0
    for _ in range(100):
        old, new = _case(rng), _case(rng, n=4, relatives=8)
        new[: len(new) // 2] = [
            _flip(int(v), rng.choice(64, size=max_bits, replace=False)) for v in old[: len(new) // 2]
        ]
        a, b, distance = nd.probe(new, old, max_bits)
        expected = _brute(new, old, max_bits)
        assert set(zip(a.tolist(), b.tolist(), strict=True)) == expected
        assert all(int(d) <= max_bits for d in distance)
        seen += len(expected)
    assert seen > 100  # the cases really contain near-duplicates


def test_chunked_candidates_give_the_same_pairs(monkeypatch):
    rng = np.random.default_rng(7)
    old = _case(rng, 200, 300)
    new = old[::3].copy()
    whole = nd.probe(new, old, 3)
    monkeypatch.setattr(nd, "MAX_CANDIDATES", 5)
    chunked = nd.probe(new, old, 3)
    assert all(np.array_equal(x, y) for x, y in zip(whole, chunked, strict=True))


def test_identical_flat_photo_hashes_are_all_pairs_without_blowing_up_memory(monkeypatch):
    monkeypatch.setattr(nd, "MAX_CANDIDATES", 1000)
    hashes = np.zeros(300, dtype=np.uint64)  # blank photos all hash to 0
    a, _b = nd.pairs_within(hashes, 3)
    assert len(a) == 300 * 299 // 2


def test_clusters_are_named_by_their_smallest_member_and_stable_when_unrelated_items_arrive():
    base = 0x0123456789ABCDEF
    hashes = np.array([base, _flip(base, [1]), _flip(base, [1, 20]), 0xFEDCBA9876543210], dtype=np.uint64)
    names = ["s3", "s1", "s2", "s9"]
    assert nd.cluster_names(names, hashes, 3) == ["s1", "s1", "s1", "s9"]  # a chain joins through its middle
    more = np.append(hashes, np.uint64(0x00000000FFFFFFFF))
    assert nd.cluster_names([*names, "s0"], more, 3)[:4] == ["s1", "s1", "s1", "s9"]


def test_more_than_three_bits_is_refused():
    with pytest.raises(ValueError, match="exact only below 4"):
        nd.probe(np.zeros(1, np.uint64), np.zeros(1, np.uint64), 4)
