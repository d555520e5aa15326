"""Comparing an answer with a seed's literal example, field by field."""

from __future__ import annotations

from typing import Any

_KINDS: dict[type, str] = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def kind(value: Any) -> str:
    """The JSON type of a decoded value (`null` for None)."""
    return "null" if value is None else _KINDS[type(value)]


def assert_like(ours: Any, seed: Any, path: str = "$") -> None:
    """Every field of the seed's example is in `ours` with the same JSON type, recursively; arrays are
    compared item by item against the seed's first item. Extra fields in `ours` are allowed (our
    answers are supersets). `created` and `elapsed` must be numbers like the seed's."""
    assert kind(ours) == kind(seed), f"{path}: {kind(ours)} where the seed has {kind(seed)} ({ours!r})"
    if isinstance(seed, dict):
        for name, value in seed.items():
            assert name in ours, f"{path}.{name}: missing (the seed's answer has it)"
            assert_like(ours[name], value, f"{path}.{name}")
    elif isinstance(seed, list) and seed:
        assert ours, f"{path}: empty where the seed has items"
        for index, item in enumerate(ours):
            assert_like(item, seed[0], f"{path}[{index}]")
