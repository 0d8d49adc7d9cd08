"""Settings come from init overrides, EDGEFLEET_* variables, and an optional TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.controller.config import get_settings


def test_defaults_put_sqlite_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_DATABASE_URL", raising=False)
    settings = get_settings(data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite:///{tmp_path.as_posix()}/controller.db"
    assert settings.artifact_dir == tmp_path / "artifacts"


def test_environment_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "controller.toml"
    toml.write_text(f'data_dir = "{tmp_path / "from-toml"}"\nlatency_runs = 11\n')
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(toml))
    monkeypatch.setenv("EDGEFLEET_LATENCY_RUNS", "17")
    settings = get_settings()
    assert settings.data_dir == tmp_path / "from-toml"
    assert settings.latency_runs == 17  # the environment wins over the file
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert get_settings().effective_database_url == "postgresql+psycopg://u@h/db"
