"""The controller service: wires the database, registry, MQTT bridge, ingest, chunk server and
rollout engine together, and runs them as named asyncio tasks in one event loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.config import Settings
from edgefleet.controller.fleet import tables as fleet_tables  # noqa: F401 - registers tables
from edgefleet.controller.fleet.ingest import FleetIngest
from edgefleet.controller.fleet.ingest_workers import (
    IngestWorkers,
    WorkerSpec,
    subscription,
    worker_count,
)
from edgefleet.controller.metrics import IngestRateMeter
from edgefleet.controller.mqtt.bridge import BridgeOptions, MqttBridge
from edgefleet.controller.mqtt.embedded import EmbeddedBroker
from edgefleet.controller.private_files import ensure_private_dir
from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.publish.chunk_server import ChunkServer, IssuedArtifacts
from edgefleet.controller.publish.commands import command_payload, next_command_serial
from edgefleet.controller.publish.manifests import ManifestSigner
from edgefleet.controller.registry.db import create_engine_for, create_schema, session_factory
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.controller.rollouts import tables as rollout_tables  # noqa: F401
from edgefleet.controller.rollouts.engine import RolloutEngine
from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.paths import SecurityPaths
from edgefleet.controller.security.signing_key import ensure_signing_key, load_or_create_secret
from edgefleet.controller.telemetry import HistoryKeeper, RetentionPolicy
from edgefleet.controller.telemetry import tables as telemetry_tables  # noqa: F401
from edgefleet.controller.telemetry_totals import (
    TelemetryTotals,
    labels_in_database,
    versions_in_registry,
)
from edgefleet.shared import (
    SCHEMA_VERSION,
    Command,
    DeviceChannel,
    Topics,
    load_private_key,
)

log = logging.getLogger(__name__)


def load_or_create_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The controller's Ed25519 key; generated (0600) with its public half on first start."""
    path = settings.key_path
    ensure_signing_key(path, path.with_suffix(".pub"))
    return load_private_key(path)


def load_or_create_api_token(settings: Settings) -> str:
    if settings.api_token is not None:
        return settings.api_token.get_secret_value()
    return load_or_create_secret(settings.token_path)


def broker_endpoint(settings: Settings, url: str) -> BrokerEndpoint:
    """How the controller reaches its broker: URL, credentials, pinned CA, client certificate.

    Explicit settings win; otherwise the identity ``edgefleet device controller-identity`` saved
    and the CA ``edgefleet pki init`` created in the data dir are used when they exist.
    """
    paths = SecurityPaths(settings.data_dir, settings.signing_key_path)
    credentials = None
    if settings.broker_username is not None:
        password = settings.broker_password.get_secret_value() if settings.broker_password else ""
        credentials = BrokerCredentials(settings.broker_username, password)
    elif paths.controller_credentials.exists():
        credentials = BrokerCredentials.load(paths.controller_credentials)
    return BrokerEndpoint(
        url,
        credentials=credentials,
        ca_file=settings.broker_ca_file or (paths.ca_cert if paths.ca_cert.exists() else None),
        cert_file=settings.broker_client_cert,
        key_file=settings.broker_client_key,
    )


def open_database(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    engine = create_engine_for(settings.effective_database_url)
    create_schema(engine)  # every table module is imported above, so all are on the metadata
    return engine, session_factory(engine)


class ControllerService:
    """Everything the controller runs besides the HTTP server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_private_dir(settings.data_dir)  # 0700 whatever the umask
        self.topics = Topics(settings.topic_root)
        self.engine, self.sessions = open_database(settings)
        self.store = ArtifactStore(settings.artifact_dir)
        self.registry = ModelRegistry(self.sessions, self.store)
        self.signing_key = load_or_create_signing_key(settings)
        self.api_token = load_or_create_api_token(settings)
        self.artifact_urls = ArtifactUrlSigner(
            load_or_create_secret(settings.key_path.parent / "artifact-url.key").encode()
        )
        self.embedded: EmbeddedBroker | None = None
        self.broker_url = settings.broker_url or ""
        self.signer = ManifestSigner(
            self.signing_key,
            self.topics,
            public_url=self.public_url,
            chunk_size=settings.chunk_size,
            ttl=timedelta(seconds=settings.manifest_ttl_s),
            urls=self.artifact_urls,
            store=self.store,
        )
        self.bridge: MqttBridge | None = None
        self.ingest: FleetIngest | None = None
        self.ingest_workers: IngestWorkers | None = None
        self.chunks: ChunkServer | None = None
        self.rollouts: RolloutEngine | None = None
        self.retention = RetentionPolicy(
            raw_s=settings.telemetry_raw_retention_s,
            minute_s=settings.telemetry_minute_retention_s,
            hour_s=settings.telemetry_hour_retention_s,
            grace_s=settings.telemetry_rollup_grace_s,
        )
        self.history = HistoryKeeper(
            self.sessions, self.retention, interval_s=settings.telemetry_rollup_interval_s
        )
        self.ingest_rate = IngestRateMeter()
        self.telemetry_totals = TelemetryTotals(
            labels_in_database(self.sessions),
            group_label=settings.metrics_group_label,
            max_series=settings.metrics_max_series,
            registered=versions_in_registry(self.sessions),
        )
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def public_url(self) -> str:
        return (
            self.settings.public_url
            or f"http://{self.settings.http_host}:{self.settings.http_port}"
        )

    @property
    def embedded_broker(self) -> bool:
        return self.embedded is not None

    def _subscriptions(self, *, telemetry: bool = True) -> list[tuple[str, int]]:
        use_share = self.settings.share_group and not self.embedded_broker
        subs = []
        for channel in (
            DeviceChannel.HELLO,
            DeviceChannel.STATE,
            DeviceChannel.EVENTS,
            DeviceChannel.TELEMETRY,
            DeviceChannel.FETCH,
        ):
            if channel is DeviceChannel.TELEMETRY and not telemetry:
                continue  # the ingest worker processes take it
            topic = self.topics.all_devices(channel)
            if use_share and channel is DeviceChannel.TELEMETRY and self.settings.share_group:
                topic = Topics.shared(self.settings.share_group, topic)
            subs.append((topic, 0 if channel is DeviceChannel.TELEMETRY else 1))
        return subs

    async def start(self) -> None:
        if not self.settings.broker_url:
            self.embedded = EmbeddedBroker(port=self.settings.embedded_broker_port)
            await self.embedded.start()
            self.broker_url = self.embedded.url
            log.warning(
                "no broker URL configured: started an embedded broker on %s (use Mosquitto "
                "in production)",
                self.broker_url,
            )
        settings = self.settings
        workers = worker_count(settings, embedded_broker=self.embedded_broker)
        self.bridge = MqttBridge(
            BridgeOptions(
                endpoint=broker_endpoint(settings, self.broker_url),
                subscriptions=self._subscriptions(telemetry=not workers),
                mqtt5=not self.embedded_broker,  # amqtt speaks MQTT 3.1.1 only
            ),
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self.chunks = ChunkServer(
            self.store,
            self.topics,
            lambda topic, payload: self._publish(topic, payload, False),
            chunk_size=settings.chunk_size,
            coalesce_s=settings.chunk_coalesce_s,
            gather_s=settings.chunk_gather_s,
            issued=IssuedArtifacts(self.sessions, ttl_s=settings.chunk_issued_ttl_s),
            max_unchecked=settings.chunk_unchecked_max,
        )
        self.ingest = FleetIngest(
            self.sessions,
            self.topics,
            on_fetch=self.chunks.request,
            batch_size=settings.ingest_batch,
            telemetry_queue=settings.ingest_queue,
            flush_s=settings.ingest_flush_s,
            telemetry_rate=settings.device_telemetry_rate,
            telemetry_burst=settings.device_telemetry_burst,
            chunk_request_rate=settings.device_chunk_request_rate,
            chunk_request_burst=settings.device_chunk_request_burst,
            rate_limited_devices=settings.rate_limited_devices,
            dead_letters_keep=settings.dead_letters_keep,
            retry_initial_s=settings.ingest_retry_initial_s,
            retry_max_s=settings.ingest_retry_max_s,
        )
        self.rollouts = RolloutEngine(
            self.sessions,
            self.registry,
            self.signer,
            self.topics,
            self._publish,
            interval_s=settings.engine_interval_s,
            offline_after_s=settings.offline_after_s,
        )
        self.ingest.after_batch.append(self.rollouts.nudge)
        self.ingest.after_write.append(self.telemetry_totals.add_written)
        if workers:
            topic = subscription(settings, shared=not self.embedded_broker)
            level = logging.getLogger().getEffectiveLevel()
            self.ingest_workers = IngestWorkers(
                [WorkerSpec(i, settings, self.broker_url, topic, level) for i in range(workers)],
                self.ingest,
                self.telemetry_totals,
                on_batches=self.rollouts.nudge,
            )
            self.ingest.after_write.append(self.ingest_workers.tell_groups)
            self._tasks.append(
                asyncio.create_task(self.ingest_workers.run(), name="ingest-workers")
            )
        # what start-up built (modules, wire models' validators, settings) lives as long as the
        # process: garbage collections need not walk it again with every decoded message
        gc.collect()  # (garbage frozen would never be collected)
        gc.freeze()
        for name, coro in (
            ("mqtt-bridge", self.bridge.run()),
            ("fleet-ingest", self.ingest.run()),
            ("chunk-server", self.chunks.run()),
            ("rollout-engine", self.rollouts.run()),
            ("telemetry-history", self.history.run()),
            ("ingest-rate", self.ingest_rate.run(self.ingest.counters)),
        ):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def _on_connect(self) -> None:
        if self.rollouts is not None:
            await asyncio.to_thread(self.rollouts.mark_all_unpublished)
            self.rollouts.nudge()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.ingest is not None:
            self.ingest.submit(topic, payload)

    async def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if self.bridge is None:
            raise RuntimeError("service not started")
        await self.bridge.publish(topic, payload, qos=1, retain=retain)

    async def send_command(self, command: Command, *, wire_version: int = SCHEMA_VERSION) -> None:
        """Publish a command in the wire version the device speaks: signed, with the device's
        next serial, from v2 on (see :mod:`edgefleet.controller.publish.commands`).

        Raises:
            CommandDeviceMissingError: a v2 command for a device that is not registered.
        """
        serial = None
        if wire_version >= 2:
            serial = await asyncio.to_thread(self._next_command_serial, command.device_id)
        payload = command_payload(
            command,
            wire_version=wire_version,
            key=self.signing_key,
            serial=serial,
            now=datetime.now(UTC),
        )
        await self._publish(self.topics.commands(command.device_id), payload, False)

    def _next_command_serial(self, device_id: str) -> int:
        with self.sessions() as session:
            return next_command_serial(session, device_id)

    async def stop(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.embedded is not None:
            await self.embedded.stop()
        self.engine.dispose()
