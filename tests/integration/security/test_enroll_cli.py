"""``edgefleet pki init`` -> ``device init-broker`` -> broker -> ``controller-identity`` ->
``device enroll`` -> the real agent session connects with the bundle as is -> ``device revoke``."""

from __future__ import annotations

import queue
import tomllib
import uuid

import pytest
from typer.testing import CliRunner

from edgefleet.agent.mqtt_session import MqttSession
from edgefleet.agent.settings import load_settings
from edgefleet.controller.cli import app
from edgefleet.controller.security.dynsec import DynsecAdmin
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.identities import BrokerIdentities
from edgefleet.controller.security.paths import SecurityPaths
from edgefleet.shared.signing import load_public_key
from edgefleet.shared.topics import DeviceChannel, Topics
from support.mosquitto import free_port
from support.mqtt import wait_until
from support.secure_broker import broker_from_cli, probe, run_edgefleet, try_connect

runner = CliRunner()
edgefleet = run_edgefleet


@pytest.fixture
def cli_broker(tmp_path, monkeypatch):
    data = tmp_path / "controller"
    paths = SecurityPaths(data)
    broker = broker_from_cli(data, tmp_path / "broker")
    # As an operator configures it: the admin password goes only to the broker named here.
    monkeypatch.setenv("EDGEFLEET_BROKER_ADMIN_URL", broker.plain_url)
    broker.start()
    yield broker, paths
    broker.kill()


def test_enrolled_bundle_runs_the_agent_over_tls_until_revoked(cli_broker, tmp_path):
    broker, paths = cli_broker
    data = str(paths.data_dir)
    root = f"edgefleet-test/{uuid.uuid4().hex[:12]}/v1"
    topics = Topics(root)
    admin = ["--admin-url", broker.plain_url, "--topic-root", root, "--data-dir", data]
    edgefleet("device", "controller-identity", *admin)
    out = tmp_path / "bundle"
    edgefleet(
        "device", "enroll", "pi-7", "--labels", "site=plant-3,tier=canary", "--out", str(out),
        "--broker-url", broker.tls_url, *admin,
    )  # fmt: skip

    for name in ("agent.toml", "controller.pub", "broker-ca.crt"):
        assert (out / name).is_file()
    assert (out / "agent.toml").stat().st_mode & 0o777 == 0o600
    assert paths.signing_key.stat().st_mode & 0o777 == 0o600
    settings = load_settings(out / "agent.toml")
    assert settings.device_id == "pi-7"
    assert settings.broker_tls
    assert settings.topic_root == root
    assert settings.labels == {"site": "plant-3", "tier": "canary"}
    assert load_public_key(settings.controller_key) == load_public_key(paths.signing_pub)
    assert settings.tls_ca_file is not None
    assert settings.tls_ca_file.read_bytes() == paths.ca_cert.read_bytes()

    controller = BrokerCredentials.load(paths.controller_credentials)
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    session = MqttSession(
        settings,
        on_message=lambda topic, payload: received.put((topic, payload)),
        on_connected=lambda: None,
        will=(topics.state("pi-7"), b"offline"),
    )
    session.start()
    try:
        assert session.connected.wait(10), session.last_refusal
        assert session.subscribe(topics.desired("pi-7"), timeout=5)
        assert session.subscribe(topics.group_desired("site=plant-3"), timeout=5)
        with probe(broker.tls_endpoint(controller)) as ctl:
            ctl.subscribe(topics.all_devices(DeviceChannel.TELEMETRY))
            session.publish(topics.telemetry("pi-7"), b"hello from pi-7")
            ctl.wait_for(lambda r: r.payload == b"hello from pi-7")
            ctl.publish(topics.group_desired("site=plant-3"), b"group manifest")
            ctl.publish(topics.desired("pi-7"), b"manifest")
        assert received.get(timeout=5) == (topics.group_desired("site=plant-3"), b"group manifest")
        assert received.get(timeout=5) == (topics.desired("pi-7"), b"manifest")

        edgefleet("device", "revoke", "pi-7", *admin)
        wait_until(lambda: session.last_refusal is not None, timeout=15)
        assert not session.connected.is_set()
    finally:
        session.stop()
    old = BrokerCredentials("pi-7", settings.password.get_secret_value())  # type: ignore[union-attr]
    assert not try_connect(broker.tls_endpoint(old)).accepted

    # Enrolling again refuses to overwrite the bundle unless forced, and issues a new password.
    refused = runner.invoke(app, ["device", "enroll", "pi-7", "--out", str(out), *admin])
    assert refused.exit_code == 1
    assert "already exists" in refused.output
    edgefleet("device", "enroll", "pi-7", "--out", str(out), "--force",
              "--broker-url", broker.tls_url, *admin)  # fmt: skip
    renewed = load_settings(out / "agent.toml")
    assert renewed.password != settings.password
    new = BrokerCredentials("pi-7", renewed.password.get_secret_value())  # type: ignore[union-attr]
    assert try_connect(broker.tls_endpoint(new)).accepted


def test_enroll_defaults_the_broker_url_to_the_certificate_name(cli_broker, tmp_path):
    broker, paths = cli_broker
    admin = ["--admin-url", broker.plain_url, "--data-dir", str(paths.data_dir)]
    edgefleet("device", "enroll", "pi-8", *admin)
    settings = load_settings(paths.bundle_dir("pi-8") / "agent.toml")
    assert settings.broker_url == "mqtts://localhost:8883"
    assert settings.topic_root == "edgefleet/v1"


def test_enroll_fails_cleanly_when_the_broker_cannot_be_reached(cli_broker, tmp_path, monkeypatch):
    _, paths = cli_broker
    out = tmp_path / "bundle"
    monkeypatch.setenv("EDGEFLEET_BROKER_ADMIN_URL", f"mqtt://127.0.0.1:{free_port()}")
    result = runner.invoke(
        app, ["device", "enroll", "pi-9", "--out", str(out), "--data-dir", str(paths.data_dir)]
    )
    assert result.exit_code == 1
    assert "broker" in result.output
    assert not (out / "agent.toml").exists()


def test_a_bundle_that_cannot_be_written_leaves_no_identity_behind(cli_broker, tmp_path):
    broker, paths = cli_broker
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the bundle directory should go")
    admin = ["--admin-url", broker.plain_url, "--data-dir", str(paths.data_dir)]
    result = runner.invoke(app, ["device", "enroll", "pi-10", "--out", str(blocker), *admin])
    assert result.exit_code == 1
    with DynsecAdmin(broker.admin_endpoint()) as admin_session:
        assert not BrokerIdentities(admin_session, Topics()).is_enrolled("pi-10")


def test_enroll_tells_the_config_path_on_the_device_not_the_bundle_path(cli_broker, tmp_path):
    broker, paths = cli_broker
    admin = ["--admin-url", broker.plain_url, "--data-dir", str(paths.data_dir)]
    out = tmp_path / "bundle"
    said = edgefleet(
        "device", "enroll", "pi-9", "--out", str(out), "--device-dir", "/etc/edgefleet-agent",
        "--agent-data-dir", "/var/lib/edgefleet-agent", *admin,
    )  # fmt: skip
    assert f"bundle: {out}" in said
    assert "on the device: edgefleet-agent run --config /etc/edgefleet-agent/agent.toml" in said
    written = tomllib.loads((out / "agent.toml").read_text())  # its paths are the device's too
    assert written["controller_key"] == "/etc/edgefleet-agent/controller.pub"
    assert written["tls_ca_file"] == "/etc/edgefleet-agent/broker-ca.crt"
    assert written["data_dir"] == "/var/lib/edgefleet-agent"
