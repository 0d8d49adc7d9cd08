"""The guard's token check, the one it makes before any body is read."""

from __future__ import annotations

from edgefleet.controller.api.guard import (
    ControllerStartingError,
    TokenMissingError,
    TokenWrongError,
    bearer_token,
    token_refusal,
)


def test_bearer_credentials_are_taken_from_the_header() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for header in (None, "", "Bearer", "Bearer ", "Basic abc", "abc"):
        assert bearer_token(header) is None, header


def test_token_refusals_name_what_is_wrong() -> None:
    assert token_refusal("t", "t") is None
    assert isinstance(token_refusal(None, "t"), TokenMissingError)
    assert isinstance(token_refusal("x", "t"), TokenWrongError)
    assert isinstance(token_refusal("t", None), ControllerStartingError)
    missing = token_refusal(None, "t")
    assert missing is not None
    assert missing.status == 401
    assert missing.headers == ((b"www-authenticate", b"Bearer"),)
