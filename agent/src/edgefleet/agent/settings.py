"""The agent's one settings model: a TOML file and ``EDGEFLEET_AGENT_*`` environment variables.

Every bound and timing constant lives here with a default, so tests shrink them instead of
sleeping. Environment variables override the file; unknown keys are an error. The overlay is
done here rather than by pydantic-settings, whose imports (asyncio, dotenv, csv, subprocess)
would cost a device several MB of resident memory for two dozen lines of work.
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edgefleet.agent.errors import ConfigError
from edgefleet.shared.limits import DEFAULT_LIMITS
from edgefleet.shared.topics import DEFAULT_ROOT, DeviceId, Topics

ENV_PREFIX = "EDGEFLEET_AGENT_"


class AgentSettings(BaseModel):
    """Configuration of one agent (field descriptions double as ``--help`` text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: DeviceId = Field(description="this device's id (one topic level)")
    controller_key: Path = Field(description="pinned controller Ed25519 public key (PEM)")
    data_dir: Path = Field(description="slots, downloads and last accepted serial live here")
    broker_url: str = Field(
        default="mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://host:port"
    )
    tls_ca_file: Path | None = Field(default=None, description="CA bundle for mqtts")
    tls_cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    tls_key_file: Path | None = Field(default=None, description="client private key (PEM)")
    username: str | None = Field(default=None, description="broker username")
    password: SecretStr | None = Field(default=None, description="broker password")
    topic_root: str = Field(default=DEFAULT_ROOT, description="versioned MQTT topic root")
    labels: dict[str, str] = Field(default_factory=dict, description="labels sent in hello")
    runtimes: list[Literal["onnxruntime", "litert", "tflite_runtime"]] | None = Field(
        default=None,
        description="runtimes this agent offers and uses (default: every one installed)",
    )
    http_bind: str = Field(
        default="127.0.0.1:8470", description="local inference API host:port ('' disables it)"
    )
    http_workers: PositiveInt = Field(
        default=4, le=256, description="local inference API threads, one connection each at a time"
    )
    http_queue_size: PositiveInt = Field(
        default=16,
        le=4096,
        description="connections waiting for a local inference API thread; past it a new "
        "connection is answered 503 with Retry-After",
    )
    http_read_timeout_s: PositiveFloat = Field(
        default=10.0,
        description="a local inference request's headers and body must arrive within this "
        "long of its first byte, else the connection is closed (408)",
    )
    http_idle_timeout_s: PositiveFloat = Field(
        default=5.0,
        description="a local inference API connection waiting this long for a request "
        "(a new one, or the next on a keep-alive connection) is closed",
    )
    telemetry_interval_s: PositiveFloat = Field(default=10.0, description="telemetry period")
    keepalive_s: PositiveInt = Field(default=60, description="MQTT keepalive")
    reconnect_min_s: PositiveFloat = Field(default=0.5, description="first reconnect window")
    reconnect_max_s: PositiveFloat = Field(default=60.0, description="reconnect window cap")
    fetch_prefer: Literal["mqtt", "http"] = Field(
        default="mqtt", description="artifact source tried first when both are offered"
    )
    fetch_window_chunks: PositiveInt = Field(default=16, description="chunks requested at once")
    idle_every_s: float = Field(
        default=0.2,
        gt=0.0,
        le=10.0,
        description="how often a download or a wait lets the updater act on commands and health",
    )
    chunk_timeout_s: PositiveFloat = Field(
        default=10.0, description="re-request missing chunks after this long without progress"
    )
    max_bad_chunks: PositiveInt = Field(
        default=8, description="chunks failing their hash before the artifact is refused"
    )
    fetch_timeout_s: PositiveFloat = Field(default=900.0, description="give up a download after")
    fetch_retry_min_s: PositiveFloat = Field(default=1.0, description="download retry backoff")
    fetch_retry_max_s: PositiveFloat = Field(default=60.0, description="download retry cap")
    http_timeout_s: PositiveFloat = Field(
        default=30.0,
        description="HTTP artifact source: give up a request after this long (wall clock) "
        "without a whole chunk, however slowly it drips; also the socket timeout",
    )
    disk_reserve_bytes: NonNegativeInt = Field(
        default=1024 * 1024,
        description="free space a download must leave on the data dir's disk (slot state, "
        "rollback, the rest of the device)",
    )
    progress_interval_s: PositiveFloat = Field(
        default=2.0, description="download progress goes into the state at most this often"
    )
    io_retry_min_s: PositiveFloat = Field(
        default=1.0, description="first backoff after a local I/O error (disk full)"
    )
    io_retry_max_s: PositiveFloat = Field(default=60.0, description="local I/O retry backoff cap")
    io_retry_limit_s: PositiveFloat = Field(
        default=3600.0, description="give up a manifest after local I/O errors for this long"
    )
    max_artifact_bytes: PositiveInt = Field(
        default=DEFAULT_LIMITS.max_artifact_bytes, description="largest artifact accepted"
    )
    max_request_bytes: PositiveInt = Field(
        default=16 * 1024 * 1024, description="largest local inference request body"
    )
    max_input_bytes: PositiveInt = Field(
        default=16 * 1024 * 1024,
        description="largest decoded input of one local inference request (all its arrays, "
        "after .npz decompression), checked before anything is inflated or allocated",
    )
    max_json_values: PositiveInt = Field(
        default=500_000,
        description="most values (numbers, lists, keys) in one JSON inference request, "
        "counted before parsing; also bounded by what the model's inputs can hold",
    )
    inference_threads: PositiveInt = Field(default=1, description="runtime threads per model")
    warmup_runs: PositiveInt = Field(default=3, description="runs before a model is timed")
    validation_timed_runs: PositiveInt = Field(default=10, description="runs to time a model")
    health_check_interval_s: PositiveFloat = Field(default=1.0, description="post-swap checks")
    queue_size: PositiveInt = Field(default=64, description="bound of the desired-state queue")
    max_desired_bytes: PositiveInt = Field(
        default=DEFAULT_LIMITS.max_message_bytes,
        le=DEFAULT_LIMITS.max_message_bytes,
        description="a desired state larger than this is dropped unread (and reported)",
    )
    durable_writes: bool = Field(default=True, description="fsync downloads and slot state")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="log verbosity (stderr; journald under systemd)"
    )

    @model_validator(mode="after")
    def _backoff_windows(self) -> AgentSettings:
        for low, high in (
            ("reconnect_min_s", "reconnect_max_s"),
            ("fetch_retry_min_s", "fetch_retry_max_s"),
            ("io_retry_min_s", "io_retry_max_s"),
        ):
            if getattr(self, high) < getattr(self, low):
                raise ValueError(f"{high} ({getattr(self, high)}) is below {low}")
        return self

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise ValueError(f"broker_url {value!r} must look like mqtt://host:port")
        return value

    @field_validator("http_bind")
    @classmethod
    def _http_bind(cls, value: str) -> str:
        if value:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"http_bind {value!r} must be host:port")
        return value

    @field_validator("topic_root")
    @classmethod
    def _topic_root(cls, value: str) -> str:
        Topics(value)
        return value

    @property
    def broker_host(self) -> str:
        return urlsplit(self.broker_url).hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        parts = urlsplit(self.broker_url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def broker_tls(self) -> bool:
        return urlsplit(self.broker_url).scheme == "mqtts"

    @property
    def http_address(self) -> tuple[str, int] | None:
        if not self.http_bind:
            return None
        host, _, port = self.http_bind.rpartition(":")
        return host, int(port)


def _takes_json(name: str) -> bool:
    """Whether the setting ``name`` holds a list or a mapping (given as JSON in a variable)."""
    annotation = AgentSettings.model_fields[name].annotation
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) is not None else ()
    return any(typing.get_origin(kind) in (list, dict) for kind in (annotation, *kinds))


def environment_values(environ: Mapping[str, str]) -> dict[str, object]:
    """The ``EDGEFLEET_AGENT_<KEY>`` variables of ``environ`` as setting values.

    Names are case-insensitive; a list or mapping setting is given as JSON
    (``EDGEFLEET_AGENT_LABELS='{"board": "pi4"}'``); any other value is validated like the
    file's.

    Raises:
        ConfigError: a variable names no setting, or a list or mapping value is not JSON.
    """
    values: dict[str, object] = {}
    for variable, raw in environ.items():
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        if name not in AgentSettings.model_fields:
            raise ConfigError(f"{variable}: no setting is called {name!r}")
        if _takes_json(name):
            try:
                values[name] = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{variable}: a list or mapping is given as JSON: {e}") from None
        else:
            values[name] = raw
    return values


def _one_line(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def load_settings(path: Path | None) -> AgentSettings:
    """Read the TOML file at ``path`` (if any), overlaid by ``EDGEFLEET_AGENT_*`` variables.

    Raises:
        ConfigError: the file is missing, not TOML, has unknown keys or invalid values, a
            variable names no setting, or a file it names (controller key, TLS files) does not
            exist. The message is one line.
    """
    values: dict[str, object] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    values.update(environment_values(os.environ))
    try:
        settings = AgentSettings.model_validate(values)
    except ValidationError as e:
        raise ConfigError(f"invalid config{f' {path}' if path else ''}: {_one_line(e)}") from None
    for name in ("controller_key", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        file = getattr(settings, name)
        if file is not None and not Path(file).is_file():
            raise ConfigError(f"{name}: file not found: {file}")
    return settings
