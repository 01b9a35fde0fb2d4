"""YAML with line numbers, so every config or scenario error can name file, line, field and value."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

Path_ = tuple[Any, ...]


def yaml_with_lines(
    text: str, source: str, error: Callable[[str, list[str]], Exception]
) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML into plain data plus the line of each path; syntax errors raise `error`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(source, [f"{where}: YAML syntax error: {problem}"]) from None
    lines: dict[Path_, int] = {}
    if root is None:
        return None, lines
    return _to_python(root, (), lines), lines


def _to_python(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    """Turn a composed YAML node into plain data, remembering the line of each path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = yaml.safe_load(yaml.serialize(knode)) if not isinstance(knode, yaml.ScalarNode) else knode.value
            out[key] = _to_python(vnode, (*path, key), lines)
            lines[(*path, key)] = knode.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, (*path, i), lines) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


MSGSPEC_PATH = re.compile(r"\.([A-Za-z_][\w\-]*)|\[(\d+)\]")


def parse_msgspec_path(text: str) -> tuple[Any, ...]:
    return tuple(m.group(1) if m.group(1) is not None else int(m.group(2)) for m in MSGSPEC_PATH.finditer(text))


def fmt_path(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _lookup(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


class Problems:
    def __init__(self, source: str, data: Any, lines: dict[tuple[Any, ...], int]):
        self.source, self.data, self.lines = source, data, lines
        self.errors: list[str] = []

    def add(self, path: tuple[Any, ...], message: str, show_value: bool = True) -> None:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        where = f"{self.source}:{line}" if line else self.source
        value = _lookup(self.data, path)
        shown = f" (value {value!r})" if show_value and value is not None and not isinstance(value, dict | list) else ""
        self.errors.append(f"{where}: {fmt_path(path)}: {message}{shown}")
