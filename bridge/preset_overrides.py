"""``--set key=value`` overrides for presets: dotted paths into the raw YAML mapping (list
items by index), values parsed as YAML, applied before validation. Every bad override is
reported at once."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from bridge.errors import ConfigError, Problem


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as a YAML scalar/flow value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(Problem("--set", text, "must be key=value",
                                  "e.g. --set prompt=\"a cat\" --set source.kind=shm"))
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(f"--set {key}", value, f"not a YAML value: {exc}",
                                  "quote strings containing ':' or '#'")) from exc
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw preset mapping (list items by index)."""
    data = copy.deepcopy(raw)
    problems: list[Problem] = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                problems.append(Problem(".".join(keys[:depth + 1]), key, "cannot descend here",
                                        "use an existing list index or a mapping key"))
                break
        else:
            last = keys[-1]
            if isinstance(node, list) and last.isdigit() and int(last) < len(node):
                node[int(last)] = value
            elif isinstance(node, dict):
                node[last] = value
            else:
                problems.append(Problem(".".join(keys), value, "cannot set here",
                                        "use an existing list index or a mapping key"))
    if problems:
        raise ConfigError(problems, context="--set")
    return data
