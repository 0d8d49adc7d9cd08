"""The broker admin password goes only to the configured broker, and in clear text only over
loopback; another URL needs the operator's explicit flag."""

from __future__ import annotations

import pytest

from edgefleet.controller.security.admin_url import (
    TRUST_FLAG,
    AdminUrlRefusedError,
    admin_url_for,
    check_admin_transport,
)

LOCAL = "mqtt://127.0.0.1:1883"
TLS = "mqtts://broker.invalid:8883"


def test_the_default_is_the_configured_admin_url_then_the_broker_url() -> None:
    assert admin_url_for(None, configured_admin=LOCAL, configured_broker=TLS) == LOCAL
    assert admin_url_for(None, configured_admin=None, configured_broker=TLS) == TLS


def test_nothing_configured_is_refused_with_what_to_set() -> None:
    with pytest.raises(AdminUrlRefusedError, match="configuration names no broker") as caught:
        admin_url_for(None, configured_admin=None, configured_broker=None)
    assert "EDGEFLEET_BROKER_ADMIN_URL" in str(caught.value)
    assert "EDGEFLEET_BROKER_URL" in str(caught.value)


@pytest.mark.parametrize(
    "requested",
    [
        LOCAL,
        "mqtt://127.0.0.1",
        TLS,
        "mqtts://BROKER.invalid.",
        "mqtts://broker.invalid",
    ],
)
def test_a_requested_url_naming_a_configured_broker_is_accepted(requested: str) -> None:
    url = admin_url_for(requested, configured_admin=LOCAL, configured_broker=TLS)
    assert url == requested


@pytest.mark.parametrize(
    "requested",
    [
        "mqtt://127.0.0.1:1884",
        "mqtt://localhost:1883",  # may resolve to ::1, where another broker may listen
        "mqtts://other.invalid:8883",
        "mqtts://broker.invalid:8884",
    ],
)
def test_another_broker_needs_the_explicit_flag(requested: str) -> None:
    with pytest.raises(AdminUrlRefusedError) as caught:
        admin_url_for(requested, configured_admin=LOCAL, configured_broker=TLS)
    message = str(caught.value)
    assert f"broker admin URL {requested!r}" in message
    assert f"not the broker the controller's configuration names ({LOCAL}, {TLS})" in message
    assert TRUST_FLAG in message
    trusted = admin_url_for(
        requested, configured_admin=LOCAL, configured_broker=TLS, trust_unconfigured=True
    )
    assert trusted == requested


@pytest.mark.parametrize(
    "url", ["mqtt://broker.invalid:1883", "mqtt://10.0.0.5", "mqtt://[fe80::1]:1883"]
)
def test_plain_text_beyond_loopback_is_refused_even_when_configured_or_trusted(url: str) -> None:
    with pytest.raises(AdminUrlRefusedError, match="clear text"):
        admin_url_for(None, configured_admin=url, configured_broker=None)
    with pytest.raises(AdminUrlRefusedError, match="clear text"):
        admin_url_for(url, configured_admin=url, configured_broker=None)
    with pytest.raises(AdminUrlRefusedError, match="use the broker's TLS listener"):
        admin_url_for(url, configured_admin=None, configured_broker=TLS, trust_unconfigured=True)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1883", "mqtt://", "127.0.0.1:1883", "mqtt://h:99999"]
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(AdminUrlRefusedError):
        check_admin_transport(url)
