"""The controller's half of the protocol for agent tests, built only on edgefleet.shared.

Signs manifests, publishes them retained on a device's desired topic, answers ChunkRequests
by publishing chunk frames, and serves artifacts over HTTP with Range support from a stdlib
server on 127.0.0.1. Knobs let tests misbehave on purpose: stop after N chunks, serve
tampered bytes, record every request.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared import (
    DEFAULT_LIMITS,
    ArtifactRef,
    ChunkHeader,
    ChunkRequest,
    Command,
    CommandType,
    DeviceChannel,
    GoldenPair,
    GoldenSet,
    HealthPolicy,
    LatencyPolicy,
    Manifest,
    SignedManifest,
    TensorData,
    Topics,
    WireFormatError,
    canonical_json,
    decode,
    encode,
    encode_chunk_frame,
    runtime_for_target,
    sign_command,
    sign_manifest,
)
from edgefleet.shared.manifest import encode_chunk_index
from support.agent_models import BuiltModel

Arrays = dict[str, np.ndarray]


def tensor(array: np.ndarray) -> TensorData:
    array = np.ascontiguousarray(array)
    dtype = str(array.dtype)
    return TensorData.from_raw(
        dtype, tuple(array.shape), array.astype(array.dtype.newbyteorder("<")).tobytes()
    )  # type: ignore[arg-type]


class TestPublisher:
    """A fake controller on a real broker."""

    __test__ = False

    def __init__(self, host: str, port: int, topics: Topics, key: Ed25519PrivateKey) -> None:
        self.topics = topics
        self.key = key
        self._command_serial = 0
        self.last_command_payload = b""
        self.artifacts: dict[str, bytes] = {}
        self.chunk_sizes: dict[str, int] = {}
        self.indexes: dict[str, ArtifactRef] = {}  # file sha256 -> its chunk index's ref
        self.served: dict[str, bytes] = {}  # what is actually sent (tampering tests)
        self.requests: list[ChunkRequest] = []
        self.frames_sent = 0
        self.chunk_limit: int | None = None
        self.withheld: set[str] = set()  # artifacts whose chunk requests go unanswered
        self.http_ranges: list[str] = []
        self.http_paths: list[str] = []  # the sha256 of every HTTP GET, in order
        self.on_request: Callable[[ChunkRequest], None] | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self._connected.clear()
        self.host, self.port = host, port
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _range_handler(self))
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="test-publisher-http",
            daemon=True,
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> TestPublisher:
        self._http_thread.start()
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("test publisher could not connect")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._http.shutdown()
        self._http.server_close()
        self._http_thread.join(5)

    def wait_connected(self, timeout: float = 20.0) -> None:
        if not self._connected.wait(timeout):
            raise TimeoutError("test publisher did not reconnect")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            client.subscribe(
                self.topics.all_devices(DeviceChannel.FETCH),
                1,
            )
            self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            request = decode(bytes(msg.payload), ChunkRequest)
        except WireFormatError:
            return
        with self._lock:
            self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)
        data = self.served.get(request.sha256)
        if data is None or request.sha256 in self.withheld:
            return
        chunk_size = self.chunk_sizes[request.sha256]
        count = -(-len(data) // chunk_size)
        for index in request.indices:
            with self._lock:
                if self.chunk_limit is not None and self.frames_sent >= self.chunk_limit:
                    return
                self.frames_sent += 1
            piece = data[index * chunk_size : (index + 1) * chunk_size]
            header = ChunkHeader(
                sha256=request.sha256,
                index=index,
                count=count,
                chunk_sha256=hashlib.sha256(piece).hexdigest(),
            )
            client.publish(
                self.topics.artifact_chunks(request.sha256),
                encode_chunk_frame(header, piece),
                qos=1,
            )

    # -- artifacts and manifests ------------------------------------------------------------
    def add_artifact(self, data: bytes, chunk_size: int, *, served: bytes | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        self.served[sha] = data if served is None else served
        self.chunk_sizes[sha] = chunk_size
        return sha

    @property
    def http_base(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def requested_indices(self, sha256: str) -> list[int]:
        with self._lock:
            return [i for r in self.requests if r.sha256 == sha256 for i in r.indices]

    def manifest(
        self,
        model: BuiltModel,
        *,
        device_id: str,
        serial: int,
        version: str = "1.0.0",
        model_id: str = "demo",
        golden_inputs: Sequence[Arrays] = (),
        golden_outputs: Sequence[Arrays] | None = None,
        compare: str = "allclose",
        atol: float = 1e-4,
        chunk_size: int = 32,
        latency_budget_ms: float = 1000.0,
        health: HealthPolicy | None = None,
        ttl: timedelta = timedelta(hours=1),
        created_at: datetime | None = None,
        mqtt_source: bool = True,
        http_source: bool = False,
        served: bytes | None = None,
        target: str | None = None,
        latency: LatencyPolicy | None = None,
        schema: int = 1,
        indexed: bool | None = None,
    ) -> Manifest:
        """A manifest for ``model``; ``schema=2`` sends the golden pairs as a file of their own
        (served like the artifact), ``latency`` as its latency policy and, unless ``indexed``
        is False, each file's chunk hashes in a chunk index (served like the file)."""
        indexed = schema == 2 if indexed is None else indexed
        data = model.path.read_bytes()
        sha = self.add_artifact(data, chunk_size, served=served)
        outputs = (
            golden_outputs
            if golden_outputs is not None
            else [model.reference(i) for i in golden_inputs]
        )  # type: ignore[operator]
        golden = None
        if golden_inputs:
            golden = GoldenSet(
                pairs=tuple(
                    GoldenPair(
                        inputs={k: tensor(v) for k, v in i.items()},
                        outputs={k: tensor(v) for k, v in o.items()},
                    )
                    for i, o in zip(golden_inputs, outputs, strict=True)
                ),
                compare=compare,  # type: ignore[arg-type]
                atol=atol,
                rtol=atol,
            )
        created = created_at or datetime.now(UTC) - timedelta(minutes=1)
        target = target or model.target
        golden_fields: dict[str, object] = {"golden": golden}
        if schema == 2:
            golden_ref = None
            if golden is not None:
                blob = canonical_json(golden.model_dump(mode="json"))
                golden_ref = self._ref(
                    blob, self.add_artifact(blob, 4096), 4096, mqtt_source, http_source, indexed
                )
            golden_fields = {"golden_ref": golden_ref, "latency": latency or LatencyPolicy()}
        return Manifest(
            schema_version=schema,  # type: ignore[arg-type]
            device_id=device_id,
            model_id=model_id,
            version=version,
            serial=serial,
            target=target,  # type: ignore[arg-type]
            runtime=runtime_for_target(target),
            artifact=self._ref(data, sha, chunk_size, mqtt_source, http_source, indexed),
            signature=model.signature,
            latency_budget_ms=latency_budget_ms,
            health=health or HealthPolicy(),
            created_at=created,
            expires_at=created + ttl,
            **golden_fields,  # type: ignore[arg-type]
        )

    def _ref(
        self, data: bytes, sha: str, chunk_size: int, mqtt: bool, http: bool, indexed: bool = False
    ) -> ArtifactRef:
        """The ref of ``data`` (added as ``sha``): chunk hashes inline, or in a chunk index the
        publisher serves as a file of its own (in chunks that keep it within its bound)."""
        chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
        digests = tuple(hashlib.sha256(c).hexdigest() for c in chunks)
        sources = {
            "mqtt_topic": self.topics.artifact_chunks(sha) if mqtt else None,
            "http_url": f"{self.http_base}/artifacts/{sha}" if http else None,
        }
        if not indexed:
            return ArtifactRef(
                sha256=sha, size=len(data), chunk_size=chunk_size, chunk_sha256=digests, **sources
            )
        raw = encode_chunk_index(digests)
        index_chunk = max(4096, -(-len(raw) // DEFAULT_LIMITS.max_index_chunks))
        index = self._ref(raw, self.add_artifact(raw, index_chunk), index_chunk, mqtt, http)
        self.indexes[sha] = index
        return ArtifactRef(
            sha256=sha, size=len(data), chunk_size=chunk_size, chunk_index=index, **sources
        )

    def sign(self, manifest: Manifest, key: Ed25519PrivateKey | None = None) -> SignedManifest:
        return sign_manifest(manifest, key or self.key)

    def publish_desired(
        self, device_id: str, signed: SignedManifest | bytes, *, retain: bool = True
    ) -> None:
        payload = signed if isinstance(signed, bytes) else encode(signed)
        self.client.publish(
            self.topics.desired(device_id), payload, qos=1, retain=retain
        ).wait_for_publish(10)

    def command_rollback(
        self,
        device_id: str,
        reason: str = "test",
        command_id: uuid.UUID | None = None,
        *,
        serial: int | None = None,
        key: Ed25519PrivateKey | None = None,
        signed: bool = True,
        expires_in: timedelta = timedelta(minutes=10),
    ) -> Command:
        """Publish a rollback command: signed (wire v2) with the next serial unless told
        otherwise. Returns the command as sent."""
        if serial is None:
            self._command_serial += 1
            serial = self._command_serial
        now = datetime.now(UTC)
        command = Command(
            command_id=command_id or uuid.uuid4(),
            device_id=device_id,
            type=CommandType.ROLLBACK,
            reason=reason,
            issued_at=now,
            serial=serial if signed else None,
            expires_at=now + expires_in if signed else None,
        )
        payload = (
            encode(sign_command(command, key or self.key)) if signed else encode(command, version=1)
        )
        self.last_command_payload = payload
        self.client.publish(self.topics.commands(device_id), payload, qos=1).wait_for_publish(10)
        return command

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _range_handler(publisher: TestPublisher) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # quiet
            return

        def do_GET(self) -> None:
            sha = self.path.rsplit("/", 1)[-1]
            publisher.http_paths.append(sha)
            data = publisher.served.get(sha)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            header = self.headers.get("Range")
            publisher.http_ranges.append(header or "")
            status, start, end = 200, 0, len(data) - 1
            if header:
                match = _RANGE.match(header)
                if not match:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(match.group(1))
                end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
                status = 206
            body = data[start : end + 1]
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
