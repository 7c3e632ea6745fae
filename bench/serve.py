"""Serving benchmark: the HTTP endpoint vs. calling the same models in-process, at concurrency 1 and 8.

Prints ONE JSON object to stdout; progress goes to stderr. Run from the repository root:

    .venv/bin/python bench/serve.py [--n 200] [--concurrency 8] [--warmup 10]

One run starts its own stack (SeaweedFS + MLflow) in a temporary EARTHSNAP_HOME on free ports, registers a
realistic hierarchy under a unique prefix (a parent over 4 groups and 4 children of 3 species, all
`create_classifier(DEFAULT_BACKBONE, k)` logged as pt2 exactly as training does), points `production` at
them, and stops the stack at the end whatever happens. Then, over N generated 800x600 JPEGs:
  in-process   `preprocess_bytes` + `LoadedModels.predict` on a batch of one (`resolve` + `load` of the
               same versions), from 1 thread and from C threads
  http         `POST /predict` to `create_app("production")` under a real uvicorn, from 1 keep-alive
               session and from C threads with a session each; `/stats` gives the forward passes
Targets: HTTP p50 at most 20% above the in-process p50 at concurrency 1, and more HTTP throughput at C
than at 1 (micro-batching).

`--sections predlog` measures the prediction log's cost: the same endpoint with `log_predictions` off and
on (rows to the bench stack's real SeaweedFS lake, default flush settings, photos not kept), `--repeats`
rounds of the same N photos: at concurrency 1 both endpoints up and requests alternating between them, at C
one endpoint at a time in alternating order. Target: p50 at concurrency 1 with the log at most 5% above
p50 without it (median over the rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import requests
import torch

from earthsnap_assets.ml.model_cache import ModelCache
from earthsnap_assets.ml.models import DEFAULT_BACKBONE, create_classifier
from earthsnap_assets.ml.routing import RoutingConfig
from earthsnap_assets.ml.transforms import preprocess_bytes
from earthsnap_assets.registry import release
from earthsnap_assets.registry.client import RegistryClient, RegistryVerbs
from earthsnap_assets.serving.app import create_app
from earthsnap_assets.serving.config import ServeConfig
from earthsnap_assets.serving.local import serving_in_thread
from earthsnap_assets.serving.models import LoadedModels, RoutingStats, load, load_network
from earthsnap_assets.serving.production import Lake
from earthsnap_assets.serving.resolve import RegistryReader
from earthsnap_assets.settings import Settings
from earthsnap_assets.stack import stack_down, stack_up
from earthsnap_assets.stack.ports import free_port, free_stack_env

ENV = ALIAS = "production"
PHOTO_SIZE = (800, 600)  # width x height, as PIL counts
TARGET_OVERHEAD = 0.20
TARGET_BATCHING_GAIN = 1.0
TARGET_P50_RATIO = 1.5  # p50 at the largest G over p50 at the smallest
TARGET_LOG_OVERHEAD = 0.05  # p50 with the prediction log on over p50 with it off, minus 1


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- stack


def stack_env(home: Path) -> dict[str, str]:
    """EARTHSNAP_* variables for a stack in `home` on fresh free ports (never the defaults)."""
    return free_stack_env(home)


@contextlib.contextmanager
def bench_stack() -> Iterator[Settings]:
    """SeaweedFS + MLflow in a temporary home, exported to this process's environment; always stopped."""
    with tempfile.TemporaryDirectory(prefix="earthsnap-bench-serve-") as folder:
        env = stack_env(Path(folder) / "home")
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        settings = Settings.from_env()
        try:
            stack_up(settings, dagster=False)
            yield settings
        finally:
            log("stopping the bench stack")
            stack_down(settings)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# ---------------------------------------------------------------------------------------------- models


def hierarchy(groups: int, species_per_group: int) -> dict[str, list[str]]:
    """group -> species of the synthetic taxonomy (the real drawing families and species names)."""
    from earthsnap_assets.demo.synthetic import SyntheticSpec, species_table

    table: dict[str, list[str]] = {}
    for slug, group, _ in species_table(SyntheticSpec(groups=groups, species_per_group=species_per_group)):
        table.setdefault(group, []).append(slug)
    return table


def classifier(backbone: str, classes: int, seed: int) -> torch.nn.Module:
    """`create_classifier`, with a small random head: its zero-initialised head would make every answer uniform."""
    torch.manual_seed(seed)
    model = create_classifier(backbone, classes)
    head = model.get_classifier()
    with torch.no_grad():
        torch.nn.init.normal_(head.weight, std=0.5)
    return model.eval()


def register_model(
    registry: RegistryVerbs,
    name: str,
    model: torch.nn.Module,
    classes: list[str],
    image_size: int,
    mapping: dict[str, list[str]] | None = None,
) -> tuple[str, str, str]:
    """Log `model` as pt2 and register it as `name` with the tags serving reads: (version, model uri, run id)."""
    example = np.zeros((2, 3, image_size, image_size), np.float32)
    tags = {"classes": ",".join(classes), "image_size": str(image_size), "dataset_version": "bench-serve"}
    tags |= release.released_tags("production")  # as the deploy job leaves them: the endpoint serves only those
    with registry.run(name) as run_id:
        uri = registry.log_model(run_id, model, example, {"classes": classes})
        if mapping is not None:  # the parent: its group -> species mapping is an artifact, as registration does
            tags |= registry.log_group_species(run_id, mapping)
    return registry.register(uri, name, run_id, tags), uri, run_id


def register_hierarchy(
    registry: RegistryVerbs, prefix: str, species: dict[str, list[str]], backbone: str, image_size: int
) -> dict[str, str]:
    """Parent + one child per group, logged as pt2 and registered with the tags serving reads; alias on all."""

    def register(name: str, model: torch.nn.Module, classes: list[str], **_: str) -> str:
        return register_model(registry, prefix + name, model, classes, image_size)[0]

    groups = list(species)
    parent = classifier(backbone, len(groups), 0)
    versions = {prefix + "parent": register_model(registry, prefix + "parent", parent, groups, image_size, species)[0]}
    for index, group in enumerate(groups, start=1):
        name = f"child-{group}"
        versions[prefix + name] = register(name, classifier(backbone, len(species[group]), index), species[group])
        log(f"  registered {prefix + name} v{versions[prefix + name]}")
    for name, version in versions.items():
        registry.set_alias(name, ALIAS, version)
    return versions


# ---------------------------------------------------------------------------------------------- inputs


def _render_jpeg(args: tuple[int, str, int, int]) -> bytes:
    from earthsnap_assets.demo.synthetic import render_image

    index, species, seed, quality = args
    buffer = io.BytesIO()
    render_image(species, np.random.default_rng([seed, index]), PHOTO_SIZE).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def photos(count: int, species: list[str], seed: int, quality: int) -> list[bytes]:
    """`count` realistic 800x600 JPEGs, species round-robin, each from its own seed."""
    return [_render_jpeg((i, species[i % len(species)], seed, quality)) for i in range(count)]


# ---------------------------------------------------------------------------------------------- timing


def _quantiles(latencies: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def _phase_stats(latencies: Sequence[float], wall: float, cpu: float, load_before: float, concurrency: int) -> dict:
    return {
        "concurrency": concurrency,
        "items": len(latencies),
        "wall_s": round(wall, 3),
        "throughput_per_s": round(len(latencies) / wall, 2),
        **_quantiles(latencies),
        "process_cpu_ms_per_item": round(cpu / len(latencies) * 1000.0, 2),
        "loadavg_1m_before": round(load_before, 2),
    }


def run_paired(
    datas: Sequence[bytes],
    warmup: int,
    first: Callable[[], Callable[[int], Any]],
    second: Callable[[], Callable[[int], Any]],
    on_start: Callable[[], None] = lambda: None,
) -> tuple[tuple[dict, list[Any]], tuple[dict, list[Any]]]:
    """Concurrency 1 of two paths, interleaved image by image (which one goes first alternates).

    A shared machine's load drifts over seconds: interleaving gives both paths the same conditions, so
    their ratio holds even when the absolute numbers move. Throughput at concurrency 1 is items over the
    sum of that path's latencies; CPU is the process's CPU time while that path ran (nothing else did).
    `on_start()` runs after the warm-up, right before the timed part.
    """
    handles = (first(), second())
    for index in range(min(warmup, len(datas))):
        for handle in handles:
            handle(index)
    latencies: tuple[list[float], list[float]] = ([], [])
    cpus, results = [0.0, 0.0], ([], [])
    on_start()
    load_before = os.getloadavg()[0]
    for index in range(len(datas)):
        for path in (0, 1) if index % 2 == 0 else (1, 0):
            cpu, start = time.process_time(), time.perf_counter()
            result = handles[path](index)
            latencies[path].append(time.perf_counter() - start)
            cpus[path] += time.process_time() - cpu
            results[path].append(result)
    stats = [_phase_stats(latencies[path], sum(latencies[path]), cpus[path], load_before, 1) for path in (0, 1)]
    return (stats[0], results[0]), (stats[1], results[1])


def run_concurrent(
    datas: Sequence[bytes],
    concurrency: int,
    warmup: int,
    make_worker: Callable[[], Callable[[int], Any]],
    on_start: Callable[[], None] = lambda: None,
) -> dict:
    """`concurrency` threads take the next image index until none is left: `warmup` each untimed, then all.

    `make_worker()` runs once per thread (a keep-alive session per thread), before its warm-up, so the
    timed part reuses warm connections. `on_start()` runs once all are warm, right before the timed part.
    """
    latencies: list[float] = [0.0] * len(datas)
    lock = threading.Lock()
    warm, go = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1)
    warm_indices = iter(range(min(warmup * concurrency, len(datas))))
    timed_indices = iter(range(len(datas)))

    def drain(handle: Callable[[int], Any], indices: Iterator[int], keep: bool) -> None:
        while True:
            with lock:
                index = next(indices, None)
            if index is None:
                return
            start = time.perf_counter()
            handle(index)
            if keep:
                latencies[index] = time.perf_counter() - start

    def thread() -> None:
        try:
            handle = make_worker()
            drain(handle, warm_indices, keep=False)
        except BaseException:
            warm.abort()  # nobody waits for a thread that failed; its future reports why
            go.abort()
            raise
        warm.wait()
        go.wait()  # the timed part starts together, after `on_start`
        drain(handle, timed_indices, keep=True)

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(thread) for _ in range(concurrency)]
        with contextlib.suppress(threading.BrokenBarrierError):
            warm.wait()
            on_start()
            load_before, cpu_before, start = os.getloadavg()[0], time.process_time(), time.perf_counter()
            go.wait()
        errors = [error for error in (future.exception() for future in futures) if error is not None]
        if errors:  # the thread that failed first, not the others it stopped at a barrier
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        wall = time.perf_counter() - start
    return _phase_stats(latencies, wall, time.process_time() - cpu_before, load_before, concurrency)


def in_process_bundle(registry: RegistryVerbs, config: ServeConfig, versions: dict[str, str]) -> LoadedModels:
    """The bundle the endpoint builds for the alias, built here the same way (`RegistryReader` + `load`)."""
    reader = RegistryReader(registry, config)
    found = reader.versions(ALIAS)
    if found != versions:
        raise RuntimeError(f"alias {ALIAS!r} resolves to {found}, expected {versions}")
    resolved = reader.resolve(found)
    size = int(resolved.tags[resolved.parent_name]["image_size"])
    cache: ModelCache = ModelCache(lambda key: load_network(registry, *key, size), max_models=config.cache_max_children)
    return load(registry, resolved, ENV, ALIAS, cache, config, RoutingStats(), ThreadPoolExecutor(2))


def in_process_worker(bundle: LoadedModels, datas: Sequence[bytes]) -> Callable[[], Callable[[int], Any]]:
    def make() -> Callable[[int], Any]:
        def handle(index: int) -> Any:
            answer = bundle.predict(preprocess_bytes(datas[index], bundle.image_size))[0]
            return answer.result() if isinstance(answer, Future) else answer  # a Future while a child loads

        return handle

    return make


def http_worker(url: str, datas: Sequence[bytes]) -> Callable[[], Callable[[int], Any]]:
    def make() -> Callable[[int], Any]:
        session = requests.Session()  # one keep-alive connection per thread

        def handle(index: int) -> Any:
            response = session.post(
                f"{url}/predict", data=datas[index], headers={"content-type": "image/jpeg"}, timeout=60
            )
            if response.status_code != 200:
                raise RuntimeError(f"POST /predict answered {response.status_code}: {response.text[:300]}")
            return response.json()

        return handle

    return make


class ServerClock:
    """ASGI wrapper: how long each `/predict` spent inside the app (first byte in -> last byte out)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seconds: list[float] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        await self.app(scope, receive, send)
        self.seconds.append(time.perf_counter() - start)


def serving(app: Any) -> contextlib.AbstractContextManager[str]:
    """Run `app` under a real uvicorn on a free port of 127.0.0.1 (as the serving tests do); the base URL."""
    return serving_in_thread(app)


def wait_ready(url: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.ConnectionError):
            response = requests.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                return response.json()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready within {timeout} s")
        time.sleep(0.1)


def batch_counts(url: str) -> dict[str, int]:
    return requests.get(f"{url}/stats", timeout=10).json()


def with_batching(stats: dict, before: dict, after: dict) -> dict:
    passes = after["forward_passes"] - before["forward_passes"]
    items = after["items"] - before["items"]
    return stats | {
        "forward_passes": passes,
        "batched_items": items,
        "avg_batch_size": round(items / passes, 2) if passes else None,
        "largest_batch_since_start": after["largest_batch"],
    }


def agreement(local: Sequence[Any], remote: Sequence[dict]) -> dict:
    """Same photo, same versions: HTTP's best species and its probability against the in-process ones."""
    same, worst = 0, 0.0
    for prediction, answer in zip(local, remote, strict=True):
        mine, theirs = prediction.answer(1, 0.0)["top_k"][0], answer["top_k"][0]
        same += theirs["species"] == mine["species"]
        worst = max(worst, abs(theirs["probability"] - mine["probability"]))
    return {"same_top_species": same, "of": len(local), "max_abs_probability_diff": worst}


# ---------------------------------------------------------------------------------------------- scale


def wide_species(groups: int, per_group: int) -> dict[str, list[str]]:
    """group -> species of a synthetic taxonomy of any size: g000 -> [g000-s0, g000-s1, ...]."""
    return {f"g{g:03d}": [f"g{g:03d}-s{s}" for s in range(per_group)] for g in range(groups)}


def calibrated(model: torch.nn.Module, inputs: torch.Tensor, confidence: float) -> torch.nn.Module:
    """Scale the head so the median top-1 P(group) over `inputs` is `confidence`.

    A random head's confidence depends on G (here: 0.98 at G = 4, 0.42 at G = 200), and how many
    children a photo costs follows that confidence, not G. A trained parent is sure of most photos at any
    G, so parents of every G get the same median confidence and the comparison isolates G.
    """
    with torch.no_grad():
        logits = model(inputs)
    low, high = 1e-3, 1e3  # bisection on the temperature, in log space
    for _ in range(60):
        temperature = math.sqrt(low * high)
        median = float(torch.softmax(logits / temperature, dim=1).max(dim=1).values.median())
        low, high = (temperature, high) if median > confidence else (low, temperature)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight /= temperature
        head.bias /= temperature
    return model


def register_wide(
    registry: RegistryVerbs, prefix: str, species: dict[str, list[str]], args: argparse.Namespace, inputs: torch.Tensor
) -> dict[str, str]:
    """A calibrated parent over G groups and a child per group; `--distinct-children` networks are logged and
    registered round-robin under the G names (each name is its own version, downloaded and loaded on its own)."""
    groups = list(species)
    parent = calibrated(classifier(args.backbone, len(groups), 0), inputs, args.parent_confidence)
    versions = {
        prefix + "parent": register_model(registry, prefix + "parent", parent, groups, args.image_size, species)[0]
    }
    logged = []
    for k, group in enumerate(groups[: args.distinct_children]):
        network = classifier(args.backbone, len(species[group]), k + 1)
        version, uri, run_id = register_model(
            registry, f"{prefix}child-{group}", network, species[group], args.image_size
        )
        versions[f"{prefix}child-{group}"] = version
        logged.append((uri, run_id))

    def register(index_group: tuple[int, str]) -> tuple[str, str]:
        index, group = index_group
        uri, run_id = logged[index % len(logged)]
        tags = {"classes": ",".join(species[group]), "image_size": str(args.image_size), "dataset_version": "bench"}
        tags |= release.released_tags("production")
        return f"{prefix}child-{group}", registry.register(uri, f"{prefix}child-{group}", run_id, tags)

    rest = list(enumerate(groups))[args.distinct_children :]
    with ThreadPoolExecutor(8) as pool:
        versions.update(pool.map(register, rest))
        list(pool.map(lambda item: registry.set_alias(item[0], ALIAS, item[1]), versions.items()))
    return versions


@contextlib.contextmanager
def endpoint_process(prefix: str, cache: int, log_path: Path) -> Iterator[tuple[str, int]]:
    """`earthsnap serve` as its own process (a replica), so its memory is its own: (base URL, pid)."""
    port = free_port()
    code = "from earthsnap_assets.cli import main; main()"
    args = ["serve", "--env", ENV, "--port", str(port), "--model-prefix", prefix, "--cache-max-children", str(cache)]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args, "--log-level", "warning"], stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, timeout=300)
            yield url, process.pid
        except BaseException:
            log(f"endpoint log ({log_path}), last lines:\n" + "\n".join(log_path.read_text().splitlines()[-40:]))
            raise
        finally:
            process.terminate()
            process.wait(30)


def memory_mb(pid: int) -> dict[str, float]:
    """A process's resident set now, its peak (VmHWM), and its anonymous part (heap, tensors: what models and
    requests cost, without the shared libraries' pages, which the kernel may drop and reload), MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"], "anon_rss_mb": fields["RssAnon"]}


def server_delta(before: dict, after: dict) -> dict:
    """What the endpoint did during a timed phase: batching, cache traffic, routing cost."""
    passes = after["forward_passes"] - before["forward_passes"]
    items = after["items"] - before["items"]
    cache = {k: after["children"][k] - before["children"][k] for k in ("hits", "misses", "loads", "evictions")}
    lookups = cache["hits"] + cache["misses"]
    photos = after["routing"]["photos"] - before["routing"]["photos"]
    expanded = after["routing"]["groups_expanded"] - before["routing"]["groups_expanded"]
    child_passes = after["routing"]["child_forward_passes"] - before["routing"]["child_forward_passes"]
    return {
        "avg_batch_size": round(items / passes, 2) if passes else None,
        "cache": cache | {"hit_rate": round(cache["hits"] / lookups, 4) if lookups else None},
        "resident_children": after["children"]["resident"],
        "resident_child_mb": round(after["children"]["resident_bytes"] / 2**20, 1),
        "mean_groups_expanded": round(expanded / photos, 3) if photos else None,
        "child_passes_per_batch": round(child_passes / passes, 2) if passes else None,
    }


def scale_run(url: str, pid: int, datas: Sequence[bytes], concurrencies: Sequence[int], warmup: int) -> dict:
    """HTTP phases at each concurrency against one endpoint process; its memory after them."""
    result: dict[str, Any] = {}
    for concurrency in concurrencies:
        before: list[dict] = []
        stats = run_concurrent(
            datas, concurrency, warmup, http_worker(url, datas), lambda b=before: b.append(batch_counts(url))
        )
        result[f"c{concurrency}"] = stats | server_delta(before[0], batch_counts(url))
        log(f"    c{concurrency}: {json.dumps(result[f'c{concurrency}'])}")
    return result | memory_mb(pid)


def workload(datas: Sequence[bytes], count: int, zipf: float, seed: int) -> list[bytes]:
    """`count` requests drawn from the photos with Zipf popularity (photo of rank r: P ~ 1 / r^zipf, ranks seeded):
    traffic concentrates on common species. zipf = 0: every photo once, in a random order (no repeats)."""
    rng = np.random.default_rng(seed)
    if zipf == 0:
        return [datas[i] for i in rng.permutation(len(datas))[:count]]
    weights = 1.0 / np.arange(1, len(datas) + 1) ** zipf
    ranked = rng.permutation(len(datas))
    return [datas[ranked[i]] for i in rng.choice(len(datas), size=count, p=weights / weights.sum())]


def run_scale(args: argparse.Namespace, datas: Sequence[bytes], log_path: Path) -> dict:
    """Endpoints over G groups (one process each), the same requests at concurrency 1 and C; cache at its setting."""
    requests_ = workload(datas, args.n, args.zipf, args.seed)
    registry = RegistryClient(experiment=f"bench-serve-scale-{uuid.uuid4().hex[:8]}")
    inputs = torch.cat([preprocess_bytes(d, args.image_size) for d in datas[:64]])
    concurrencies = (1, args.concurrency)
    per_g: dict[str, Any] = {}
    for groups in args.groups:
        prefix = f"bench-{uuid.uuid4().hex[:8]}-g{groups}-earthsnap-"
        log(f"scale: G = {groups}, registering under {prefix!r}")
        clock = time.perf_counter()
        register_wide(registry, prefix, wide_species(groups, args.species_per_group), args, inputs)
        register_s = round(time.perf_counter() - clock, 1)
        with endpoint_process(prefix, args.cache, log_path) as (url, pid):
            per_g[str(groups)] = scale_run(url, pid, requests_, concurrencies, args.warmup) | {"register_s": register_s}
        if groups == max(args.groups):
            for cache in args.cache_sweep:
                log(f"scale: G = {groups}, cache {cache}")
                with endpoint_process(prefix, cache, log_path) as (url, pid):
                    per_g[f"{groups}_cache{cache}"] = scale_run(url, pid, requests_, (1,), args.warmup)
    small, large = str(min(args.groups)), str(max(args.groups))
    ratios = {
        f"c{c}": round(per_g[large][f"c{c}"]["p50_ms"] / per_g[small][f"c{c}"]["p50_ms"], 3) for c in concurrencies
    }
    return {
        f"p50_ratio_G{large}_vs_G{small}": ratios,
        "target_p50_ratio": TARGET_P50_RATIO,
        "meets_p50_ratio_target": all(r <= TARGET_P50_RATIO for r in ratios.values()),
        "rss_mb_by_groups": {g: per_g[g]["rss_mb"] for g in per_g},
        "anon_rss_mb_by_groups": {g: per_g[g]["anon_rss_mb"] for g in per_g},
        "groups": per_g,
        "params": {
            "cache_max_children": args.cache,
            "cache_sweep": args.cache_sweep,
            "routing": RoutingConfig().as_dict(),
            "species_per_group": args.species_per_group,
            "distinct_children": args.distinct_children,
            "parent_median_confidence": args.parent_confidence,
            "zipf": args.zipf,
            "distinct_photos_requested": len(set(requests_)),
            "server": "earthsnap serve in its own process (one replica), client threads in the benchmark's process",
        },
    }


# ---------------------------------------------------------------------------------------------- main


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "processor": platform.machine(),
        # Other work on the machine skews every number here: a 1-minute load near the CPU count means contention.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of 800x600 JPEGs per phase (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads of the concurrent phases (default 8)")
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed photos per path / thread before each phase (default 10)"
    )
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm backbone (default {DEFAULT_BACKBONE})")
    parser.add_argument("--image-size", type=int, default=64, help="model input size S (default 64)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the inputs (default 90)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sections", default="overhead,scale", help="overhead (4 groups, http vs in-process), scale, predlog"
    )
    parser.add_argument("--groups", default="4,50,200", help="scale: numbers of groups G (default 4,50,200)")
    parser.add_argument("--species-per-group", type=int, default=3)
    parser.add_argument("--distinct-children", type=int, default=4, help="scale: networks logged, registered G times")
    parser.add_argument("--parent-confidence", type=float, default=0.9, help="scale: median top-1 P(group)")
    parser.add_argument("--cache", type=int, default=ServeConfig().cache_max_children, help="scale: children cached")
    parser.add_argument("--cache-sweep", default="8,32", help="scale: other cache sizes tried at the largest G")
    parser.add_argument("--zipf", type=float, default=1.0, help="scale: popularity skew of the requests (0: none)")
    parser.add_argument("--repeats", type=int, default=5, help="predlog: rounds of off/on (default 5)")
    args = parser.parse_args(argv)
    args.sections = [x for x in args.sections.split(",") if x]
    args.groups = sorted(int(x) for x in args.groups.split(",") if x)
    args.cache_sweep = [int(x) for x in args.cache_sweep.split(",") if x]
    if args.n < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("need --n >= 1, --concurrency >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints "View run ..." lines: stdout is the JSON's
        result = run(args)
    print(json.dumps(result, indent=2), file=out)
    return 0


def run(args: argparse.Namespace) -> dict:
    facts = machine()
    log(f"machine: {json.dumps(facts)}")
    began = time.perf_counter()
    species = hierarchy(groups=4, species_per_group=3)
    flat = [s for group in species.values() for s in group]
    log(f"rendering {args.n} photos of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}")
    clock = time.perf_counter()
    datas = photos(args.n, flat, args.seed, args.quality)
    setup = {"render_s": round(time.perf_counter() - clock, 2)}
    log("starting the bench stack (SeaweedFS + MLflow)")
    clock = time.perf_counter()
    result: dict[str, Any] = {}
    with bench_stack() as settings:
        setup["stack_up_s"] = round(time.perf_counter() - clock, 2)
        if "overhead" in args.sections:
            result |= run_overhead(args, datas, species, setup)
        if "scale" in args.sections:
            result["scale"] = run_scale(args, datas, settings.home / "bench-serve-endpoints.log")
        if "predlog" in args.sections:
            result["prediction_log"] = run_predlog(args, datas, species, settings)
    return result | {
        "setup_s": setup,
        "total_s": round(time.perf_counter() - began, 1),
        "machine": facts | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }


def run_overhead(args: argparse.Namespace, datas: Sequence[bytes], species: dict[str, list[str]], setup: dict) -> dict:
    """The endpoint vs. the same bundle in-process, 4 groups, at concurrency 1 and C."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}-earthsnap-"
    config = ServeConfig(model_prefix=prefix)
    registry = RegistryClient(experiment=f"bench-serve-{prefix[6:14]}")
    log(f"registering the hierarchy under {prefix!r}")
    clock = time.perf_counter()
    versions = register_hierarchy(registry, prefix, species, args.backbone, args.image_size)
    setup["register_s"] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    bundle = in_process_bundle(registry, config, versions)
    setup["load_s"] = round(time.perf_counter() - clock, 2)

    app = ServerClock(create_app(ENV, config=config))
    with serving(app) as url:
        clock = time.perf_counter()
        ready = wait_ready(url)
        setup["endpoint_ready_s"] = round(time.perf_counter() - clock, 2)
        if ready["versions"] != versions:
            raise RuntimeError(f"endpoint serves {ready['versions']}, expected {versions}")
        c = args.concurrency
        counts: dict[str, dict[str, int]] = {}

        def timing_starts(phase: str) -> Callable[[], None]:
            def start() -> None:  # after the warm-up: batch counts and server clock cover the timed part only
                counts[phase] = batch_counts(url)
                app.seconds.clear()

            return start

        log(f"concurrency 1: in-process and http interleaved, {args.n} photos each")
        (local_c1, local_answers), (http_c1, http_answers) = run_paired(
            datas, args.warmup, in_process_worker(bundle, datas), http_worker(url, datas), timing_starts("c1")
        )
        http_c1 = with_batching(http_c1, counts["c1"], batch_counts(url)) | {"server_side": _quantiles(app.seconds)}
        log(f"  in-process c1: {json.dumps(local_c1)}")
        log(f"  http c1: {json.dumps(http_c1)}")
        log(f"in-process, concurrency {c}")
        local_cn = run_concurrent(datas, c, args.warmup, in_process_worker(bundle, datas))
        log(f"  in-process c{c}: {json.dumps(local_cn)}")
        log(f"http, concurrency {c}")
        http_cn = run_concurrent(datas, c, args.warmup, http_worker(url, datas), timing_starts("cn"))
        http_cn = with_batching(http_cn, counts["cn"], batch_counts(url)) | {"server_side": _quantiles(app.seconds)}
        log(f"  http c{c}: {json.dumps(http_cn)}")
    overhead = (http_c1["p50_ms"] - local_c1["p50_ms"]) / local_c1["p50_ms"]
    breakdown = {  # differences of medians: approximate, but they say on which side of the socket the time goes
        "in_app_ms": round(http_c1["server_side"]["p50_ms"] - local_c1["p50_ms"], 2),
        "client_and_transport_ms": round(http_c1["p50_ms"] - http_c1["server_side"]["p50_ms"], 2),
    }
    gain = http_cn["throughput_per_s"] / http_c1["throughput_per_s"]
    result = {
        "http_overhead_c1": round(overhead, 4),
        "target_http_overhead_c1": TARGET_OVERHEAD,
        "meets_overhead_target": overhead <= TARGET_OVERHEAD,
        "http_overhead_c1_p50_ms": breakdown,
        f"batching_gain_c{c}": round(gain, 3),
        "target_batching_gain": f"> {TARGET_BATCHING_GAIN}",
        "meets_batching_target": gain > TARGET_BATCHING_GAIN,
        f"in_process_gain_c{c}": round(local_cn["throughput_per_s"] / local_c1["throughput_per_s"], 3),
        "in_process": {"c1": local_c1, f"c{c}": local_cn},
        "http": {"c1": http_c1, f"c{c}": http_cn},
        "answers_agree_c1": agreement(local_answers, http_answers),
        "params": {
            "n": args.n,
            "warmup": args.warmup,
            "concurrency": c,
            "backbone": args.backbone,
            "image_size": args.image_size,
            "photo_size": list(PHOTO_SIZE),
            "jpeg_quality": args.quality,
            "mean_jpeg_bytes": int(np.mean([len(d) for d in datas])),
            "seed": args.seed,
            "groups": {group: len(names) for group, names in species.items()},
            "model_versions": versions,
            "serve_config": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms},
            "server": "uvicorn in a thread of this process (as the serving tests run it), client threads beside it",
        },
    }
    return result


# ---------------------------------------------------------------------------------------------- prediction log


def predlog_round(config: ServeConfig, lake: Lake, datas: Sequence[bytes], args: argparse.Namespace) -> dict:
    """One endpoint (its own app, started and closed here) at concurrency C: p50 and its log counters."""
    with serving(create_app(ENV, config=config, lake=lake)) as url:
        wait_ready(url)
        cn = run_concurrent(datas, args.concurrency, args.warmup, http_worker(url, datas))
        log_stats = batch_counts(url).get("prediction_log")
    return {"p50_ms": cn["p50_ms"], "log": log_stats}


def run_predlog(
    args: argparse.Namespace, datas: Sequence[bytes], species: dict[str, list[str]], settings: Settings
) -> dict:
    """p50 latency with the prediction log off vs on.

    Concurrency 1: both endpoints up, requests alternating photo by photo between them (`run_paired`), so
    the drift of a shared machine's load hits both alike; `--repeats` rounds, median of the rounds' p50s.
    Concurrency C: one endpoint at a time, rounds alternating which goes first (the log's background threads
    then cost only the endpoint that has them).
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}-earthsnap-"
    registry = RegistryClient(experiment=f"bench-serve-log-{prefix[6:14]}")
    log(f"predlog: registering the hierarchy under {prefix!r}")
    register_hierarchy(registry, prefix, species, args.backbone, args.image_size)
    off = ServeConfig(model_prefix=prefix, log_predictions=False, spool_dir=str(settings.home / "spool"))
    configs = {"off": off, "on": dataclasses.replace(off, log_predictions=True)}
    lake = Lake.from_settings(settings)
    c, sent_on = args.concurrency, 0
    paired: list[dict[str, dict]] = []
    clocks = {name: ServerClock(create_app(ENV, config=config, lake=lake)) for name, config in configs.items()}
    with serving(clocks["off"]) as off_url, serving(clocks["on"]) as on_url:
        wait_ready(off_url)
        wait_ready(on_url)
        for index in range(args.repeats):
            for clock in clocks.values():
                clock.seconds.clear()
            (off_c1, _), (on_c1, _) = run_paired(
                datas, args.warmup, http_worker(off_url, datas), http_worker(on_url, datas)
            )
            sent_on += len(datas) + min(args.warmup, len(datas))
            paired.append(
                {
                    name: {"p50_ms": stats["p50_ms"], "in_app_p50_ms": _quantiles(clocks[name].seconds)["p50_ms"]}
                    for name, stats in (("off", off_c1), ("on", on_c1))
                }
            )
            log(f"  c1 round {index + 1}: {json.dumps(paired[-1])}")
    sequential: list[dict[str, dict]] = []
    for index in range(args.repeats):
        order = ("off", "on") if index % 2 == 0 else ("on", "off")
        sequential.append({name: predlog_round(configs[name], lake, datas, args) for name in order})
        sent_on += len(datas) + min(args.warmup * c, len(datas))
        log(f"  c{c} round {index + 1}: {json.dumps(sequential[-1])}")

    def median(rounds: list[dict[str, dict]], name: str, field: str) -> float:
        return round(statistics.median(r[name][field] for r in rounds), 2)

    p50_off, p50_on = median(paired, "off", "p50_ms"), median(paired, "on", "p50_ms")
    in_app_off, in_app_on = median(paired, "off", "in_app_p50_ms"), median(paired, "on", "in_app_p50_ms")
    cn_off, cn_on = median(sequential, "off", "p50_ms"), median(sequential, "on", "p50_ms")
    keys = lake.blobs.list_keys(lake.bucket, f"predictions/{ENV}/")
    rows = sum(pq.read_metadata(io.BytesIO(lake.blobs.read(lake.bucket, k))).num_rows for k in keys)
    overhead = (p50_on - p50_off) / p50_off
    return {
        "p50_off_ms": p50_off,
        "p50_on_ms": p50_on,
        "overhead_p50": round(overhead, 4),
        "target_overhead_p50": TARGET_LOG_OVERHEAD,
        "meets_log_overhead_target": overhead <= TARGET_LOG_OVERHEAD,
        "in_app_p50_off_ms": in_app_off,
        "in_app_p50_on_ms": in_app_on,
        "overhead_in_app_p50": round((in_app_on - in_app_off) / in_app_off, 4),
        f"c{c}_p50_off_ms": cn_off,
        f"c{c}_p50_on_ms": cn_on,
        f"overhead_p50_c{c}": round((cn_on - cn_off) / cn_off, 4),
        "rows_in_lake": rows,
        "requests_answered_with_log_on": sent_on,
        "every_answer_logged": rows == sent_on,
        "rounds": {"c1_paired": paired, f"c{c}_sequential": sequential},
        "params": {
            "n": len(datas),
            "repeats": args.repeats,
            "concurrency": c,
            "lake": "the bench stack's SeaweedFS (real S3 on localhost)",
            "log": {"flush_interval_s": off.log_flush_interval_s, "batch_rows": off.log_batch_rows},
            "keep_photos": off.keep_photos,
            "statistic": "median over rounds of each round's p50",
        },
    }


if __name__ == "__main__":
    sys.exit(main())
