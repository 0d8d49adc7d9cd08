"""Commands to devices: signed for wire-v2 devices, the unsigned v1 form for agents behind.

A v2 command carries a serial drawn from the device's serial counter (the one its manifests
use, so it grows across controller restarts and never repeats) and an expiry; the agent obeys
it only if it verifies with the controller key and its serial is above the last command it
accepted. A v1 agent (one release behind) cannot verify signatures: it gets the v1 command.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.shared import Command, encode
from edgefleet.shared.signing import sign_command

# Long enough for a device that reconnects within minutes, short enough that a command captured
# on the wire is useless soon even to a device whose data dir (and last serial) was wiped.
COMMAND_TTL = timedelta(minutes=10)


class CommandDeviceMissingError(LookupError):
    """The command's device is not registered (it never said hello)."""


def next_command_serial(session: Session, device_id: str) -> int:
    """Take the device's next serial for a command and commit it.

    Raises:
        CommandDeviceMissingError: no such device.
    """
    device = session.scalars(
        select(DeviceRow).where(DeviceRow.id == device_id).with_for_update()
    ).one_or_none()
    if device is None:
        raise CommandDeviceMissingError(device_id)
    serial = max(device.last_serial_issued or 0, device.reported_last_serial or 0) + 1
    device.last_serial_issued = serial
    session.commit()
    return serial


def command_payload(
    command: Command,
    *,
    wire_version: int,
    key: Ed25519PrivateKey,
    serial: int | None,
    now: datetime,
    ttl: timedelta = COMMAND_TTL,
) -> bytes:
    """The bytes to publish: a signed v2 command (``serial`` required), or the v1 command.

    Raises:
        ValueError: a v2 command without a serial.
    """
    if wire_version < 2:
        return encode(command, version=wire_version)
    if serial is None:
        raise ValueError("a wire-v2 command needs a serial")
    numbered = command.model_copy(update={"serial": serial, "expires_at": now + ttl})
    return encode(sign_command(numbered, key), version=wire_version)
