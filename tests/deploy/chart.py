"""Render the Helm chart with a real Helm template engine, and small helpers over the result.

Two engines are accepted, both Helm's own Go code:
- a `helm` binary (v3 or v4): $HELM_BIN, else `helm` on PATH;
- the `helm-python-sdk` package (import name `helm_python`): Helm v4's Go SDK built as a C library
  and bundled in the wheel. This is what CI uses: no registry this project can reach ships a Linux
  `helm` binary.
Tests that need an engine skip only when neither is there."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "vgpu-pool"
RELEASE = "vgpu-pool"
NAMESPACE = "gpu-system"


class RenderError(Exception):
    """The chart refused the values (a template `fail`, a bad value, invalid YAML)."""


def _helm_binary() -> str | None:
    explicit = os.environ.get("HELM_BIN")
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    return shutil.which("helm")


def _sdk() -> Any | None:
    try:
        import helm_python
    except (ImportError, OSError):
        return None
    return helm_python


def engine() -> str | None:
    """'binary:<path>', 'sdk:<helm version>', or None when there is no Helm engine at all."""
    binary = _helm_binary()
    if binary:
        return f"binary:{binary}"
    sdk = _sdk()
    if sdk is not None:
        return f"sdk:{sdk.helm_sdk_version()}"
    return None


NO_ENGINE_REASON = (
    "no Helm template engine: install `helm` on PATH (or set HELM_BIN), or `pip install helm-python-sdk` "
    "(CI installs the latter through the test extras)"
)


def _split_sources(text: str) -> dict[str, str]:
    """`helm template` output -> {template path: its manifests}, keyed like the SDK's result."""
    out: dict[str, str] = {}
    current = None
    for doc in text.split("\n---\n"):
        lines = doc.strip("\n").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# Source: "):
                current = line[len("# Source: ") :].strip()
                body = "\n".join(lines[i + 1 :]) + "\n"  # a block scalar at the end keeps its newline
                out[current] = out.get(current, "") + "\n---\n" + body if current in out else body
                break
    return out


@functools.lru_cache(maxsize=64)
def _render_cached(values_json: str, namespace: str, release: str) -> tuple[tuple[str, str], ...]:
    values = json.loads(values_json)
    binary = _helm_binary()
    if binary:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(values, f)
            vpath = f.name
        try:
            proc = subprocess.run(
                [binary, "template", release, str(CHART), "--namespace", namespace, "--values", vpath],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.unlink(vpath)
        if proc.returncode != 0:
            raise RenderError(proc.stderr.strip())
        return tuple(sorted(_split_sources(proc.stdout).items()))  # (`helm template` leaves NOTES.txt out)
    sdk = _sdk()
    if sdk is None:
        raise RuntimeError(NO_ENGINE_REASON)
    try:
        with sdk.Chart.load(str(CHART)) as chart:
            manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    except sdk.HelmError as exc:
        raise RenderError(str(exc)) from None
    return tuple(sorted(manifests.items()))


def render_files(
    values: dict[str, Any] | None = None, namespace: str = NAMESPACE, release: str = RELEASE
) -> dict[str, str]:
    """{template path: rendered text} (NOTES.txt included where the engine renders it)."""
    return dict(_render_cached(json.dumps(values or {}, sort_keys=True), namespace, release))


def render(
    values: dict[str, Any] | None = None, namespace: str = NAMESPACE, release: str = RELEASE
) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders, parsed."""
    objects: list[dict[str, Any]] = []
    for path, text in render_files(values, namespace, release).items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    """The rendered NOTES.txt, or (with a `helm` binary, which does not render it) its template."""
    for path, text in render_files(values).items():
        if path.endswith("NOTES.txt") and text:
            return text
    return (CHART / "templates" / "NOTES.txt").read_text()


def lint(values: dict[str, Any] | None = None) -> list[str]:
    """Findings of `helm lint --strict` (warnings and errors), as strings."""
    binary = _helm_binary()
    if binary:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(values or {}, f)
            vpath = f.name
        try:
            proc = subprocess.run(
                [binary, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--values", vpath],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.unlink(vpath)
        return [] if proc.returncode == 0 else [proc.stdout + proc.stderr]
    sdk = _sdk()
    assert sdk is not None, NO_ENGINE_REASON
    report = sdk.lint(str(CHART), values or {}, strict=True, namespace=NAMESPACE)
    found = [f"{m.get('path')}: {m.get('error')}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    return found + list(report.get("errors") or [])


# --- helpers over rendered objects ------------------------------------------------------------------


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod_spec.get("containers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in {[c['name'] for c in pod_spec.get('containers', [])]}")


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))
