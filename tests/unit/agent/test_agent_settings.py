"""edgefleet.agent.settings: one model, TOML plus environment, one-line errors."""

from __future__ import annotations

import pytest

from edgefleet.agent.errors import ConfigError
from edgefleet.agent.settings import load_settings


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "key.pem"
    path.write_text("not checked here")
    return path


def write(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_file_and_env(tmp_path, key, monkeypatch):
    path = write(
        tmp_path,
        f'device_id = "pi-1"\ncontroller_key = "{key}"\ndata_dir = "{tmp_path}"\n'
        'broker_url = "mqtts://broker.example:8883"\nlabels = { site = "a" }\n',
    )
    monkeypatch.setenv("EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S", "2.5")
    settings = load_settings(path)
    assert settings.telemetry_interval_s == 2.5
    assert settings.broker_tls
    assert settings.broker_port == 8883
    assert settings.labels == {"site": "a"}
    assert settings.http_address == ("127.0.0.1", 8470)


def test_env_only(tmp_path, key, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_AGENT_DEVICE_ID", "pi-2")
    monkeypatch.setenv("EDGEFLEET_AGENT_CONTROLLER_KEY", str(key))
    monkeypatch.setenv("EDGEFLEET_AGENT_DATA_DIR", str(tmp_path))
    assert load_settings(None).device_id == "pi-2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('device_id = "pi-1"\nbogus = 1\n', "bogus: unknown key"),
        ('device_id = "bad/id"\n', "invalid device id"),
        ("device_id = \n", "not valid TOML"),
        ('device_id = "pi-1"\nbroker_url = "http://x"\n', "must look like mqtt://host:port"),
        ('device_id = "pi-1"\nhttp_bind = "nope"\n', "must be host:port"),
    ],
)
def test_errors_are_one_line(tmp_path, key, text, message):
    path = write(tmp_path, text + f'controller_key = "{key}"\ndata_dir = "{tmp_path}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_files(tmp_path, key):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml")
    path = write(
        tmp_path,
        f'device_id = "p"\ncontroller_key = "{key}"\ndata_dir = "{tmp_path}"\n'
        'tls_ca_file = "/nonexistent/ca.pem"\n',
    )
    with pytest.raises(ConfigError, match="tls_ca_file: file not found"):
        load_settings(path)


def test_env_lists_and_mappings_are_json_and_names_any_case(tmp_path, key, monkeypatch):
    path = write(
        tmp_path, f'device_id = "pi-1"\ncontroller_key = "{key}"\ndata_dir = "{tmp_path}"\n'
    )
    monkeypatch.setenv("EDGEFLEET_AGENT_LABELS", '{"board": "pi4", "site": "b"}')
    monkeypatch.setenv("EDGEFLEET_AGENT_RUNTIMES", '["litert"]')
    monkeypatch.setenv("edgefleet_agent_durable_writes", "false")
    settings = load_settings(path)
    assert settings.labels == {"board": "pi4", "site": "b"}
    assert settings.runtimes == ["litert"]
    assert settings.durable_writes is False


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EDGEFLEET_AGENT_TELEMETRY_INTERVL_S", "3", "no setting is called 'telemetry_intervl_s'"),
        ("EDGEFLEET_AGENT_LABELS", "board=pi4", "EDGEFLEET_AGENT_LABELS: a list or mapping"),
        ("EDGEFLEET_AGENT_LABELS", '["pi4"]', "labels: Input should be a valid dictionary"),
        ("EDGEFLEET_AGENT_KEEPALIVE_S", "-1", "keepalive_s: Input should be greater than 0"),
    ],
)
def test_bad_env_is_one_clear_line(tmp_path, key, monkeypatch, variable, value, message):
    path = write(
        tmp_path, f'device_id = "pi-1"\ncontroller_key = "{key}"\ndata_dir = "{tmp_path}"\n'
    )
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
