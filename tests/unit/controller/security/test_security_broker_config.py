"""The mosquitto configs in deploy/ are renderings of the generator the tests run brokers from."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.controller.security.broker_config import (
    CONTAINER,
    PRODUCTION,
    find_dynsec_plugin,
    render_mosquitto_conf,
)

DEPLOY = Path(__file__).resolve().parents[4] / "deploy"


@pytest.mark.parametrize(
    ("name", "config"), [("mosquitto.conf", PRODUCTION), ("mosquitto.container.conf", CONTAINER)]
)
def test_deploy_configs_equal_the_rendering(name, config):
    assert (DEPLOY / "mosquitto" / name).read_text() == render_mosquitto_conf(config), (
        f"regenerate deploy/mosquitto/{name} from broker_config.render_mosquitto_conf"
    )


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_production_config_is_closed_by_default():
    lines = _directives(render_mosquitto_conf(PRODUCTION))
    assert "allow_anonymous false" in lines
    assert "allow_anonymous true" not in lines
    listeners = [line for line in lines if line.startswith("listener ")]
    assert listeners == ["listener 1883 127.0.0.1", "listener 8883"]
    tls = lines[lines.index("listener 8883") :]
    assert {"tls_version tlsv1.2", "require_certificate false"} <= set(tls)
    assert any(line.startswith("cafile ") for line in tls)
    assert "include_dir /etc/mosquitto/edgefleet.d" in lines


def test_container_config_has_no_plain_listener():
    lines = _directives(render_mosquitto_conf(CONTAINER))
    assert [line for line in lines if line.startswith("listener ")] == ["listener 8883"]


def test_the_plugin_is_found_here():
    plugin = find_dynsec_plugin()
    assert plugin is not None
    assert plugin.is_file()
