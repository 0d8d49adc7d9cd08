"""Commands the agent obeys: signed by the controller's key, for this device, unexpired, and
with a serial above the last one it accepted (wire v2).

The last accepted serial is kept in ``<data_dir>/command-serial`` and written before the command
is acted on, so a command that was obeyed is refused as a replay after a crash or a restart as
well. Anything else (an unsigned v1 command, a wrong key or signature, another device, an
expired or replayed command) is refused with a reason the updater reports as an event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edgefleet.agent.slots import write_atomic
from edgefleet.shared.ed25519 import PublicKey
from edgefleet.shared.errors import IntegrityError, UnsignedError, WireFormatError
from edgefleet.shared.messages import Command, SignedCommand
from edgefleet.shared.signing import VerifiedCommand, verify_command
from edgefleet.shared.wire import decode, envelope_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommandRefusal:
    """A command payload that will not be obeyed, and why (the event's reason)."""

    reason: str
    kind: str  # the error's class name: UnsignedError, SignatureError, ReplayError, ...


class CommandGate:
    """Verifies command payloads and remembers the last accepted serial across restarts."""

    def __init__(
        self,
        path: Path,
        controller_key: PublicKey,
        device_id: str,
        *,
        durable: bool = True,
    ) -> None:
        self.path = path
        self.controller_key = controller_key
        self.device_id = device_id
        self.durable = durable
        self.last_serial = self._stored()

    def _stored(self) -> int:
        try:
            return max(0, int(self.path.read_text().strip()))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            # Commands still expire: with the serial lost, only unexpired ones could be replayed.
            log.error("command serial file %s is unreadable (%s); starting from 0", self.path, e)
            return 0

    def admit(
        self, payload: bytes, now: datetime | None = None
    ) -> VerifiedCommand | CommandRefusal:
        """The verified command in ``payload``, its serial recorded as accepted; or a refusal."""
        try:
            verified = self._verify(payload, now)
        except (IntegrityError, WireFormatError) as e:
            return CommandRefusal(f"{type(e).__name__}: {e}", type(e).__name__)
        self.last_serial = verified.serial
        try:
            write_atomic(self.path, f"{verified.serial}\n".encode(), durable=self.durable)
        except OSError as e:  # a full disk must not keep a rollback from happening
            log.error(
                "cannot persist command serial %d to %s (%s): a restart forgets it",
                verified.serial, self.path, e,
            )  # fmt: skip
        return verified

    def _verify(self, payload: bytes, now: datetime | None) -> VerifiedCommand:
        """Raises: IntegrityError, WireFormatError (see :func:`verify_command`)."""
        kind = envelope_kind(payload)
        if kind == "command":
            unsigned = decode(payload, Command)
            raise UnsignedError(
                f"command {unsigned.command_id} ({unsigned.type.value}) is not signed; "
                "this agent obeys only commands signed by the controller key"
            )
        return verify_command(
            decode(payload, SignedCommand),
            self.controller_key,
            device_id=self.device_id,
            last_serial=self.last_serial,
            now=now,
        )
