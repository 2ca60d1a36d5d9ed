"""Shared checks for the configuration dataclasses' ``from_dict`` (settings read from JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any


def known_keys_only(cls: type, data: Any) -> dict[str, Any]:
    """A copy of ``data`` after checking it is a dictionary of ``cls``'s own fields.

    A misspelt setting in a config file or checkpoint must fail loudly and by name, never be
    dropped silently; the message lists the keys the dataclass does know.
    """
    name = cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{name} data must be a dictionary, got {type(data).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{name} got unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys are {', '.join(sorted(known))}."
        )
    return dict(data)


def nested_from_dict(cls: type, data: Any, parsers: dict[str, Callable[[Any], Any]]) -> Any:
    """``cls(**data)`` after the key check, each nested dictionary built by ``parsers[key]``."""
    d = known_keys_only(cls, data)
    for key, parse in parsers.items():
        if isinstance(d.get(key), dict):
            d[key] = parse(d[key])
    return cls(**d)


def nested_to_dict(obj: Any, nested: tuple[str, ...]) -> dict[str, Any]:
    """JSON-safe dictionary of a dataclass whose ``nested`` fields write their own to_dict()."""
    d = asdict(obj)
    for key in nested:
        d[key] = getattr(obj, key).to_dict()
    return json.loads(json.dumps(d))
