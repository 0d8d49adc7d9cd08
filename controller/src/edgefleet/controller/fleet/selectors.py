"""Label selectors such as ``site=plant-3,accel=edgetpu``: parsing and matching, pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_TERM = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(!=|=)\s*([A-Za-z0-9_.\-/]*)\s*$")
# Facts about a device that selectors may name besides its labels.
FACT_KEYS = ("id", "arch", "runtime", "accel")


class SelectorError(ValueError):
    """A selector string that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Term:
    key: str
    value: str
    negated: bool


@dataclass(frozen=True, slots=True)
class Selector:
    """All terms must hold. ``*`` or an empty string selects every device."""

    terms: tuple[Term, ...]
    text: str

    def matches(self, labels: Mapping[str, str], facts: Mapping[str, set[str]]) -> bool:
        for term in self.terms:
            values = facts.get(term.key) if term.key in FACT_KEYS else None
            if values is None:
                label = labels.get(term.key)
                values = {label} if label is not None else set()
            hit = term.value in values
            if hit == term.negated:
                return False
        return True


def parse_selector(text: str) -> Selector:
    """Parse ``key=value,key!=value``; ``*`` or ``""`` matches all.

    Keys are device labels, or the facts ``id``, ``arch``, ``runtime`` and ``accel``.

    Raises:
        SelectorError: a term is not ``key=value`` or ``key!=value``.
    """
    stripped = text.strip()
    if stripped in {"", "*"}:
        return Selector((), stripped or "*")
    terms = []
    for raw in stripped.split(","):
        match = _TERM.match(raw)
        if not match:
            raise SelectorError(f"bad selector term {raw!r}: expected key=value or key!=value")
        key, op, value = match.groups()
        terms.append(Term(key, value, op == "!="))
    return Selector(tuple(terms), stripped)


def device_facts(
    device_id: str, arch: str, runtimes: list[str], accelerators: list[str]
) -> dict[str, set[str]]:
    return {
        "id": {device_id},
        "arch": {arch},
        "runtime": set(runtimes),
        "accel": set(accelerators),
    }
