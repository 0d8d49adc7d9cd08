"""Hypothesis strategies for hostile wire payloads: any JSON value, and valid bodies with one
node replaced by one (what a buggy or hostile device can put in a message)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

from support.samples import NOW, SHA_A

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(
        ["", "pi-001", SHA_A, NOW.isoformat(), "9999-12-31T23:59:59-01:00", "onnxruntime", "\x00"]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value = copy.deepcopy(value)
    node = value
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return value


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` (a valid body) with one node, or the whole body, replaced by any JSON value."""
    path = draw(st.sampled_from(list(_paths(base))))
    return _replace(base, path, draw(json_values))
