"""YAML loading that remembers where every key and item came from.

Admins edit YAML by hand; an error message that names the file, the line and the key is
the difference between a two-second fix and a support ticket of our own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from config.problems import Problem

KeyPath = tuple[str | int, ...]

# libyaml's loader when PyYAML was built with it: several times faster on big files.
Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class LocatedYaml:
    """Parsed YAML data plus a map from key path to the 1-based line it starts on."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    line_offset: int = 0

    def line(self, *path: str | int) -> int | None:
        """The line of ``path``, or of its nearest located ancestor."""
        p: KeyPath = tuple(path)
        while True:
            if p in self.lines:
                return self.lines[p] + self.line_offset
            if not p:
                return None
            p = p[:-1]

    def problem(self, path: KeyPath, message: str) -> Problem:
        """A :class:`Problem` located at ``path`` in this file."""
        return Problem(self.file, self.line(*path), ".".join(str(k) for k in path), message)


def _walk(node: yaml.Node, path: KeyPath, out: dict[KeyPath, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            out[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), out)
            # A key's own line beats its value's (a block value starts on the next line).
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), out)


def parse_yaml(
    text: str, file: str, line_offset: int = 0
) -> tuple[LocatedYaml | None, list[Problem]]:
    """Parse ``text``; return the located data or the syntax problem with its line."""
    try:
        node = yaml.compose(text, Loader=Loader)
        data = yaml.load(text, Loader=Loader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = (mark.line + 1 + line_offset) if mark is not None else None
        msg = f"invalid YAML: {exc.problem or exc.context}"
        return None, [Problem(file, line, "", msg)]
    except yaml.YAMLError as exc:
        return None, [Problem(file, None, "", f"invalid YAML: {exc}")]
    except ValueError as exc:  # an impossible unquoted date such as 2025-02-30
        node = yaml.compose(text, Loader=Loader)
        where = _bad_date(node, ()) if node is not None else None
        if where is None:
            return None, [Problem(file, None, "", f"invalid YAML value: {exc}")]
        path, line, value = where
        key = ".".join(str(k) for k in path)
        msg = f"invalid date {value!r}: {exc}"
        return None, [Problem(file, line + line_offset, key, msg)]
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return LocatedYaml(file, data, lines, line_offset), []


def _bad_date(node: yaml.Node, path: KeyPath) -> tuple[KeyPath, int, str] | None:
    """The first scalar that YAML reads as a date but is not one (path, line, text)."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:timestamp":
            try:
                yaml.SafeLoader("").construct_yaml_timestamp(node)
            except ValueError:
                return path, node.start_mark.line + 1, str(node.value)
        return None
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            found = _bad_date(value_node, (*path, str(key_node.value)))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _bad_date(item, (*path, i))
            if found:
                return found
    return None


def load_yaml(path: Path) -> tuple[LocatedYaml | None, list[Problem]]:
    """Read and parse a YAML file; unreadable or non-UTF-8 files become problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(str(path), None, "", "file not found")]
    except UnicodeDecodeError as exc:
        return None, [Problem(str(path), None, "", f"not UTF-8 text: {exc.reason}")]
    except OSError as exc:
        return None, [Problem(str(path), None, "", f"cannot read: {exc.strerror}")]
    return parse_yaml(text, str(path))
