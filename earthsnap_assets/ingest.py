"""Upload a user's folder `DIR/<species>/<files>` into the raw layout, skipping what is already there."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from earthsnap_assets.lake.taxonomy import Taxonomy, parse_taxonomy
from earthsnap_assets.resources.object_store import ObjectStore

IMAGES_PREFIX = "images/"
TAXONOMY_KEY = "taxonomy.csv"


@dataclass
class IngestSummary:
    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unknown_species: list[str] = field(default_factory=list)
    taxonomy_uploaded: bool = False

    def lines(self) -> list[str]:
        out = [
            f"uploaded {self.uploaded} files ({self.bytes_uploaded / 1e6:.1f} MB), skipped {self.skipped} unchanged",
            f"taxonomy.csv {'uploaded' if self.taxonomy_uploaded else 'unchanged'}",
        ]
        if self.unknown_species:
            out.append(f"folders not in the taxonomy (QA will reject them): {', '.join(self.unknown_species)}")
        if self.ignored:
            out.append(f"ignored {len(self.ignored)} files outside DIR/<species>/: {', '.join(self.ignored[:5])}")
        out += [f"FAILED {path}: {error}" for path, error in self.failed]
        return out


def local_files(root: Path) -> tuple[dict[str, Path], list[str]]:
    """raw key -> local file for `root/<species>/<file>`; anything else is listed as ignored."""
    keys, ignored = {}, []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if len(relative.parts) != 2:
            ignored.append(str(relative))
            continue
        keys[IMAGES_PREFIX + relative.as_posix()] = path
    return keys, ignored


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _upload(store: ObjectStore, bucket: str, key: str, path: Path) -> None:
    store.write(bucket, key, path.read_bytes())  # read in the worker: memory stays at one file per thread


def ingest(store: ObjectStore, root: Path, taxonomy_csv: Path, threads: int = 16) -> IngestSummary:
    """Validate the taxonomy locally, then upload changed files in parallel; ETag (MD5) says unchanged."""
    text = taxonomy_csv.read_text(encoding="utf-8")
    taxonomy: Taxonomy = parse_taxonomy(text)  # a bad taxonomy stops here, before anything is written
    bucket = store.raw_bucket
    files, ignored = local_files(root)
    summary = IngestSummary(ignored=ignored)
    summary.unknown_species = sorted({k.split("/")[1] for k in files} - set(taxonomy.species_to_group))
    existing = {o.key: o.etag for o in store.list_objects(bucket, IMAGES_PREFIX)}
    todo = {key: path for key, path in files.items() if existing.get(key) != _md5(path)}
    summary.skipped = len(files) - len(todo)
    with ThreadPoolExecutor(threads) as pool:
        futures = {pool.submit(_upload, store, bucket, key, path): path for key, path in todo.items()}
        for future in as_completed(futures):
            path = futures[future]
            try:
                future.result()
                summary.uploaded += 1
                summary.bytes_uploaded += path.stat().st_size
            except Exception as exc:  # one failed upload must not hide the others; reported in the summary
                summary.failed.append((str(path), str(exc)))
    current = {o.key: o.etag for o in store.list_objects(bucket, TAXONOMY_KEY)}
    if current.get(TAXONOMY_KEY) != hashlib.md5(text.encode(), usedforsecurity=False).hexdigest():
        store.write(bucket, TAXONOMY_KEY, text.encode())
        summary.taxonomy_uploaded = True
    return summary
