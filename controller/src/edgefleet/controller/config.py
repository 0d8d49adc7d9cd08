"""The controller's settings: one pydantic-settings model (env prefix ``EDGEFLEET_``, optional
TOML file named by ``EDGEFLEET_CONFIG``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edgefleet.controller.http_hosts import parse_host

CONFIG_FILE_ENV = "EDGEFLEET_CONFIG"


class Settings(BaseSettings):
    """Every tunable of the controller. Build it with :func:`get_settings`."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    data_dir: Path = Field(default=Path.home() / ".local" / "share" / "edgefleet")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite in data_dir when unset"
    )
    latency_runs: int = Field(default=50, ge=5, description="timed runs per artifact")
    golden_pairs: int = Field(default=8, ge=1, le=64)
    latency_budget_factor: float = Field(
        default=3.0, gt=1.0, description="budget = p95 on this machine times this factor"
    )
    min_latency_budget_ms: float = Field(default=5.0, gt=0.0)

    # --- service: broker, API, publishing, rollouts (the controller issue) -----------------
    broker_url: str | None = Field(
        default=None,
        description="mqtt://host:port or mqtts://host:port; unset starts an embedded broker",
    )
    broker_admin_url: str | None = Field(
        default=None,
        description="where `edgefleet device` sends the broker admin password (dynamic security), "
        "e.g. the broker's loopback plain listener mqtt://127.0.0.1:1883; broker_url when unset",
    )
    broker_username: str | None = None
    broker_password: SecretStr | None = None
    broker_ca_file: Path | None = Field(default=None, description="CA that signed the broker")
    broker_client_cert: Path | None = None
    broker_client_key: Path | None = None
    embedded_broker_port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    topic_root: str = Field(default="edgefleet/v1")
    share_group: str | None = Field(
        default="controllers", description="MQTT shared-subscription group for ingest (None: off)"
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="URL devices use to reach the API (artifact downloads)"
    )
    api_token: SecretStr | None = Field(
        default=None, description="bearer token for state-changing calls; generated when unset"
    )
    http_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="larger request bodies get 413 unread"
    )
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the API serves besides the loopback ones (127.0.0.1, localhost, "
        "::1), the bind address and public_url's host; 'name' (any port), 'name:port' or "
        "'*.domain'. Env: comma-separated or a JSON list",
    )
    session_ttl_s: float = Field(
        default=12 * 3600.0, gt=0, description="how long a dashboard login lasts"
    )
    signing_key_path: Path | None = Field(
        default=None, description="Ed25519 signing key; <data_dir>/keys/signing.key when unset"
    )
    manifest_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    chunk_size: int = Field(default=128 * 1024, gt=0, le=512 * 1024)
    chunk_coalesce_s: float = Field(
        default=0.5, ge=0, description="requests for a chunk sent this recently wait for the next"
    )
    chunk_gather_s: float = Field(
        default=0.2, ge=0, description="first send of a burst waits for requests quiet this long"
    )
    engine_interval_s: float = Field(default=1.0, gt=0, description="rollout engine tick")
    # 2,000: telemetry rows land in the device index all over; per transaction each page is
    # written once, so larger batches write fewer pages per row (bench/ingest.py: 500 gave a
    # ratio of 0.36, 2,000 to 10,000 gave 0.45 to 0.54)
    ingest_batch: int = Field(default=2000, gt=0, description="messages written per transaction")
    ingest_queue: int = Field(default=50_000, gt=0, description="telemetry queue bound")
    ingest_flush_s: float = Field(default=0.2, gt=0)
    # Telemetry in an ingest worker waits longer for a fuller batch: each transaction updates
    # the last-seen row of every device it holds, so rows per transaction decide the cost per
    # row (bench/ingest.py --controller-only, 1,000 devices: 0.2 s wrote about 550 rows a
    # batch and 5,300-5,500 msg/s, 1 s about 1,100 and 6,600-7,500; with part batches
    # waiting too, every worker batch is full). Events and states keep ingest_flush_s.
    ingest_worker_flush_s: float = Field(
        default=1.0, gt=0, description="longest a telemetry window waits in an ingest worker"
    )
    ingest_workers: int = Field(
        default=0,
        ge=0,
        le=32,
        description="processes that ingest telemetry through the shared subscription "
        "(0: the main process does); one process takes a few thousand windows a second",
    )
    offline_after_s: float = Field(
        default=120.0, gt=0, description="no message for this long counts a device offline"
    )

    # --- untrusted devices: rate limits, dead letters, chunk authorisation (issue 11) -------
    device_telemetry_rate: float = Field(
        default=5.0, gt=0, description="telemetry messages per second and device; more dropped"
    )
    device_telemetry_burst: int = Field(
        default=20, ge=1, description="telemetry a device sends at once"
    )
    device_chunk_request_rate: float = Field(
        default=20.0, gt=0, description="chunk requests per second and device; more dropped"
    )
    device_chunk_request_burst: int = Field(default=100, ge=1)
    rate_limited_devices: int = Field(
        default=100_000, ge=1, description="devices whose rate buckets are kept (idle ones go)"
    )
    dead_letters_keep: int = Field(
        default=10_000, ge=1, description="dead letters kept, the most recently received"
    )
    ingest_retry_initial_s: float = Field(
        default=0.5, gt=0, description="first wait before writing again to a database that failed"
    )
    ingest_retry_max_s: float = Field(default=30.0, gt=0, description="longest such wait")
    chunk_issued_ttl_s: float = Field(
        default=5.0, gt=0, description="how long who-was-issued-what answers are cached"
    )
    chunk_unchecked_max: int = Field(
        default=10_000, ge=1, description="chunk requests waiting for that answer, at most"
    )

    # --- telemetry history and dashboard (issue 6) ------------------------------------------
    telemetry_raw_retention_s: float = Field(
        default=24 * 3600.0, gt=0, description="raw telemetry windows kept this long"
    )
    telemetry_minute_retention_s: float = Field(
        default=14 * 24 * 3600.0, gt=0, description="per-minute rollups kept this long"
    )
    telemetry_hour_retention_s: float = Field(
        default=400 * 24 * 3600.0, gt=0, description="per-hour rollups kept this long"
    )
    telemetry_rollup_interval_s: float = Field(default=60.0, gt=0, description="rollup pass")
    telemetry_rollup_grace_s: float = Field(
        default=120.0, ge=0, description="rollups stay this far behind now for late windows"
    )
    dashboard_refresh_s: float = Field(default=2.0, gt=0, description="dashboard poll interval")
    metrics_group_label: str = Field(
        default="group",
        min_length=1,
        max_length=64,
        description="the device hello label whose value is a device's group in /metrics",
    )
    metrics_max_series: int = Field(
        default=1000, ge=1, le=100_000, description="latency series (model, version, group) kept"
    )

    @field_validator("http_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("http_allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_host(entry, pattern=True)  # HostNameError is a ValueError: a clear message
        return value

    @property
    def key_path(self) -> Path:
        return self.signing_key_path or self.data_dir / "keys" / "signing.key"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "api-token"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'controller.db').as_posix()}"

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get(CONFIG_FILE_ENV)
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


def get_settings(**overrides: object) -> Settings:
    """Settings from init overrides, then ``EDGEFLEET_*`` variables, then the TOML file named by
    ``EDGEFLEET_CONFIG``, then defaults."""
    return Settings(**overrides)  # type: ignore[arg-type]
