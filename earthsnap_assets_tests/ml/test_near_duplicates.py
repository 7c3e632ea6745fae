"""Near-duplicate search and clusters: the banded search must agree exactly with brute force."""

import numpy as np
import pytest

from earthsnap_assets.ml.near_duplicates import cluster_ids, hamming, near_duplicate_pairs


def _hex(value: int) -> str:
    return f"{value:016x}"


def _flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def _brute_force(hashes: list[str], max_bits: int) -> list[tuple[int, int]]:
    return [
        (a, b)
        for a in range(len(hashes))
        for b in range(a + 1, len(hashes))
        if bin(int(hashes[a], 16) ^ int(hashes[b], 16)).count("1") <= max_bits
    ]


def _random_case(rng: np.random.Generator) -> list[str]:
    """Random 64-bit hashes plus relatives of some of them 0..5 bits away (random bit positions, any band)."""
    values = [int(rng.integers(0, 2**32)) << 32 | int(rng.integers(0, 2**32)) for _ in range(int(rng.integers(1, 12)))]
    for _ in range(int(rng.integers(0, 20))):
        parent = values[int(rng.integers(0, len(values)))]
        values.append(_flip(parent, [int(b) for b in rng.choice(64, size=int(rng.integers(0, 6)), replace=False)]))
    order = rng.permutation(len(values))
    return [_hex(values[i]) for i in order]


def test_hamming_counts_differing_bits():
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2


@pytest.mark.parametrize("max_bits", [0, 1, 2, 3])
def test_banded_search_agrees_with_brute_force_on_random_hashes(max_bits):
    rng = np.random.default_rng(1234 + max_bits)
    pairs_seen = 0
    for _ in range(300):
        hashes = _random_case(rng)
        expected = _brute_force(hashes, max_bits)
        assert near_duplicate_pairs(hashes, max_bits) == expected, hashes
        pairs_seen += len(expected)
    assert pairs_seen > 300  # the cases really contain near-duplicates, not just unrelated hashes


@pytest.mark.parametrize("distance", [0, 1, 2, 3, 4])
def test_pair_exactly_n_bits_apart_is_found_only_within_the_limit(distance):
    rng = np.random.default_rng(distance)
    for _ in range(200):
        base = int(rng.integers(0, 2**32)) << 32 | int(rng.integers(0, 2**32))
        other = _flip(base, [int(b) for b in rng.choice(64, size=distance, replace=False)])
        found = near_duplicate_pairs([_hex(base), _hex(other)], 3)
        assert found == ([(0, 1)] if distance <= 3 else [])


def test_three_bits_in_three_different_bands_are_found_through_the_fourth_band():
    base = 0x0123_4567_89AB_CDEF
    other = _flip(base, [0, 16, 32])  # bands 0, 1 and 2 differ; only band 3 is shared
    assert near_duplicate_pairs([_hex(base), _hex(other)], 3) == [(0, 1)]


def test_identical_hashes_pair_up_once():
    assert near_duplicate_pairs(["00000000000000ff"] * 3, 0) == [(0, 1), (0, 2), (1, 2)]


def test_chain_of_near_duplicates_is_one_cluster_even_when_its_ends_are_far_apart():
    a = 0xF0F0_F0F0_0F0F_0F0F
    b = _flip(a, [1, 20, 40])
    c = _flip(b, [5, 25, 45])
    assert hamming(_hex(a), _hex(c)) == 6
    names = ["sha-m", "sha-c", "sha-x"]
    assert cluster_ids(names, [_hex(a), _hex(b), _hex(c)], 3) == ["sha-c", "sha-c", "sha-c"]


def test_clusters_are_named_by_their_smallest_name_and_singletons_by_their_own():
    base = 0x1111_2222_3333_4444
    hashes = [_hex(base), _hex(~base & (2**64 - 1)), _hex(_flip(base, [7]))]
    assert cluster_ids(["zeta", "beta", "alpha"], hashes, 3) == ["alpha", "beta", "alpha"]


def test_cluster_names_do_not_depend_on_input_order():
    rng = np.random.default_rng(7)
    hashes = _random_case(rng) + _random_case(rng)
    names = [f"sha{i:03d}" for i in range(len(hashes))]
    clusters = dict(zip(names, cluster_ids(names, hashes, 3), strict=True))
    order = rng.permutation(len(names))
    shuffled = cluster_ids([names[i] for i in order], [hashes[i] for i in order], 3)
    assert shuffled == [clusters[names[i]] for i in order]


def test_cluster_ids_match_connected_components_of_brute_force_pairs():
    rng = np.random.default_rng(99)
    for _ in range(100):
        hashes = _random_case(rng)
        names = [f"n{i:02d}" for i in range(len(hashes))]
        component = list(range(len(hashes)))  # naive label propagation as the reference
        changed = True
        while changed:
            changed = False
            for a, b in _brute_force(hashes, 3):
                low = min(component[a], component[b])
                if component[a] != low or component[b] != low:
                    component[a] = component[b] = low
                    changed = True
        # names ascend with the index, so a component's smallest name is that of its smallest index
        assert cluster_ids(names, hashes, 3) == [names[root] for root in component]
