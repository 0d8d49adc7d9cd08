"""``edgefleet device`` sends the broker admin password only to the broker the controller's
settings name, over TLS unless it is on loopback and its URL says plain: against a real secured
mosquitto and a second, unrelated one on this machine (the decoy) that must never see it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.controller.cli import app
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.identities import ADMIN_USERNAME
from edgefleet.controller.security.paths import SecurityPaths
from support.mosquitto import MosquittoBroker
from support.secure_broker import SecureBroker, broker_from_cli, try_connect

runner = CliRunner()


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SecureBroker, Path]]:
    for name in ("EDGEFLEET_BROKER_URL", "EDGEFLEET_BROKER_ADMIN_URL", "EDGEFLEET_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "controller"
    broker = broker_from_cli(data, tmp_path / "broker")
    broker.start()
    yield broker, data
    broker.kill()


def device(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["device", *args])
    return result.exit_code, " ".join(result.output.split())  # unwrapped


def test_the_admin_password_never_goes_to_an_unconfigured_broker(
    secured: tuple[SecureBroker, Path], own_broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, data = secured
    decoy = own_broker  # another broker on this machine, as on a shared host
    code, output = device("controller-identity", "--data-dir", str(data))
    assert code == 1
    assert "configuration names no broker" in output
    monkeypatch.setenv("EDGEFLEET_BROKER_ADMIN_URL", broker.plain_url)
    code, output = device("controller-identity", "--admin-url", decoy.url, "--data-dir", str(data))
    assert code == 1
    assert "not the broker the controller's configuration names" in output
    assert "--trust-unconfigured-admin-url" in output
    code, output = device(
        "controller-identity", "--admin-url", "mqtt://broker.invalid:1883",
        "--trust-unconfigured-admin-url", "--data-dir", str(data),
    )  # fmt: skip
    assert code == 1
    assert "clear text" in output
    assert ADMIN_USERNAME not in decoy.log()  # it was never even connected to
    # The configured broker (its loopback listener, configured as such) gets it.
    code, output = device("controller-identity", "--data-dir", str(data))
    assert code == 0, output
    controller = BrokerCredentials.load(SecurityPaths(data).controller_credentials)
    assert try_connect(broker.tls_endpoint(controller)).accepted


def test_the_configured_tls_broker_is_the_default_admin_url(
    secured: tuple[SecureBroker, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker, data = secured
    monkeypatch.setenv("EDGEFLEET_BROKER_URL", broker.tls_url)  # the controller's own broker
    code, output = device("controller-identity", "--data-dir", str(data))
    assert code == 0, output
    bundle = tmp_path / "bundle"
    code, output = device(
        "enroll",
        "pi-1",
        "--out",
        str(bundle),
        "--broker-url",
        broker.tls_url,
        "--data-dir",
        str(data),
    )
    assert code == 0, output
    assert (bundle / "agent.toml").is_file()
    code, output = device(
        "revoke", "pi-1", "--admin-url", broker.plain_url, "--data-dir", str(data)
    )
    assert code == 1  # the plain listener is not what the settings name
    assert "--trust-unconfigured-admin-url" in output
    code, output = device(
        "revoke", "pi-1", "--admin-url", broker.plain_url, "--trust-unconfigured-admin-url",
        "--data-dir", str(data),
    )  # fmt: skip
    assert code == 0, output


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_init_broker_makes_a_private_data_dir_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    data = tmp_path / "fresh" / "controller"
    previous = os.umask(umask)
    try:
        code, output = device("init-broker", "--data-dir", str(data))
    finally:
        os.umask(previous)
    assert code == 0, output
    paths = SecurityPaths(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.broker_dir.stat().st_mode) == 0o700
    for secret in (paths.admin_credentials, paths.dynsec_bootstrap):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
