"""Commands are obeyed only when signed by the controller key, for this device, unexpired and
with a serial above the last accepted one; every other command is refused with an event."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.shared import (
    Command,
    CommandType,
    EventType,
    encode,
    generate_signing_key,
    sign_command,
)
from support.agent_harness import DEVICE, x_batch

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def serve(publisher, watcher, model, serial):
    manifest = publisher.manifest(
        model, device_id=DEVICE, serial=serial, golden_inputs=GOLDEN, version=f"v{serial}"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == serial)


@pytest.fixture
def two_versions(models, publisher, watcher, start_agent):
    """An agent running serial 2 with serial 1 in its previous slot: a rollback is possible."""
    agent = start_agent()
    serve(publisher, watcher, models.onnx_a, 1)
    serve(publisher, watcher, models.onnx_b, 2)
    return agent


def refusals(watcher) -> list:
    return [e for e in watcher.events() if e.type == EventType.COMMAND_REFUSED]


def refused_next(watcher, count: int, send) -> str:
    send()
    watcher.wait_event(EventType.COMMAND_REFUSED, where=lambda e: len(refusals(watcher)) >= count)
    return refusals(watcher)[count - 1].reason


def _tamper(payload: bytes) -> bytes:
    envelope = json.loads(payload)
    envelope["body"]["command"]["reason"] = "forged"
    return json.dumps(envelope).encode()


def _flip_signature(payload: bytes) -> bytes:
    envelope = json.loads(payload)
    raw = bytearray(base64.b64decode(envelope["body"]["signature_b64"]))
    raw[0] ^= 1
    envelope["body"]["signature_b64"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(envelope).encode()


def test_only_signed_fresh_commands_for_this_device_are_obeyed(
    two_versions, publisher, watcher, topics
):
    agent = two_versions
    raw = topics.commands(DEVICE)
    cases = [
        ("UnsignedError", lambda: publisher.command_rollback(DEVICE, signed=False)),
        (
            "UnknownKeyError",
            lambda: publisher.command_rollback(DEVICE, key=generate_signing_key()),
        ),
        (
            "ExpiredManifestError",
            lambda: publisher.command_rollback(DEVICE, expires_in=-timedelta(1)),
        ),
    ]
    reasons = []
    for count, (expected, send) in enumerate(cases, start=1):
        reason = refused_next(watcher, count, send)
        assert expected in reason
        reasons.append(reason)
    # A valid command taken off the wire and changed, or with its signature changed.
    publisher.command_rollback(DEVICE, serial=100)  # obeyed: the device leaves serial 2
    done = watcher.wait_event(EventType.COMMAND_DONE)
    assert done.figures == {"ok": 1.0, "command_serial": 100.0}
    assert agent.current_model.info.serial == 1
    captured = publisher.last_command_payload
    assert "SignatureError" in refused_next(
        watcher, 4, lambda: publisher.publish_raw(raw, _tamper(captured))
    )
    flipped = _flip_signature(captured)
    assert "SignatureError" in refused_next(watcher, 5, lambda: publisher.publish_raw(raw, flipped))
    # The same bytes again, and a validly signed command with an older serial: replays.
    replay = refused_next(watcher, 6, lambda: publisher.publish_raw(raw, captured))
    assert "ReplayError" in replay
    assert "serial 100 is not above last accepted serial 100" in replay
    older = refused_next(watcher, 7, lambda: publisher.command_rollback(DEVICE, serial=99))
    assert "serial 99 is not above" in older
    # A command signed for another device, published on this device's topic.
    now = datetime.now(UTC)
    foreign = Command(
        device_id="pi-other",
        type=CommandType.ROLLBACK,
        issued_at=now,
        serial=200,
        expires_at=now + timedelta(minutes=5),
    )
    payload = encode(sign_command(foreign, publisher.key))
    assert "WrongDeviceError" in refused_next(
        watcher, 8, lambda: publisher.publish_raw(raw, payload)
    )
    # Nothing refused changed anything: one rollback, one command done, the refusals say why.
    assert len([e for e in watcher.events() if e.type == EventType.ROLLED_BACK]) == 1
    assert len([e for e in watcher.events() if e.type == EventType.COMMAND_DONE]) == 1
    assert all(e.figures["last_command_serial"] in (0.0, 100.0) for e in refusals(watcher))
    assert reasons[0].startswith("UnsignedError: command ")


def test_the_last_accepted_serial_survives_a_restart(
    two_versions, publisher, watcher, start_agent, tmp_path
):
    agent = two_versions
    publisher.command_rollback(DEVICE, serial=7)
    watcher.wait_event(EventType.COMMAND_DONE)
    captured = publisher.last_command_payload
    data_dir = agent.settings.data_dir
    agent.stop()
    watcher.wait_state(lambda s: s.status == "offline")
    assert (data_dir / "command-serial").read_text() == "7\n"
    start_agent(data_dir=data_dir)
    watcher.wait_event(EventType.BOOTED, where=lambda e: e.serial == 1)
    publisher.publish_raw(publisher.topics.commands(DEVICE), captured)
    refused = watcher.wait_event(EventType.COMMAND_REFUSED)
    assert "ReplayError" in refused.reason
    assert refused.figures["last_command_serial"] == 7.0


def test_a_hostile_command_during_a_download_is_refused_and_the_download_finishes(
    models, publisher, watcher, start_agent, topics
):
    agent = start_agent()
    serve(publisher, watcher, models.onnx_a, 1)
    publisher.chunk_limit = publisher.frames_sent + 1  # the next download waits after 1 chunk
    manifest = publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=2, golden_inputs=GOLDEN, version="v2"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.DOWNLOAD_STARTED, where=lambda e: e.serial == 2)
    raw = topics.commands(DEVICE)
    publisher.publish_raw(raw, b"[" * 200_000 + b"]" * 200_000)  # nested past any parser
    publisher.publish_raw(raw, b'{"v":2,"kind":"signed_command","body":' + b"9" * 5000 + b"}")
    deep = watcher.wait_event(EventType.COMMAND_REFUSED)
    assert "PayloadTooDeepError" in deep.reason
    watcher.wait_event(EventType.COMMAND_REFUSED, where=lambda e: len(refusals(watcher)) == 2)
    assert "MalformedPayloadError" in refusals(watcher)[1].reason
    assert agent.updater.status == "updating"
    publisher.chunk_limit = None
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 2)
    assert agent.current_model.info.serial == 2
