"""KEY=VALUE numbers for the router's commands (fit, distill): one parser for their config dataclasses."""

from __future__ import annotations

from dataclasses import fields

from llora_store.errors import BadInput


def parse_numbers(cls, pairs: list[str]):
    """An instance of dataclass ``cls`` with each ``key=value`` of ``pairs`` set (int fields as int, the rest as
    float); raises ``BadInput`` naming a malformed item, an unknown key or a value that is not a number."""
    cfg = cls()
    types = {f.name: f.type for f in fields(cls)}
    for item in pairs:
        if "=" not in item:
            raise BadInput(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        if key not in types:
            raise BadInput(f"unknown key '{key}'; keys: {', '.join(types)}")
        try:
            setattr(cfg, key, int(value) if types[key] in ("int", int) else float(value))
        except ValueError:
            raise BadInput(f"'{key}' must be a number, got {value!r}") from None
    return cfg
