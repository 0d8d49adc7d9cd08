"""The access log never carries a secret query value, whatever a client put in its URL."""

from __future__ import annotations

import logging

import pytest

from edgefleet.controller.api.access_log import (
    RedactSecretsFilter,
    install_access_log_redaction,
    redact_query,
)


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/login?token=s3cret", "/login?token=[redacted]"),
        ("/x?a=1&Token=s3cret&b=2", "/x?a=1&Token=[redacted]&b=2"),
        ("/x?to%6Ben=s3cret", "/x?to%6Ben=[redacted]"),
        ("/a/b?device=pi-1&expires=9&sig=f00", "/a/b?device=pi-1&expires=9&sig=[redacted]"),
        ("/x?access_token=a&password=b", "/x?access_token=[redacted]&password=[redacted]"),
        ("/x?token", "/x?token"),
        ("/x?tokens=keep", "/x?tokens=keep"),
        ("/plain", "/plain"),
    ],
)  # fmt: skip
def test_secret_query_values_are_redacted(path: str, logged: str) -> None:
    assert redact_query(path) == logged


def test_the_filter_rewrites_uvicorn_access_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access")
    install_access_log_redaction("test.access")
    install_access_log_redaction("test.access")
    assert sum(isinstance(f, RedactSecretsFilter) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="test.access"):
        # The arguments uvicorn's access logger passes: client, method, path, version, status.
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/login?token=s3", "1.1", 200)
    assert caplog.messages == ['127.0.0.1:5 - "GET /login?token=[redacted] HTTP/1.1" 200']
