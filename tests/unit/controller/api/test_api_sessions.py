"""Dashboard sessions: a cookie derived from the token, never the token, ending on its own."""

from __future__ import annotations

import pytest

from edgefleet.controller.api.sessions import issue_session, session_valid

NOW = 1_800_000_000.0
TTL = 3600.0


def test_a_session_holds_no_token_and_is_valid_until_its_ttl() -> None:
    value = issue_session("the-token", NOW)
    assert "the-token" not in value
    assert session_valid("the-token", value, now=NOW, ttl_s=TTL)
    assert session_valid("the-token", value, now=NOW + TTL, ttl_s=TTL)
    assert not session_valid("the-token", value, now=NOW + TTL + 1, ttl_s=TTL)
    assert session_valid("the-token", value, now=NOW - 30, ttl_s=TTL)  # a clock a bit behind
    assert not session_valid("the-token", value, now=NOW - 3600, ttl_s=TTL)


def test_a_new_token_ends_every_session() -> None:
    value = issue_session("old", NOW)
    assert not session_valid("new", value, now=NOW, ttl_s=TTL)


@pytest.mark.parametrize(
    "forged",
    [None, "", "the-token", "1800000000", "1800000000.", "x.abc", "١٨٠٠٠٠٠٠٠٠.ab",
     "1800000000." + "0" * 64, "9" * 200],
)  # fmt: skip
def test_anything_else_is_no_session(forged: str | None) -> None:
    assert not session_valid("the-token", forged, now=NOW, ttl_s=TTL)


def test_the_issue_time_is_bound_to_the_mac() -> None:
    issued, _, mac = issue_session("the-token", NOW).partition(".")
    moved = f"{int(issued) + 1000}.{mac}"  # stretching a session's life breaks it
    assert not session_valid("the-token", moved, now=NOW, ttl_s=TTL)
