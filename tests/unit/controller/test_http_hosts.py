"""Host names the API answers to: parsing Host headers, allow-list entries and the settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet.controller.config import get_settings
from edgefleet.controller.http_hosts import (
    HostAllowList,
    HostName,
    HostNameError,
    is_loopback,
    parse_host,
    served_hosts,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("localhost", HostName("localhost")),
        ("LocalHost.:8080", HostName("localhost", 8080)),
        ("127.0.0.1:1", HostName("127.0.0.1", 1)),
        ("[::1]", HostName("::1")),
        ("[0:0::1]:65535", HostName("::1", 65535)),
        ("controller.example", HostName("controller.example")),
    ],
)
def test_host_headers_parse_to_a_normal_form(header: str, expected: HostName) -> None:
    assert parse_host(header) == expected


@pytest.mark.parametrize(
    "header",
    ["", "::1", "[::1", "[::1]x", "[nope]:80", "a:b", "a:0", "a:65536", "a b", "*.x.example",
     "x..example", "évil.example", "a:80:80", "-"],
)  # fmt: skip
def test_malformed_host_headers_are_refused(header: str) -> None:
    with pytest.raises(HostNameError):
        parse_host(header)
    assert not HostAllowList(["localhost"]).allows(header)


def test_the_allow_list_matches_names_ports_and_subdomains() -> None:
    allowed = HostAllowList(["localhost", "api.example:8443", "*.fleet.example", "::1"])
    for header in ("localhost", "localhost:1", "api.example:8443", "eu.fleet.example:80",
                   "a.b.fleet.example", "[::1]:9"):  # fmt: skip
        assert allowed.allows(header), header
    for header in (None, "api.example", "api.example:443", "fleet.example", "xfleet.example",
                   "fleet.example.evil", "127.0.0.1", "[::2]"):  # fmt: skip
        assert not allowed.allows(header), header
    assert str(allowed) == "localhost, api.example:8443, *.fleet.example, [::1]"


def test_served_hosts_add_loopback_the_bind_address_and_the_public_host() -> None:
    hosts = served_hosts("10.1.2.3", ["ctl.example"], "https://edge.example/")
    assert str(hosts) == "127.0.0.1, localhost, [::1], ctl.example, 10.1.2.3, edge.example"
    wildcard = served_hosts("0.0.0.0", [], None)
    assert str(wildcard) == "127.0.0.1, localhost, [::1]"
    assert not wildcard.allows("0.0.0.0:8080")
    assert str(served_hosts("::", [], None)) == "127.0.0.1, localhost, [::1]"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("10.0.0.1", False), ("broker.invalid", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_settings_take_hosts_comma_separated_or_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HTTP_ALLOWED_HOSTS", " a.example, *.b.example:8443 ,,")
    assert get_settings().http_allowed_hosts == ["a.example", "*.b.example:8443"]
    monkeypatch.setenv("EDGEFLEET_HTTP_ALLOWED_HOSTS", '["c.example"]')
    assert get_settings().http_allowed_hosts == ["c.example"]
    monkeypatch.setenv("EDGEFLEET_HTTP_ALLOWED_HOSTS", "ok.example,not a host")
    with pytest.raises(ValidationError, match="'not a host' is not a host name"):
        get_settings()
    monkeypatch.delenv("EDGEFLEET_HTTP_ALLOWED_HOSTS")
    assert get_settings().http_allowed_hosts == []
    assert get_settings().http_max_body_bytes == 1024 * 1024
