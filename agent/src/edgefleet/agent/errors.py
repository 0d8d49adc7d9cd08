"""Errors raised by the agent, under the shared root and its integrity / transport subtrees.

Integrity failures (refused artifact, failed validation) never lead to a swap and are not
retried; transport failures are retried with backoff; local storage failures are retried with
backoff until a time limit; client errors are the caller's fault.
"""

from __future__ import annotations

from edgefleet.shared.errors import EdgefleetError, IntegrityError, TransportError


class AgentError(EdgefleetError):
    """Root of every error the agent raises itself."""


class ConfigError(AgentError):
    """The agent's configuration is missing, unreadable or invalid (exit code 2)."""


class UnsupportedArtifactError(IntegrityError, AgentError):
    """This device cannot run the artifact (missing runtime, no Edge TPU, unknown format)."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"cannot run a {target} artifact here: {reason}")
        self.target = target
        self.reason = reason


class ModelLoadError(IntegrityError, AgentError):
    """The runtime could not load the artifact, or it does not match the signed signature."""


class ValidationFailedError(IntegrityError, AgentError):
    """The loaded model failed its golden pairs, produced NaN/Inf, or missed its latency budget."""

    def __init__(self, reason: str, figures: dict[str, float] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.figures = dict(figures or {})


class TooSlowError(ValidationFailedError):
    """The model is correct but slower on this device than its manifest's latency policy
    allows (outcome ``too_slow``, not an integrity failure)."""


class SupersededError(TransportError, AgentError):
    """A download was abandoned because a newer verified manifest arrived meanwhile."""

    def __init__(self, serial: int, newer_serial: int) -> None:
        super().__init__(f"download of serial {serial} superseded by serial {newer_serial}")
        self.serial = serial
        self.newer_serial = newer_serial


class StoppingError(TransportError, AgentError):
    """Work on a manifest was abandoned because the agent is stopping; the next start resumes it."""


class StorageError(AgentError):
    """Local storage failed (disk full, permissions, I/O error): not the manifest's fault.

    Retried with backoff until ``io_retry_limit_s``; carries the ``errno`` of the OSError.
    """

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(f"{what}: {error}")
        self.what = what
        self.errno = error.errno


class BrokerError(TransportError, AgentError):
    """The MQTT broker refused or dropped an operation."""


class NoModelError(AgentError):
    """An inference request arrived while no model is active."""


class BadInputError(AgentError, ValueError):
    """An inference request does not match the active model's inputs (a client error)."""


class InferenceError(AgentError):
    """The runtime failed while running a request that matched the model's signature."""
