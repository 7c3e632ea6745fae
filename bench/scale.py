"""How the data side scales: cost per run against N (all photos), dN (new ones) and G (groups).

Two parts, each printing one JSON object on stdout (progress on stderr):

  pixels    real small JPEGs (~96 px) through the real steps, N = 10^4, 3x10^4, 10^5 with ~500 photos per
            group (20, 60, 200 groups), each N in a fresh process; per step: seconds and peak RSS of the
            first run, a no-change run, and a run after dN = 1,000 new photos in one group
  metadata  the metadata path at app scale without pixels (per-object QA results injected into the object
            tables): N = 10^6 and 10^7 rows in 500 groups, then dN = 10^5 new rows over all groups: object
            tables, global checks (content table, near-duplicates, splits), manifests, dataset version and
            the parent's sample selection; plus a near-duplicate probe of 10^5 new hashes against 10^7

Every step of a run executes in a forked child process, so its peak RSS is its own (ru_maxrss of the child;
the parent's imports, about 100 MB, are in every figure). The lake is a directory on local disk
(`bench/local_blobs.py`), so figures are the steps' own, not S3's.

    .venv/bin/python bench/scale.py pixels                # ~25 min on 2 cores
    .venv/bin/python bench/scale.py pixels --sizes 10000  # one size
    .venv/bin/python bench/scale.py metadata              # ~15 min on 2 cores
    .venv/bin/python bench/scale.py metadata --sizes 1000000
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_blobs import LocalBlobs

from earthsnap_assets.lake import paths
from earthsnap_assets.lake.changes import append_batch
from earthsnap_assets.lake.events import RawEvent
from earthsnap_assets.lake.taxonomy import Taxonomy

PHOTOS_PER_GROUP = 500
SPECIES_PER_GROUP = 4


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "loadavg_1m": round(os.getloadavg()[0], 2)}


# --- a step in its own process ------------------------------------------------------------------------------


def _child(step: Callable[[], dict], conn) -> None:
    started = time.perf_counter()
    try:
        out = step() or {}
        error = None
    except BaseException as exc:  # reported to the parent, which fails the benchmark
        out, error = {}, f"{type(exc).__name__}: {exc}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send({"seconds": time.perf_counter() - started, "peak_rss_mb": round(rss, 1), "error": error, **out})
    conn.close()


def measured(step: Callable[[], dict]) -> dict:
    """Run `step` in a forked child: its wall time and peak RSS, whatever it returns."""
    parent, child = mp.get_context("fork").Pipe(duplex=False)
    process = mp.get_context("fork").Process(target=_child, args=(step, child))
    process.start()
    result = parent.recv()
    process.join()
    if result["error"]:
        raise RuntimeError(result["error"])
    return result


def summary(runs: list[dict]) -> dict:
    return {
        "steps": len(runs),
        "seconds": round(sum(r["seconds"] for r in runs), 3),
        "max_step_seconds": round(max((r["seconds"] for r in runs), default=0.0), 3),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in runs), default=0.0),
    }


# --- the photos ------------------------------------------------------------------------------------------


def taxonomy(groups: int) -> Taxonomy:
    return Taxonomy({f"g{g:03d}-s{s}": f"g{g:03d}" for g in range(groups) for s in range(SPECIES_PER_GROUP)})


def small_jpeg(rng: np.random.Generator, species: int) -> bytes:
    """~96 px photo-like JPEG: a coloured blob on a random low-frequency background (cheap to make, real
    to decode). The background is what makes photos tell apart under dHash as real ones do: blobs on plain
    gradients all hash alike, so every photo had thousands of look-alikes and the checks measured that."""
    from PIL import Image, ImageDraw

    width, height = 96 + int(rng.integers(0, 32)), 96
    grid = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    image = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in (np.array([60, 120, 200]) * (species % 3 + 1) // 3 + rng.integers(0, 40, 3)) % 256)
    x, y = (int(v) for v in rng.integers(0, 60, 2))
    draw.ellipse([x, y, x + 30 + species * 4, y + 30], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def upload(blobs: LocalBlobs, tax: Taxonomy, per_group: dict[str, int], seed: int, tag: str) -> int:
    """Write photos into the raw bucket and their events into the change logs (what the sensor does)."""
    rng = np.random.default_rng(seed)
    total, now = 0, time.time_ns()
    for group, count in per_group.items():
        species = tax.species_in(group)
        events = []
        for i in range(count):
            name = species[i % len(species)]
            key = f"images/{name}/{tag}-{i:06d}.jpg"
            data = small_jpeg(rng, i % len(species))
            blobs.write("raw", key, data)
            events.append(RawEvent(key, "put", None, len(data), now + i, "bench"))
        append_batch(blobs, "lake", group, events)
        total += count
    return total


def pixel_steps(root: Path, tax: Taxonomy, groups: list[str]) -> dict:
    """One run of the data side, as automation would run it for `groups`: per step, per group, measured."""
    from earthsnap_assets.lake.content import check_groups
    from earthsnap_assets.lake.intake import intake_group
    from earthsnap_assets.lake.layouts import build_layout
    from earthsnap_assets.lake.manifest import validate_group
    from earthsnap_assets.lake.pipeline import DataConfig
    from earthsnap_assets.lake.sample import build_sample
    from earthsnap_assets.lake.versions import build_version
    from earthsnap_assets.ml.quality import QualityRules

    config = DataConfig(rules=QualityRules(min_side=64, min_images_per_species=2), image_size=64, workers=4)
    blobs = LocalBlobs(root)
    runs: dict[str, list[dict]] = {"intake": [], "checks": [], "manifest": [], "layout": [], "fan_in": []}
    for group in groups:
        runs["intake"].append(
            measured(
                lambda g=group: {
                    "decoded": intake_group(blobs, "raw", "lake", g, tax.species_in(g), config.intake()).decoded
                }
            )
        )
    runs["checks"].append(
        measured(lambda: {"groups": len(check_groups(blobs, "lake", tax.groups, config.manifest().checks()).groups)})
    )
    for group in groups:
        runs["manifest"].append(
            measured(
                lambda g=group: {
                    "changed": validate_group(blobs, "lake", g, tax.species_in(g), config.manifest()).changed
                }
            )
        )
        runs["layout"].append(
            measured(lambda g=group: {"added": build_layout(blobs, "raw", "lake", g, config.layout()).added_rows})
        )

    def fan_in() -> dict:
        from earthsnap_assets.lake.heads import load_head

        version = build_version(blobs, "lake", tax, config.manifest())
        layout = config.layout().layout_id
        heads = {g: load_head(blobs, "lake", paths.layout_head(layout, g)) for g in tax.groups}
        labels = {g: tax.species_in(g) for g in tax.groups}
        sample = build_sample(
            blobs,
            "lake",
            layout,
            {g: h.value["index"] for g, h in heads.items()},
            version.dataset_version,
            labels,
            config.sample,
        )
        return {"dataset_version": version.dataset_version, "sample_groups_rebuilt": len(sample.built_groups)}

    runs["fan_in"].append(measured(fan_in))
    decoded = sum(r.get("decoded", 0) for r in runs["intake"])
    return {
        "groups_run": len(groups),
        "decoded": decoded,
        "total_seconds": round(sum(r["seconds"] for rs in runs.values() for r in rs), 2),
        "peak_rss_mb": max(r["peak_rss_mb"] for rs in runs.values() for r in rs),
        "steps": {name: summary(rs) for name, rs in runs.items()},
        "sample_groups_rebuilt": runs["fan_in"][0]["sample_groups_rebuilt"],
    }


def pixels_one(n: int, seed: int = 0) -> dict:
    """All three runs at one N, in this (fresh) process."""
    groups = max(20, n // PHOTOS_PER_GROUP)
    tax = taxonomy(groups)
    root = Path(tempfile.mkdtemp(prefix=f"earthsnap-scale-{n}-"))
    try:
        blobs = LocalBlobs(root)
        from earthsnap_assets.lake.versions import save_taxonomy

        save_taxonomy(blobs, "lake", tax)
        started = time.perf_counter()
        per_group = {g: n // groups for g in tax.groups}
        uploaded = upload(blobs, tax, per_group, seed, "a")
        log(f"N={n}: {uploaded} photos in {groups} groups written in {time.perf_counter() - started:.0f} s")
        first = pixel_steps(root, tax, tax.groups)
        log(f"N={n}: first run {first['total_seconds']} s")
        again = pixel_steps(root, tax, tax.groups)
        log(f"N={n}: no-change run {again['total_seconds']} s")
        touched = tax.groups[0]
        upload(blobs, tax, {touched: 1000}, seed + 1, "b")
        plus = pixel_steps(root, tax, [touched])
        log(f"N={n}: +1000 photos in one group {plus['total_seconds']} s")
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        return {
            "n": uploaded,
            "groups": groups,
            "photos_per_group": n // groups,
            "first_run": first,
            "no_change_run": again,
            "plus_dn_run": plus,
            "disk_mb": round(size / 1e6, 1),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the metadata path at app scale ----------------------------------------------------------------------


def fake_rows(rng: np.random.Generator, group: str, species: list[str], start: int, count: int, now: int):
    """Object-table rows as intake writes them for QA-passed photos (no pixels): what the checks read."""
    import pyarrow as pa

    from earthsnap_assets.lake.objects import SCHEMA

    shas = [f"{v:064x}" for v in rng.integers(0, 2**60, size=count, dtype=np.int64) * 4 + start]  # < 2**63: no sign
    keys = [f"images/{species[i % len(species)]}/{start + i:08d}.jpg" for i in range(count)]
    dhash = rng.integers(0, 2**63, size=count, dtype=np.uint64)
    return pa.table(
        {
            "key": keys,
            "etag": [f"e{start + i}" for i in range(count)],
            "size": np.full(count, 3000, np.int64),
            "sha256": shas,
            "replaced_sha256": pa.nulls(count, pa.string()),
            "dhash": dhash,
            "width": np.full(count, 96, np.int32),
            "height": np.full(count, 96, np.int32),
            "format": ["JPEG"] * count,
            "mode": ["RGB"] * count,
            "verdict": ["ok"] * count,
            "reason": pa.nulls(count, pa.string()),
            "detail": pa.nulls(count, pa.string()),
            "species": [species[i % len(species)] for i in range(count)],
            "group": [group] * count,
            "pixels": pa.nulls(count, pa.string()),
            "pixel_row": pa.nulls(count, pa.int32()),
            "first_seen_ns": np.full(count, now, np.int64),
            "seen_ns": np.full(count, now, np.int64),
        },
        schema=SCHEMA,
    )


def inject(blobs: LocalBlobs, tax: Taxonomy, per_group: int, seed: int, start: int) -> None:
    """Append `per_group` QA-passed rows to every group's object table: intake without the decoding."""
    from earthsnap_assets.lake.heads import commit_head, load_head
    from earthsnap_assets.lake.objects import row_digest, write_segment

    rng, now = np.random.default_rng(seed), time.time_ns()
    for number, group in enumerate(tax.groups):
        rows = fake_rows(rng, group, tax.species_in(group), start + number * per_group * 10, per_group, now)
        head = load_head(blobs, "lake", paths.objects_head(group))
        segment = write_segment(blobs, "lake", group, rows)
        total = int(head.get("state_sum", "0"), 16)
        for key, etag in zip(rows["key"].to_pylist(), rows["etag"].to_pylist(), strict=True):
            total = (total + row_digest(key, etag, "ok", now)) & ((1 << 128) - 1)
        log_entries = head.get("log", [])
        seq = log_entries[-1]["seq"] + 1 if log_entries else 1
        commit_head(
            blobs,
            "lake",
            head,
            {
                "group": group,
                "segments": [*head.get("segments", []), segment],
                "log": [*log_entries, {"seq": seq, "segment": segment}],
                "species": tax.species_in(group),
                "state_sum": f"{total:032x}",
                "counts": {},
                "rules": "bench",
                "preprocess": "bench",
            },
        )


def metadata_run(root: Path, tax: Taxonomy) -> dict:
    import pyarrow.compute as pc

    from earthsnap_assets.lake.content import check_groups
    from earthsnap_assets.lake.manifest import load_segment, validate_group
    from earthsnap_assets.lake.pipeline import DataConfig
    from earthsnap_assets.lake.sample import choose
    from earthsnap_assets.lake.versions import build_version

    config = DataConfig()
    blobs = LocalBlobs(root)
    checks = measured(
        lambda: {"groups": len(check_groups(blobs, "lake", tax.groups, config.manifest().checks()).groups)}
    )
    log(f"  checks {checks['seconds']:.1f} s, {checks['peak_rss_mb']} MB")
    manifests = [
        measured(
            lambda g=g: {"changed": validate_group(blobs, "lake", g, tax.species_in(g), config.manifest()).changed}
        )
        for g in tax.groups
    ]
    log(f"  manifests {sum(m['seconds'] for m in manifests):.1f} s in all")
    version = measured(lambda: {"version": build_version(blobs, "lake", tax, config.manifest()).dataset_version})

    def sample() -> dict:
        chosen = 0
        for group in tax.groups:
            _, segment = load_segment(blobs, "lake", group)
            rows = segment.select(["sha256", "species", "split", "verdict"])
            accepted = rows.filter(pc.equal(rows["verdict"], "accepted"))
            chosen += choose(accepted, config.sample.per_split(), 0).num_rows
        return {"chosen": chosen}

    selection = measured(sample)
    return {
        "checks": checks,
        "manifests": summary(manifests),
        "dataset_version": version,
        "sample_selection": selection,
        "total_seconds": round(
            checks["seconds"] + sum(m["seconds"] for m in manifests) + version["seconds"] + selection["seconds"], 1
        ),
    }


def metadata_one(n: int, groups: int = 500, dn: int = 100_000) -> dict:
    tax = Taxonomy({f"g{g:03d}-s{s:02d}": f"g{g:03d}" for g in range(groups) for s in range(60)})
    root = Path(tempfile.mkdtemp(prefix=f"earthsnap-meta-{n}-"))
    try:
        blobs = LocalBlobs(root)
        started = time.perf_counter()
        inject(blobs, tax, n // groups, seed=1, start=0)
        log(f"N={n}: {n} rows injected in {time.perf_counter() - started:.0f} s; building the first state")
        first = metadata_run(root, tax)
        log(f"N={n}: first state {first['total_seconds']} s; dN={dn} over {groups} groups")
        started = time.perf_counter()
        inject(blobs, tax, dn // groups, seed=2, start=10**10)
        append_s = time.perf_counter() - started
        plus = metadata_run(root, tax)
        plus["object_table_append_s"] = round(append_s, 1)
        return {
            "n": n,
            "groups": groups,
            "dn": dn,
            "first_build": first,
            "plus_dn_run": plus,
            "meets_5_min": plus["total_seconds"] + append_s < 300,
            "meets_4_gib": max(plus["checks"]["peak_rss_mb"], plus["manifests"]["peak_rss_mb"]) < 4096,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def probe_figure(existing: int = 10_000_000, new: int = 100_000) -> dict:
    from earthsnap_assets.lake.near_duplicates import probe

    rng = np.random.default_rng(7)
    old = rng.integers(0, 2**63, size=existing, dtype=np.uint64)
    fresh = np.concatenate(
        [old[: new // 10] ^ np.uint64(0b101), rng.integers(0, 2**63, size=new - new // 10, dtype=np.uint64)]
    )
    started = time.perf_counter()
    a, _, _ = probe(fresh, old, 3)
    return {
        "existing": existing,
        "new": new,
        "seconds": round(time.perf_counter() - started, 2),
        "pairs": len(a),
        "meets_10_s": time.perf_counter() - started < 10,
    }


# --- driver ----------------------------------------------------------------------------------------------


def in_fresh_process(part: str, n: int) -> dict:
    """Each N in its own interpreter, so nothing one size allocated is counted against the next."""
    out = subprocess.run([sys.executable, __file__, part, "--one", str(n)], capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"{part} at N={n} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["pixels", "metadata"])
    parser.add_argument("--sizes", default=None, help="comma-separated N (default: 10000,30000,100000 / 1e6,1e7)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one = pixels_one if args.part == "pixels" else metadata_one
        print(json.dumps(one(args.one)))
        return
    default = "10000,30000,100000" if args.part == "pixels" else "1000000,10000000"
    sizes = [int(float(s)) for s in (args.sizes or default).split(",")]
    report: dict = {"part": args.part, "machine_before": machine(), "runs": {}}
    for n in sizes:
        report["runs"][str(n)] = in_fresh_process(args.part, n)
    if args.part == "pixels" and len(sizes) > 1:
        low, high = report["runs"][str(sizes[0])], report["runs"][str(sizes[-1])]
        growth = high["plus_dn_run"]["total_seconds"] / low["plus_dn_run"]["total_seconds"]
        report["plus_dn_growth"] = {
            "n_ratio": sizes[-1] / sizes[0],
            "seconds_ratio": round(growth, 2),
            "meets_1_5x": growth <= 1.5,
        }
        report["peak_rss_mb_by_n"] = {n: r["first_run"]["peak_rss_mb"] for n, r in report["runs"].items()}
    if args.part == "metadata":
        report["near_duplicate_probe"] = probe_figure()
    report["machine_after"] = machine()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
