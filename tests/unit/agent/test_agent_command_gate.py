"""The agent's command gate: what it admits, what it refuses, and what it remembers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgefleet.agent.commands import CommandGate, CommandRefusal
from edgefleet.shared import Command, CommandType, encode, generate_signing_key, sign_command
from edgefleet.shared.signing import public_key_of

KEY = generate_signing_key()
PUB = public_key_of(KEY)


def signed(serial: int, device_id: str = "pi-1") -> bytes:
    now = datetime.now(UTC)
    command = Command(
        device_id=device_id,
        type=CommandType.ROLLBACK,
        issued_at=now,
        serial=serial,
        expires_at=now + timedelta(minutes=1),
    )
    return encode(sign_command(command, KEY))


def test_serials_only_go_up_and_are_remembered(tmp_path):
    gate = CommandGate(tmp_path / "command-serial", PUB, "pi-1")
    assert gate.admit(signed(3)).serial == 3
    refused = gate.admit(signed(3))
    assert isinstance(refused, CommandRefusal)
    assert refused.kind == "ReplayError"
    assert gate.admit(signed(4)).serial == 4
    again = CommandGate(tmp_path / "command-serial", PUB, "pi-1")
    assert again.last_serial == 4
    assert again.admit(signed(4)).kind == "ReplayError"


def test_an_unreadable_serial_file_starts_from_zero_and_expiry_still_bounds_replays(tmp_path):
    path = tmp_path / "command-serial"
    path.write_text("not a number\n")
    gate = CommandGate(path, PUB, "pi-1")
    assert gate.last_serial == 0
    assert gate.admit(signed(1)).serial == 1
    late = datetime.now(UTC) + timedelta(minutes=2)  # after every command above expired
    assert gate.admit(signed(2), now=late).kind == "ExpiredManifestError"


def test_a_serial_that_cannot_be_saved_is_still_obeyed_and_held_in_memory(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    gate = CommandGate(blocker / "command-serial", PUB, "pi-1")  # cannot be written
    assert gate.admit(signed(5)).serial == 5
    assert gate.admit(signed(5)).kind == "ReplayError"


def test_anything_but_a_signed_command_is_refused_by_name(tmp_path):
    gate = CommandGate(tmp_path / "command-serial", PUB, "pi-1")
    unsigned = Command(device_id="pi-1", type=CommandType.ROLLBACK, issued_at=datetime.now(UTC))
    cases = {
        encode(unsigned, version=1): "UnsignedError",
        signed(1, device_id="pi-2"): "WrongDeviceError",
        b"{}": "WireFormatError",
        b"\xff": "MalformedPayloadError",
    }
    for payload, kind in cases.items():
        refusal = gate.admit(payload)
        assert isinstance(refusal, CommandRefusal)
        assert refusal.kind == kind, refusal.reason
    assert gate.last_serial == 0
