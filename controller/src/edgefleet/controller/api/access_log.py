"""Keeps secrets out of the HTTP access log: the values of query parameters that carry one (a
token someone put in a URL, the signature of a device's artifact URL) are replaced before the
line is written. The API never asks for a token in a URL; this covers clients that send one."""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

ACCESS_LOGGER = "uvicorn.access"
SECRET_PARAMS = frozenset({"token", "access_token", "api_token", "password", "sig"})
REDACTED = "[redacted]"


def redact_query(path: str) -> str:
    """``path`` with the value of every secret query parameter replaced by ``[redacted]``."""
    base, question, query = path.partition("?")
    if not question:
        return path
    pairs = []
    for pair in query.split("&"):
        key, equals, _ = pair.partition("=")
        secret = unquote_plus(key).strip().lower() in SECRET_PARAMS
        pairs.append(f"{key}={REDACTED}" if equals and secret else pair)
    return f"{base}?{'&'.join(pairs)}"


class RedactSecretsFilter(logging.Filter):
    """Rewrites the arguments of access-log records (uvicorn passes the path as one of them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) and "?" in arg else arg
                for arg in record.args
            )
        return True


def install_access_log_redaction(logger_name: str = ACCESS_LOGGER) -> None:
    """Add the filter to the access logger once (idempotent)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactSecretsFilter) for f in logger.filters):
        logger.addFilter(RedactSecretsFilter())
