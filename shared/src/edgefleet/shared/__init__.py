"""edgefleet's wire contract: message models, topics, signing, hashing and chunking.

Both the controller and the agent import this package; neither imports the other.
"""

from edgefleet.shared.chunks import Chunk, ChunkBitmap, Reassembler, chunk_digests, iter_chunks
from edgefleet.shared.errors import (
    DownloadError,
    EdgefleetError,
    ExpiredManifestError,
    HashMismatchError,
    IntegrityError,
    InvalidTopicError,
    LengthMismatchError,
    ReplayError,
    SignatureError,
    TransportError,
    UnknownKeyError,
    UnsupportedSchemaError,
    WireFormatError,
    WrongDeviceError,
)
from edgefleet.shared.hashing import sha256_bytes, sha256_file
from edgefleet.shared.limits import DEFAULT_LIMITS, WireLimits
from edgefleet.shared.manifest import (
    ARTIFACT_TARGETS,
    ArtifactRef,
    GoldenPair,
    GoldenSet,
    HealthPolicy,
    IOSignature,
    Manifest,
    SignedManifest,
    TensorData,
    TensorSpec,
    runtime_for_target,
)
from edgefleet.shared.messages import (
    ChunkRequest,
    Command,
    CommandType,
    DeviceState,
    DeviceStatus,
    Event,
    EventType,
    Hardware,
    Hello,
    LatencySummary,
    ModelStats,
    RuntimeInfo,
    SlotInfo,
    SystemStats,
    Telemetry,
    WireModel,
)
from edgefleet.shared.signing import (
    VerifiedManifest,
    canonical_json,
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.topics import (
    DEFAULT_ROOT,
    DEFAULT_TOPICS,
    DeviceChannel,
    DeviceTopic,
    Topics,
    validate_device_id,
)
from edgefleet.shared.wire import (
    SCHEMA_VERSION,
    ChunkHeader,
    decode,
    decode_any,
    decode_chunk_frame,
    encode,
    encode_chunk_frame,
)

__version__ = "0.1.0"

__all__ = [
    "ARTIFACT_TARGETS", "DEFAULT_LIMITS", "DEFAULT_ROOT", "DEFAULT_TOPICS", "SCHEMA_VERSION",
    "ArtifactRef", "Chunk", "ChunkBitmap", "ChunkHeader", "ChunkRequest", "Command",
    "CommandType", "DeviceChannel", "DeviceState", "DeviceStatus", "DeviceTopic",
    "DownloadError", "EdgefleetError", "Event", "EventType", "ExpiredManifestError",
    "GoldenPair", "GoldenSet", "Hardware", "HashMismatchError", "HealthPolicy", "Hello",
    "IOSignature", "IntegrityError", "InvalidTopicError", "LatencySummary",
    "LengthMismatchError", "Manifest", "ModelStats", "Reassembler", "ReplayError",
    "RuntimeInfo", "SignatureError", "SignedManifest", "SlotInfo", "SystemStats", "Telemetry",
    "TensorData", "TensorSpec", "Topics", "TransportError", "UnknownKeyError",
    "UnsupportedSchemaError", "VerifiedManifest", "WireFormatError", "WireLimits", "WireModel",
    "WrongDeviceError", "canonical_json", "chunk_digests", "decode", "decode_any",
    "decode_chunk_frame", "encode", "encode_chunk_frame", "generate_signing_key", "iter_chunks",
    "key_id", "load_private_key", "load_public_key", "runtime_for_target", "save_private_key",
    "save_public_key", "sha256_bytes", "sha256_file", "sign_manifest", "validate_device_id",
    "verify_manifest",
]  # fmt: skip
