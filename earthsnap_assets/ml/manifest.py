"""The validated manifest: which objects become training data, which are rejected and why.

Pure function of (object listing, per-object QA results, taxonomy, rules). Its `dataset_version` is a
content hash of the accepted data and the rules, so the same objects under the same rules always give
the same version, on any machine.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from earthsnap_assets.ml.hashing import canonical_json, fingerprint
from earthsnap_assets.ml.near_duplicates import cluster_ids, near_duplicate_pairs
from earthsnap_assets.ml.quality import ImageCheck, QualityRules
from earthsnap_assets.ml.taxonomy import Taxonomy


@dataclass(frozen=True)
class RawObject:
    """One object under the raw prefix, as listed: identity is key + ETag."""

    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class ManifestEntry:
    uri: str
    key: str
    etag: str
    sha256: str
    species: str
    group: str
    size: int
    format: str
    width: int
    height: int
    dhash: str
    cluster: str


@dataclass(frozen=True)
class Rejection:
    uri: str
    key: str
    etag: str
    reason: str
    detail: str


@dataclass
class Manifest:
    dataset_version: str
    source: dict
    rules: dict
    taxonomy: dict
    accepted: list[ManifestEntry]
    rejected: list[Rejection]
    report: dict = field(default_factory=dict)

    def files(self) -> dict[str, bytes]:
        """The manifest as stored under `manifests/<dataset_version>/`: byte-identical for equal content."""
        accepted = b"".join(canonical_json(asdict(e)) + b"\n" for e in self.accepted)
        rejected = b"".join(canonical_json(asdict(r)) + b"\n" for r in self.rejected)
        header = {
            "dataset_version": self.dataset_version,
            "source": self.source,
            "rules": self.rules,
            "taxonomy": self.taxonomy,
            "files": {"accepted": "accepted.jsonl", "rejected": "rejected.jsonl", "report": "qa_report.json"},
            "counts": {"accepted": len(self.accepted), "rejected": len(self.rejected)},
        }
        return {
            "manifest.json": json.dumps(header, indent=2, sort_keys=True).encode(),
            "accepted.jsonl": accepted,
            "rejected.jsonl": rejected,
            "qa_report.json": json.dumps(self.report, indent=2, sort_keys=True).encode(),
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> Manifest:
        header = json.loads(files["manifest.json"])
        lines = lambda name: [json.loads(x) for x in files[name].splitlines() if x.strip()]  # noqa: E731
        return cls(
            dataset_version=header["dataset_version"],
            source=header["source"],
            rules=header["rules"],
            taxonomy=header["taxonomy"],
            accepted=[ManifestEntry(**e) for e in lines("accepted.jsonl")],
            rejected=[Rejection(**r) for r in lines("rejected.jsonl")],
            report=json.loads(files["qa_report.json"]),
        )


def species_of(key: str, prefix: str) -> str | None:
    """`<prefix><species>/<file>` -> species; None for anything not in that layout."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    parts = PurePosixPath(rest).parts
    return parts[0] if len(parts) == 2 and not rest.startswith("/") else None


def dataset_version(accepted: list[ManifestEntry], rules: QualityRules, taxonomy: Taxonomy) -> str:
    """Content hash of what training sees: accepted (key, content, label), the rules and the taxonomy."""
    content = sorted((e.key, e.sha256, e.species) for e in accepted)
    return "dv-" + fingerprint({"rules": rules.fingerprint(), "taxonomy": taxonomy.fingerprint(), "data": content})


def _label_candidates(objects, checks, taxonomy, bucket, prefix):
    """Per-object and label rules: returns (candidates as (object, check, species), rejections)."""
    candidates, rejected = [], []
    for obj in sorted(objects, key=lambda o: o.key):
        uri = f"s3://{bucket}/{obj.key}"
        check = checks[(obj.key, obj.etag)]
        species = species_of(obj.key, prefix)
        if species is None:
            rejected.append(Rejection(uri, obj.key, obj.etag, "bad_layout", f"not under {prefix}<species>/<file>"))
        elif not check.ok:
            rejected.append(Rejection(uri, obj.key, obj.etag, check.reason or "rejected", check.detail or ""))
        elif species not in taxonomy.species_to_group:
            rejected.append(Rejection(uri, obj.key, obj.etag, "unknown_species", f"{species!r} is not in taxonomy.csv"))
        else:
            candidates.append((obj, check, species))
    return candidates, rejected


def _drop_exact_duplicates(candidates, bucket):
    """Same bytes twice: keep the first key; same bytes under two species: reject every copy."""
    by_hash = defaultdict(list)
    for item in candidates:
        by_hash[item[1].sha256].append(item)
    kept, rejected = [], []
    for items in by_hash.values():
        species = sorted({s for _, _, s in items})
        first = items[0][0].key
        for index, (obj, _check, _) in enumerate(items):
            uri = f"s3://{bucket}/{obj.key}"
            if len(species) > 1:
                others = ", ".join(o.key for o, _, _ in items if o.key != obj.key)
                detail = f"same content under species {species}: {others}"
                rejected.append(Rejection(uri, obj.key, obj.etag, "conflicting_labels", detail))
            elif index > 0:
                rejected.append(Rejection(uri, obj.key, obj.etag, "duplicate", f"same content as {first}"))
            else:
                kept.append(items[index])
    return sorted(kept, key=lambda item: item[0].key), rejected


def build_manifest(
    objects: list[RawObject],
    checks: dict[tuple[str, str], ImageCheck],
    taxonomy: Taxonomy,
    rules: QualityRules,
    bucket: str,
    prefix: str,
) -> Manifest:
    """Apply the collection rules on top of per-object checks and version the result."""
    candidates, rejected = _label_candidates(objects, checks, taxonomy, bucket, prefix)
    kept, duplicates = _drop_exact_duplicates(candidates, bucket)
    rejected = sorted(rejected + duplicates, key=lambda r: r.key)
    hashes = [check.dhash or "0" * 16 for _, check, _ in kept]
    clusters = cluster_ids([check.sha256 for _, check, _ in kept], hashes, rules.near_duplicate_bits)
    accepted = [
        ManifestEntry(
            uri=f"s3://{bucket}/{obj.key}",
            key=obj.key,
            etag=obj.etag,
            sha256=check.sha256,
            species=species,
            group=taxonomy.species_to_group[species],
            size=check.size,
            format=check.format or "",
            width=check.width or 0,
            height=check.height or 0,
            dhash=check.dhash or "",
            cluster=cluster,
        )
        for (obj, check, species), cluster in zip(kept, clusters, strict=True)
    ]
    version = dataset_version(accepted, rules, taxonomy)
    return Manifest(
        dataset_version=version,
        source={"bucket": bucket, "prefix": prefix},
        rules=asdict(rules),
        taxonomy=taxonomy.to_json(),
        accepted=accepted,
        rejected=rejected,
        report=qa_report(accepted, rejected, taxonomy, rules, hashes),
    )


def qa_report(accepted, rejected, taxonomy: Taxonomy, rules: QualityRules, hashes: list[str]) -> dict:
    """Counts a person reviews before trusting a dataset version."""
    per_species = Counter(e.species for e in accepted)
    total = len(accepted) + len(rejected)
    cluster_sizes = Counter(e.cluster for e in accepted)
    cross = [
        (accepted[a].key, accepted[b].key)
        for a, b in near_duplicate_pairs(hashes, rules.near_duplicate_bits)
        if accepted[a].species != accepted[b].species
    ]
    return {
        "objects": total,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rejection_rate": round(len(rejected) / total, 6) if total else 0.0,
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejected).items())),
        "images_per_species": {s: per_species.get(s, 0) for s in taxonomy.species_to_group},
        "images_per_group": dict(sorted(Counter(e.group for e in accepted).items())),
        "species_below_minimum": sorted(
            s for s in taxonomy.species_to_group if per_species.get(s, 0) < rules.min_images_per_species
        ),
        "near_duplicate_clusters": sum(1 for n in cluster_sizes.values() if n > 1),
        "images_in_near_duplicate_clusters": sum(n for n in cluster_sizes.values() if n > 1),
        "near_duplicates_across_species": [list(pair) for pair in cross[:50]],
        "formats": dict(sorted(Counter(e.format for e in accepted).items())),
        "accepted_bytes": sum(e.size for e in accepted),
    }
