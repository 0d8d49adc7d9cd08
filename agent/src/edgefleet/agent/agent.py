"""The agent facade: wires the MQTT session, the desired-state loop, telemetry and the local
inference API, and serves ``Agent.infer``.

Threads (all named, all stopped by :meth:`Agent.stop`): the MQTT network thread, the updater
(desired-state loop), the telemetry timer, and the HTTP server with its request threads.
Inference runs on the caller's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from time import perf_counter
from types import TracebackType

from edgefleet.agent.capabilities import measure_hello
from edgefleet.agent.errors import BadInputError, ConfigError, InferenceError
from edgefleet.agent.fetch import MqttChunkFetcher
from edgefleet.agent.http_api import InferenceServer
from edgefleet.agent.metrics import MetricsRegistry
from edgefleet.agent.mqtt_session import MqttSession
from edgefleet.agent.report import Reporter
from edgefleet.agent.runtimes import Array
from edgefleet.agent.sequence import StateSequence
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.slots import SlotStore
from edgefleet.agent.swap import ActiveModel, LoadedModel
from edgefleet.agent.telemetry import SystemSampler
from edgefleet.agent.updater import Updater
from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.messages import DeviceState, DeviceStatus, SlotInfo, Telemetry
from edgefleet.shared.signing import load_public_key
from edgefleet.shared.topics import DeviceChannel, Topics
from edgefleet.shared.wire import encode

log = logging.getLogger(__name__)


class Agent:
    """One device agent. ``with Agent(settings) as agent: agent.infer({...})``."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_root)
        try:
            controller_key = load_public_key(settings.controller_key)
        except (OSError, ValueError) as e:
            raise ConfigError(f"controller_key {settings.controller_key}: {e}") from e
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = SlotStore(settings.data_dir, durable=settings.durable_writes)
        self.sequence = StateSequence(
            settings.data_dir / "state-epoch", durable=settings.durable_writes
        )
        self.active = ActiveModel()
        self.metrics = MetricsRegistry()
        device_id = settings.device_id
        # The will is fixed at connect time, so it names no slots, no outcome and no seq (any
        # fixed seq would sort wrongly against the states of a later reconnect): "offline" is
        # all it says, and a receiver keeps what it knew.
        offline = DeviceState(
            device_id=device_id, status=DeviceStatus.OFFLINE, updated_at=datetime.now(UTC)
        )
        self.session = MqttSession(
            settings,
            on_message=self._route,
            on_connected=self._on_connected,
            will=(self.topics.state(device_id), encode(offline)),
        )
        self.reporter = Reporter(self.session, self.topics, device_id, self.sequence)
        self.fetcher = MqttChunkFetcher(self.session, self.topics, settings)
        self.updater = Updater(
            settings,
            controller_key=controller_key,
            store=self.store,
            active=self.active,
            metrics=self.metrics,
            reporter=self.reporter,
            mqtt_fetcher=self.fetcher,
        )
        self.hello = measure_hello(device_id, settings.labels, settings.runtimes)
        self._server: InferenceServer | None = None
        self._stop = threading.Event()
        self._telemetry_thread: threading.Thread | None = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Agent:
        """Boot the slots, connect, and start every worker. Returns ``self``."""
        self.updater.boot()
        device_id = self.settings.device_id
        self.session.subscribe(self.topics.desired(device_id), 1)
        self.session.subscribe(self.topics.commands(device_id), 1)
        address = self.settings.http_address
        if address is not None:
            self._server = InferenceServer(address, self)
            self._server.start()
        self.session.start()
        self.updater.start()
        self._telemetry_thread = threading.Thread(
            target=self._telemetry_loop, name=f"edgefleet-agent-telemetry-{device_id}", daemon=True
        )
        self._telemetry_thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop every thread; publish the offline state first so the will is not needed."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        self.updater.stop()
        if self._server is not None:
            self._server.stop()
        if self._telemetry_thread is not None:
            self._telemetry_thread.join(5.0)
        offline = self.reporter.state_message(
            DeviceStatus.OFFLINE,
            active=self.store.active.info if self.store.active else None,
            previous=self.store.previous.info if self.store.previous else None,
            last_serial=self.store.last_serial,
            detail="agent stopped",
            last_outcome=self.store.last_outcome,
        )
        final = encode(self.reporter.numbered(offline))
        self.session.stop(final=(self.topics.state(self.settings.device_id), final))
        self.active.swap(None)  # releases the runtime once the last request is done

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where the local inference API listens (the real port when configured with 0)."""
        return self._server.address if self._server is not None else None

    @property
    def current_model(self) -> LoadedModel | None:
        return self.active.current

    # -- inference ---------------------------------------------------------------------------
    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the active model on named input arrays.

        Raises:
            NoModelError: no model is active.
            BadInputError: the inputs do not match the model's signed signature (client error).
            InferenceError: the runtime failed (model error).
        """
        return self.infer_with_info(inputs)[0]

    def infer_with_info(self, inputs: Mapping[str, Array]) -> tuple[dict[str, Array], SlotInfo]:
        """:meth:`infer`, also naming the model version that answered.

        Raises:
            NoModelError, BadInputError, InferenceError: as :meth:`infer`.
        """
        active = self.active
        model = active.acquire()
        try:
            try:
                checked = model.check_inputs(inputs)
            except BadInputError:
                self.metrics.record_client_error(model.key)
                raise
            start = perf_counter()
            try:
                outputs = model.runtime.run(checked)
            except InferenceError:
                self.metrics.record_error(model.key, (perf_counter() - start) * 1000.0)
                raise
            self.metrics.record_ok(model.key, (perf_counter() - start) * 1000.0)
            return outputs, model.info
        finally:
            active.release(model)

    def record_client_error(self) -> None:
        """Count a request rejected before it reached :meth:`infer` (e.g. malformed HTTP body)."""
        model = self.active.current
        if model is not None:
            self.metrics.record_client_error(model.key)

    # -- MQTT side (network thread: never blocks) ---------------------------------------------
    def _route(self, topic: str, payload: bytes) -> None:
        try:
            parsed = self.topics.parse_device_topic(topic)
        except InvalidTopicError:
            self.fetcher.feed(payload)  # artifact chunk topics are the only other subscriptions
            return
        if parsed.device_id != self.settings.device_id:
            return
        if parsed.channel == DeviceChannel.DESIRED:
            self.updater.submit("desired", payload)
        elif parsed.channel == DeviceChannel.COMMANDS:
            self.updater.submit("command", payload)

    def _on_connected(self) -> None:
        device_id = self.settings.device_id
        self.session.publish(self.topics.hello(device_id), encode(self.hello), qos=1)
        self.updater.publish_state()
        self.fetcher.notify_reconnected()

    # -- telemetry ---------------------------------------------------------------------------
    def _telemetry_loop(self) -> None:
        sampler = SystemSampler(self.settings.data_dir)
        window_start = datetime.now(UTC)
        tick = time.monotonic()
        while not self._stop.wait(self.settings.telemetry_interval_s):
            try:
                now = datetime.now(UTC)
                seconds = time.monotonic() - tick
                tick = time.monotonic()
                message = Telemetry(
                    device_id=self.settings.device_id,
                    window_start=window_start,
                    window_end=now,
                    models=tuple(self.metrics.take_window(seconds)),
                    system=sampler.sample(),
                )
                window_start = now
                self.session.publish(
                    self.topics.telemetry(self.settings.device_id), encode(message), qos=0
                )
            except Exception:
                log.exception("telemetry sample failed")
