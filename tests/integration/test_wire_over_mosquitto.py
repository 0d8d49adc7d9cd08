"""Every wire message survives a real broker, and the broker fixture behaves as fault tests need."""

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared import (
    ChunkHeader,
    DeviceState,
    decode,
    decode_any,
    decode_chunk_frame,
    encode,
    encode_chunk_frame,
    generate_signing_key,
)
from edgefleet.shared.topics import DeviceChannel
from support.mqtt import MqttProbe, wait_until
from support.samples import sample_messages

KIND_CHANNEL = {
    "Hello": DeviceChannel.HELLO,
    "DeviceState": DeviceChannel.STATE,
    "Telemetry": DeviceChannel.TELEMETRY,
    "Event": DeviceChannel.EVENTS,
    "ChunkRequest": DeviceChannel.FETCH,
    "Command": DeviceChannel.COMMANDS,
    "SignedCommand": DeviceChannel.COMMANDS,
    "SignedManifest": DeviceChannel.DESIRED,
}


@pytest.mark.parametrize(
    "protocol", [mqtt.MQTTProtocolVersion.MQTTv311, mqtt.MQTTProtocolVersion.MQTTv5]
)
def test_every_message_round_trips_through_mosquitto(mosquitto, topics, protocol):
    messages = sample_messages(generate_signing_key())
    with (
        MqttProbe(mosquitto.host, mosquitto.port, protocol=protocol) as sub,
        MqttProbe(mosquitto.host, mosquitto.port, protocol=protocol) as pub,
    ):
        sub.subscribe(f"{topics.root}/#")
        for message in messages:
            channel = KIND_CHANNEL[type(message).__name__]
            pub.publish(topics.device("pi-001", channel), encode(message), qos=1)
        for message in messages:
            topic = topics.device("pi-001", KIND_CHANNEL[type(message).__name__])
            received = sub.wait_for(lambda r, t=topic: r.topic == t)
            assert decode(received.payload, type(message)) == message
            assert decode_any(received.payload) == message
            parsed = topics.parse_device_topic(received.topic)
            assert parsed.device_id == "pi-001"


def test_chunk_frames_cross_the_broker_byte_exact(mosquitto, topics):
    sha = "ab" * 32
    data = bytes(range(256)) * 512  # 128 KiB, every byte value
    header = ChunkHeader(sha256=sha, index=0, count=1, chunk_sha256=sha)
    with (
        MqttProbe(mosquitto.host, mosquitto.port) as sub,
        MqttProbe(mosquitto.host, mosquitto.port) as pub,
    ):
        sub.subscribe(topics.artifact_chunks(sha))
        pub.publish(topics.artifact_chunks(sha), encode_chunk_frame(header, data))
        received = sub.wait_for(lambda r: True)
    assert decode_chunk_frame(received.payload) == (header, data)


def test_retained_state_survives_a_clean_broker_restart(own_broker, topics):
    state = sample_messages(generate_signing_key())[1]
    assert isinstance(state, DeviceState)
    with MqttProbe(own_broker.host, own_broker.port) as pub:
        pub.publish(topics.state("pi-001"), encode(state), retain=True)
    own_broker.restart()
    with MqttProbe(own_broker.host, own_broker.port) as sub:
        sub.subscribe(topics.state("pi-001"))
        received = sub.wait_for(lambda r: True)
    assert received.retain
    assert decode(received.payload, DeviceState) == state


def test_killed_broker_refuses_connections_until_restarted(own_broker):
    own_broker.kill()
    probe = MqttProbe(own_broker.host, own_broker.port)
    with pytest.raises(ConnectionRefusedError):
        probe.client.connect(own_broker.host, own_broker.port)
    own_broker.start()
    with MqttProbe(own_broker.host, own_broker.port) as ok:
        assert ok.client.is_connected()


def test_flood_of_qos1_messages_all_arrive(mosquitto, topics):
    """The deploy limits let a 20,000-message QoS 1 burst through to a subscriber."""
    total = 20_000
    topic = topics.telemetry("flood")
    with (
        MqttProbe(mosquitto.host, mosquitto.port) as sub,
        MqttProbe(mosquitto.host, mosquitto.port) as pub,
    ):
        sub.subscribe(topic, qos=1)
        infos = [pub.client.publish(topic, b"%d" % i, qos=1) for i in range(total)]
        for info in infos:
            info.wait_for_publish(60)
        wait_until(lambda: len(sub.received) >= total, timeout=90)
        assert sorted(int(r.payload) for r in sub.received) == list(range(total))


def test_oversize_packets_are_refused_by_the_broker(mosquitto, topics):
    """max_packet_size: a publish over 2 MiB gets the publisher disconnected, not delivered."""
    topic = topics.telemetry("big")
    with MqttProbe(mosquitto.host, mosquitto.port) as sub:
        sub.subscribe(topic)
        disconnected = []
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="oversize")
        pub.on_disconnect = lambda *args: disconnected.append(args)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        try:
            wait_until(pub.is_connected)
            pub.publish(topic, b"x" * (3 * 1024 * 1024), qos=0)
            pub.publish(topic, b"small", qos=0)
            wait_until(lambda: bool(disconnected), timeout=10)
        finally:
            pub.loop_stop()
        time.sleep(0.5)  # give a wrongly delivered message the chance to show up
        assert all(len(r.payload) < 1024 for r in sub.received)
