"""The desired-state manifest: what a device should run, how to fetch it, how to check it."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import (
    Field,
    JsonValue,
    NonNegativeFloat,
    PositiveFloat,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from edgefleet.shared.bounds import LatencyMs, Serial, TensorDim, Timestamp, WindowCount
from edgefleet.shared.errors import LengthMismatchError
from edgefleet.shared.limits import DEFAULT_LIMITS
from edgefleet.shared.messages import WireModel
from edgefleet.shared.topics import DeviceId, Sha256Hex

DType = Literal["float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
DTYPE_ITEMSIZE: dict[str, int] = {
    "float16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1,
    "int16": 2, "int32": 4, "int64": 8, "bool": 1,
}  # fmt: skip

ArtifactRuntime = Literal["onnxruntime", "litert", "edgetpu"]
ARTIFACT_TARGETS = (
    "onnx-fp32",
    "onnx-int8",
    "onnx-fp16",
    "tflite-fp32",
    "tflite-int8",
    "tflite-full-int8",
    "edgetpu",
)
ArtifactTarget = Literal[
    "onnx-fp32", "onnx-int8", "onnx-fp16", "tflite-fp32", "tflite-int8", "tflite-full-int8",
    "edgetpu",
]  # fmt: skip


def runtime_for_target(target: str) -> ArtifactRuntime:
    """The runtime family that executes an artifact target."""
    if target == "edgetpu":
        return "edgetpu"
    if target.startswith("tflite-"):
        return "litert"
    return "onnxruntime"


class TensorSpec(WireModel):
    """One input or output of a model. ``None`` in ``shape`` is a dynamic dimension."""

    name: str = Field(min_length=1, max_length=256)
    dtype: DType
    shape: tuple[TensorDim | None, ...] = Field(max_length=16)


class IOSignature(WireModel):
    inputs: tuple[TensorSpec, ...] = Field(min_length=1, max_length=64)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1, max_length=64)


class TensorData(WireModel):
    """A tensor on the wire: dtype, shape and little-endian C-order bytes in base64."""

    dtype: DType
    shape: tuple[TensorDim, ...] = Field(max_length=16)
    data_b64: str

    @model_validator(mode="after")
    def _length_matches_shape(self) -> TensorData:
        try:
            raw = base64.b64decode(self.data_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"tensor data is not valid base64: {e}") from e
        expected = math.prod(self.shape) * DTYPE_ITEMSIZE[self.dtype]
        if len(raw) != expected:
            raise ValueError(
                f"tensor of dtype {self.dtype} and shape {list(self.shape)} needs {expected} "
                f"bytes, got {len(raw)}"
            )
        return self

    def raw(self) -> bytes:
        """The tensor's bytes (little-endian, C order)."""
        return base64.b64decode(self.data_b64)

    @classmethod
    def from_raw(cls, dtype: DType, shape: tuple[int, ...], raw: bytes) -> TensorData:
        return cls(dtype=dtype, shape=shape, data_b64=base64.b64encode(raw).decode("ascii"))


class GoldenPair(WireModel):
    """An input and the output the artifact must produce for it."""

    inputs: dict[str, TensorData] = Field(min_length=1)
    outputs: dict[str, TensorData] = Field(min_length=1)


class GoldenSet(WireModel):
    """Golden pairs and how to compare the device's outputs with them."""

    pairs: tuple[GoldenPair, ...] = Field(min_length=1, max_length=DEFAULT_LIMITS.max_golden_pairs)
    compare: Literal["allclose", "top1"] = "allclose"
    atol: NonNegativeFloat = 1e-3
    rtol: NonNegativeFloat = 1e-3
    min_top1_agreement: float = Field(default=1.0, ge=0.0, le=1.0)


DIGEST_BYTES = 32  # one raw sha256 digest in a chunk index


class ArtifactRef(WireModel):
    """The bytes of a file (an artifact, a golden file) and where to get them.

    Each chunk's sha256 travels either inline in ``chunk_sha256`` (manifest schema 1, and the
    chunk index itself) or in ``chunk_index`` (schema 2): a small file of the raw 32-byte
    digests in chunk order, named by a ref of its own whose digests are inline and at most
    ``max_index_chunks`` long, fetched and verified like any file before the file it indexes.
    Either way ``chunk_count`` is the number of chunks ``size`` and ``chunk_size`` make.
    """

    sha256: Sha256Hex
    size: int = Field(ge=1, le=DEFAULT_LIMITS.max_artifact_bytes)
    chunk_size: int = Field(ge=1, le=DEFAULT_LIMITS.max_chunk_bytes)
    chunk_sha256: tuple[Sha256Hex, ...] | None = Field(
        default=None, min_length=1, max_length=DEFAULT_LIMITS.max_chunks
    )
    chunk_index: ArtifactRef | None = None
    mqtt_topic: str | None = Field(default=None, max_length=512)
    http_url: str | None = Field(default=None, max_length=2048)

    @model_validator(mode="after")
    def _consistent(self) -> ArtifactRef:
        expected = self.chunk_count
        if expected > DEFAULT_LIMITS.max_chunks:
            raise ValueError(
                f"{self.size} bytes in chunks of {self.chunk_size} make {expected} chunks, over "
                f"the limit of {DEFAULT_LIMITS.max_chunks}"
            )
        if (self.chunk_sha256 is None) == (self.chunk_index is None):
            raise ValueError("a file carries exactly one of chunk_sha256 and chunk_index")
        if self.chunk_sha256 is not None and len(self.chunk_sha256) != expected:
            raise ValueError(
                f"{len(self.chunk_sha256)} chunk hashes for {self.size} bytes in chunks of "
                f"{self.chunk_size}; expected {expected}"
            )
        index = self.chunk_index
        if index is not None:
            if index.chunk_index is not None:
                raise ValueError("a chunk index carries its own chunk hashes inline")
            if index.chunk_count > DEFAULT_LIMITS.max_index_chunks:
                raise ValueError(
                    f"a chunk index of {index.chunk_count} chunks, over the limit of "
                    f"{DEFAULT_LIMITS.max_index_chunks}"
                )
            if index.size != DIGEST_BYTES * expected:
                raise ValueError(
                    f"a chunk index of {index.size} bytes for {expected} chunks; expected "
                    f"{DIGEST_BYTES * expected} ({DIGEST_BYTES} per chunk)"
                )
        if self.mqtt_topic is None and self.http_url is None:
            raise ValueError("an artifact needs at least one source (mqtt_topic or http_url)")
        return self

    @model_serializer(mode="wrap")
    def _without_absent_chunk_form(self, handler: SerializerFunctionWrapHandler) -> object:
        # The form not used is left out, not sent as null: a schema-1 ref stays the exact form
        # v1 agents know (they refuse any field they do not), and a manifest's size stays its own.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("chunk_sha256", "chunk_index"):
                if data.get(name, 0) is None:
                    del data[name]
        return data

    @property
    def chunk_count(self) -> int:
        """How many chunks the file has (``size`` over ``chunk_size``, rounded up)."""
        return -(-self.size // self.chunk_size)


def encode_chunk_index(chunk_sha256: Sequence[str]) -> bytes:
    """The chunk index of a file: its chunks' raw sha256 digests, in order.

    Raises:
        ValueError: a digest is not 64 hex digits.
    """
    return b"".join(bytes.fromhex(digest) for digest in chunk_sha256)


def decode_chunk_index(raw: bytes, ref: ArtifactRef) -> tuple[str, ...]:
    """The chunk digests of ``ref`` from its verified chunk index ``raw``.

    Raises:
        LengthMismatchError: ``raw`` does not hold one digest per chunk of ``ref``.
    """
    expected = DIGEST_BYTES * ref.chunk_count
    if len(raw) != expected:
        raise LengthMismatchError(f"chunk index of {ref.sha256[:12]}", expected, len(raw))
    return tuple(raw[i : i + DIGEST_BYTES].hex() for i in range(0, expected, DIGEST_BYTES))


class HealthPolicy(WireModel):
    """Post-swap watch: roll back when the new version does worse than these bounds."""

    window_s: PositiveFloat = 60.0
    min_requests: WindowCount = 20
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_p95_regression: float = Field(
        default=0.5, ge=0.0, description="allowed relative p95 increase over the previous version"
    )
    min_p95_regression_ms: LatencyMs = Field(
        default=1.0,
        description="a p95 increase smaller than this is no regression, whatever the ratio "
        "(manifest schema 2; schema 1 agents judge the ratio alone)",
    )


class LatencyPolicy(WireModel):
    """How the device judges a candidate's warm latency (manifest schema 2), in this order: the
    operator's budget for the device's class (also in ``latency_budget_ms``) if one is set, else
    a ratio to the active model's warm latency measured on the same device, else it accepts and
    reports what it measured. Nothing measured on the controller host is a budget: its figure
    travels only as a reference, labelled with the host."""

    budget_ms: LatencyMs | None = Field(default=None, gt=0.0, description="operator's budget")
    max_ratio_to_active: float | None = Field(
        default=3.0, gt=1.0, le=1000.0, description="candidate / active warm latency, same device"
    )
    floor_ms: LatencyMs = Field(
        default=5.0, description="a candidate this fast passes whatever the ratio says"
    )
    reference_p95_ms: LatencyMs | None = Field(default=None, description="the controller's p95")
    reference_host: str | None = Field(default=None, max_length=256)


# What manifest schema 2 adds: never written into a schema-1 manifest.
SCHEMA_2_FIELDS = frozenset({"golden_ref", "latency"})
SCHEMA_2_HEALTH_FIELDS = frozenset({"min_p95_regression_ms"})


class Manifest(WireModel):
    """Desired state of one device. Signed by the controller; verified by the agent.

    Schema 1 (wire v1 devices) carries the golden pairs inline, the chunk hashes inline, and
    judges latency against ``latency_budget_ms`` alone. Schema 2 (wire v2) carries
    ``golden_ref``, the golden set as a content-addressed file fetched and verified like the
    artifact, its files' chunk hashes in chunk indexes (see :class:`ArtifactRef`), so a
    manifest's size depends on neither the model's inputs nor its size, and ``latency``; in
    both, ``latency_budget_ms`` is the operator's budget for the device's class or, without
    one, ``MAX_LATENCY_MS`` (no budget).
    """

    schema_version: Literal[1, 2] = 1
    device_id: DeviceId
    model_id: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    serial: Serial
    target: ArtifactTarget
    runtime: ArtifactRuntime
    artifact: ArtifactRef
    signature: IOSignature
    golden: GoldenSet | None = None
    golden_ref: ArtifactRef | None = None
    latency_budget_ms: LatencyMs = Field(gt=0.0)
    latency: LatencyPolicy | None = None
    health: HealthPolicy = HealthPolicy()
    created_at: Timestamp
    expires_at: Timestamp

    @field_validator("model_id", "version")
    @classmethod
    def _no_path_or_wildcards(cls, value: str) -> str:
        if any(c in value for c in "/\\+#\x00") or value in {".", ".."}:
            raise ValueError(f"{value!r} may not contain / \\ + # or NUL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.runtime != runtime_for_target(self.target):
            raise ValueError(f"target {self.target} runs on {runtime_for_target(self.target)}")
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        if self.schema_version == 1 and (self.golden_ref is not None or self.latency is not None):
            raise ValueError("golden_ref and latency belong to manifest schema 2")
        if self.schema_version == 2 and self.golden is not None:
            raise ValueError("manifest schema 2 carries golden pairs as golden_ref, not inline")
        if self.schema_version == 1 and self.artifact.chunk_index is not None:
            raise ValueError("a chunk index belongs to manifest schema 2")
        return self


class SignedManifest(WireModel):
    """A manifest as signed JSON plus its Ed25519 signature.

    ``manifest`` stays raw JSON until the signature over its canonical form has been checked;
    only :func:`edgefleet.shared.signing.verify_manifest` turns it into a :class:`Manifest`.
    """

    manifest: dict[str, JsonValue]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature_b64: str = Field(max_length=128)
