"""Near-duplicate clusters by perceptual hash, so look-alike photos never straddle splits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

BANDS = 4  # 64-bit hash in 4 bands of 16 bits: two hashes within 3 bits share at least one band exactly


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def near_duplicate_pairs(hashes: Sequence[str], max_bits: int) -> list[tuple[int, int]]:
    """Index pairs whose hashes differ in at most `max_bits` bits (exact for max_bits < BANDS).

    Banding makes this near-linear: only hashes that agree on a whole 16-bit band are compared.
    """
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, value in enumerate(hashes):
        number = int(value, 16)
        for band in range(BANDS):
            buckets[(band, (number >> (16 * band)) & 0xFFFF)].append(index)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                if (a, b) not in pairs and hamming(hashes[a], hashes[b]) <= max_bits:
                    pairs.add((a, b))
    return sorted(pairs)


def cluster_ids(names: Sequence[str], hashes: Sequence[str], max_bits: int) -> list[str]:
    """Each item's cluster, named by the smallest name in it (stable when unrelated items arrive)."""
    union = _UnionFind(len(names))
    for a, b in near_duplicate_pairs(hashes, max_bits):
        union.union(a, b)
    smallest: dict[int, str] = {}
    for index, name in enumerate(names):
        root = union.find(index)
        smallest[root] = min(smallest.get(root, name), name)
    return [smallest[union.find(i)] for i in range(len(names))]
