"""Per-device identities and the ACL, against a real mosquitto with the dynamic security plugin.

Absence is proven with sentinels: the forbidden message is sent first, a permitted one after it
on the same connection; once the sentinel arrives, the forbidden one would have too.
"""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from edgefleet.controller.security.acl import AclRule, AclType, Role, artifact_chunks_filter
from edgefleet.controller.security.dynsec import CONTROL_TOPIC
from edgefleet.controller.security.endpoint import BrokerCredentials
from edgefleet.controller.security.errors import DeviceAlreadyEnrolledError, UnknownDeviceError
from edgefleet.shared.topics import DEVICE_TO_CONTROLLER, DeviceChannel
from support.mqtt import wait_until
from support.secure_broker import drop_connection, probe, try_connect

SHA = "ab" * 32


def refused(p, topic):
    """Subscribe and return True if the broker refused the subscription in its SUBACK."""
    codes = []
    p.client.on_subscribe = lambda c, u, mid, rcs, props: codes.extend(rcs)
    result, _ = p.client.subscribe(topic, 1)
    assert result == mqtt.MQTT_ERR_SUCCESS
    wait_until(lambda: bool(codes), timeout=5)
    p.client.on_subscribe = p._on_subscribe
    return all(code.is_failure for code in codes)


def test_device_reads_only_its_own_desired_state_commands_groups_and_chunks(fleet, device_ids):
    a_id, b_id = device_ids
    topics = fleet.topics
    a = fleet.identities.add_device(a_id, groups=["site-1"])
    fleet.identities.add_device(b_id, groups=["site-2"])
    with probe(fleet.broker.tls_endpoint(fleet.controller)) as ctl:
        ctl.publish(topics.desired(b_id), b"for-b-retained", retain=True)
        ctl.publish(topics.group_desired("site-2"), b"for-site-2", retain=True)
        with probe(fleet.broker.tls_endpoint(a.credentials)) as dev_a:
            for forbidden in (
                topics.desired(b_id),
                topics.commands(b_id),
                topics.all_devices(DeviceChannel.DESIRED),
                topics.telemetry(b_id),
                topics.group_desired("site-2"),
                f"{topics.root}/#",
                "#",
                "$CONTROL/#",
            ):
                assert refused(dev_a, forbidden), forbidden
            dev_a.subscribe(topics.desired(a_id))
            dev_a.subscribe(topics.commands(a_id))
            dev_a.subscribe(topics.group_desired("site-1"))
            dev_a.subscribe(artifact_chunks_filter(topics))
            ctl.publish(topics.desired(b_id), b"for-b")
            ctl.publish(topics.commands(b_id), b"cmd-b")
            ctl.publish(topics.group_desired("site-2"), b"for-site-2-again")
            ctl.publish(topics.artifact_chunks(SHA), b"chunk")
            ctl.publish(topics.group_desired("site-1"), b"for-site-1")
            ctl.publish(topics.commands(a_id), b"cmd-a")
            ctl.publish(topics.desired(a_id), b"sentinel-for-a")
            dev_a.wait_for(lambda r: r.payload == b"sentinel-for-a")
    assert {(r.topic, r.payload) for r in dev_a.received} == {
        (topics.artifact_chunks(SHA), b"chunk"),
        (topics.group_desired("site-1"), b"for-site-1"),
        (topics.commands(a_id), b"cmd-a"),
        (topics.desired(a_id), b"sentinel-for-a"),
    }


def test_device_publishes_only_under_its_own_topics(fleet, device_ids):
    a_id, b_id = device_ids
    topics = fleet.topics
    a = fleet.identities.add_device(a_id, groups=["site-1"])
    b = fleet.identities.add_device(b_id)
    with (
        probe(fleet.broker.tls_endpoint(fleet.controller)) as ctl,
        probe(fleet.broker.tls_endpoint(b.credentials)) as dev_b,
        probe(
            fleet.broker.tls_endpoint(a.credentials), protocol=MQTTProtocolVersion.MQTTv5
        ) as dev_a,
    ):
        for channel in DeviceChannel:
            ctl.subscribe(topics.all_devices(channel))
        ctl.subscribe(f"{topics.root}/groups/+/desired")
        dev_b.subscribe(topics.desired(b_id))
        dev_b.subscribe(topics.commands(b_id))
        # Forbidden: B's outbound channels, anyone's desired state or commands, group desired
        # state, artifact chunks, the broker's control API.
        forbidden = [
            (topics.telemetry(b_id), False),
            (topics.state(b_id), True),
            (topics.hello(b_id), False),
            (topics.events(b_id), False),
            (topics.fetch(b_id), False),
            (topics.desired(b_id), True),
            (topics.desired(a_id), True),
            (topics.commands(b_id), False),
            (topics.group_desired("site-1"), True),
            (topics.artifact_chunks(SHA), False),
        ]
        for topic, retain in forbidden:
            info = dev_a.client.publish(topic, b"forged", qos=1, retain=retain)
            info.wait_for_publish(5)
        allowed = [topics.device(a_id, channel) for channel in DEVICE_TO_CONTROLLER]
        for topic in allowed:
            dev_a.publish(topic, b"legit-a", retain=topic == topics.state(a_id))
        dev_b.publish(topics.telemetry(b_id), b"legit-b")
        ctl.wait_for(lambda r: r.topic == topics.telemetry(b_id) and r.payload == b"legit-b")
        dev_a.publish(topics.telemetry(a_id), b"sentinel-a")
        ctl.wait_for(lambda r: r.payload == b"sentinel-a")
    assert ctl.count(lambda r: r.payload == b"forged") == 0
    assert dev_b.count(lambda r: True) == 0
    assert {r.topic for r in ctl.received if r.payload == b"legit-a"} == set(allowed)
    # A later subscriber finds no forged retained message either; A's own retained state, asked
    # for last, is the sentinel.
    with probe(fleet.broker.tls_endpoint(fleet.controller)) as late:
        late.subscribe(topics.state(b_id))
        late.subscribe(topics.desired(b_id))
        late.subscribe(topics.group_desired("site-1"))
        late.subscribe(topics.state(a_id))
        late.wait_for(lambda r: r.topic == topics.state(a_id) and r.retain)
    assert late.count(lambda r: r.payload == b"forged") == 0


def test_a_refused_publish_is_reported_as_not_authorized_over_mqtt5(fleet, device_ids):
    a_id, _ = device_ids
    a = fleet.identities.add_device(a_id)
    codes = []
    with probe(
        fleet.broker.tls_endpoint(a.credentials), protocol=MQTTProtocolVersion.MQTTv5
    ) as dev_a:
        dev_a.client.on_publish = lambda c, u, mid, rc, props: codes.append((mid, rc))
        bad = dev_a.client.publish(fleet.topics.desired(a_id), b"x", qos=1)
        good = dev_a.client.publish(fleet.topics.telemetry(a_id), b"x", qos=1)
        wait_until(lambda: len(codes) == 2, timeout=5)
    by_mid = dict(codes)
    assert by_mid[bad.mid].is_failure
    assert str(by_mid[bad.mid]) == "Not authorized"
    assert not by_mid[good.mid].is_failure


def test_last_will_is_published_retained_under_the_devices_identity(fleet, device_ids):
    a_id, b_id = device_ids
    topics = fleet.topics
    a = fleet.identities.add_device(a_id)
    endpoint = fleet.broker.tls_endpoint(a.credentials)
    forger_id = f"forger-{a_id}"
    with probe(fleet.broker.tls_endpoint(fleet.controller)) as ctl:
        ctl.subscribe(topics.all_devices(DeviceChannel.STATE))
        # A's credentials with a will on B's state: mosquitto drops a will the identity may not
        # publish. Taking over the client id afterwards proves the broker handled the drop.
        forger = probe(endpoint, will=(topics.state(b_id), b"forged-offline"), client_id=forger_id)
        drop_connection(forger.connect())
        with probe(endpoint, client_id=forger_id):
            pass
        dev_a = probe(endpoint, will=(topics.state(a_id), b"offline")).connect()
        drop_connection(dev_a)
        will = ctl.wait_for(lambda r: r.topic == topics.state(a_id))
        assert will.payload == b"offline"
    assert ctl.count(lambda r: r.payload == b"forged-offline") == 0
    with probe(fleet.broker.tls_endpoint(fleet.controller)) as late:
        late.subscribe(topics.state(b_id))
        late.subscribe(topics.state(a_id))
        late.wait_for(lambda r: r.topic == topics.state(a_id) and r.retain)
    assert late.count(lambda r: r.topic == topics.state(b_id)) == 0


def test_controller_reads_through_a_shared_subscription(fleet, device_ids):
    a_id, _ = device_ids
    topics = fleet.topics
    a = fleet.identities.add_device(a_id)
    with (
        probe(
            fleet.broker.tls_endpoint(fleet.controller), protocol=MQTTProtocolVersion.MQTTv5
        ) as ctl,
        probe(fleet.broker.tls_endpoint(a.credentials)) as dev_a,
    ):
        ctl.subscribe(topics.shared("controllers", topics.all_devices(DeviceChannel.TELEMETRY)))
        assert refused(ctl, f"$share/controllers/{topics.root}/#")
        dev_a.publish(topics.telemetry(a_id), b"t1")
        ctl.wait_for(lambda r: r.payload == b"t1")


@pytest.mark.parametrize("listener", ["tls", "plain"])
def test_anonymous_and_wrong_password_connects_are_refused(fleet, device_ids, listener):
    a_id, _ = device_ids
    a = fleet.identities.add_device(a_id)
    broker = fleet.broker

    def endpoint(credentials):
        if listener == "tls":
            return broker.tls_endpoint(credentials)
        return type(broker.admin_endpoint())(broker.plain_url, credentials=credentials)

    assert try_connect(endpoint(a.credentials)).accepted
    for credentials in (
        None,
        BrokerCredentials(a_id, a.credentials.password + "x"),
        BrokerCredentials(a_id, ""),
        BrokerCredentials("nobody", a.credentials.password),
        BrokerCredentials(broker.admin.username, a.credentials.password),
    ):
        outcome = try_connect(endpoint(credentials))
        assert not outcome.accepted, credentials
        assert "Not authorized" in outcome.reason or "user name or password" in outcome.reason


def test_revoked_device_is_disconnected_and_refused_and_reenrolled_gets_new_credentials(
    fleet, device_ids
):
    a_id, _ = device_ids
    identities = fleet.identities
    old = identities.add_device(a_id, groups=["site-1"])
    with pytest.raises(DeviceAlreadyEnrolledError):
        identities.add_device(a_id)
    live = probe(fleet.broker.tls_endpoint(old.credentials)).connect()
    try:
        identities.revoke_device(a_id)
        wait_until(lambda: not live.client.is_connected(), timeout=5)
    finally:
        live.client.loop_stop()
    assert not identities.is_enrolled(a_id)
    assert not try_connect(fleet.broker.tls_endpoint(old.credentials)).accepted
    with pytest.raises(UnknownDeviceError):
        identities.revoke_device(a_id)

    new = identities.reenroll_device(a_id, groups=["site-1"])
    assert new.credentials.password != old.credentials.password
    assert not try_connect(fleet.broker.tls_endpoint(old.credentials)).accepted
    with probe(fleet.broker.tls_endpoint(new.credentials)) as dev_a:
        dev_a.subscribe(fleet.topics.group_desired("site-1"))
        dev_a.subscribe(fleet.topics.desired(a_id))
        with probe(fleet.broker.tls_endpoint(fleet.controller)) as ctl:
            ctl.publish(fleet.topics.desired(a_id), b"welcome-back")
        dev_a.wait_for(lambda r: r.payload == b"welcome-back")


def test_rotation_gives_new_credentials_and_drops_the_old_session(fleet, device_ids):
    a_id, _ = device_ids
    old = fleet.identities.add_device(a_id)
    live = probe(fleet.broker.tls_endpoint(old.credentials)).connect()
    try:
        new = fleet.identities.rotate_device(a_id)
        wait_until(lambda: not live.client.is_connected(), timeout=5)
    finally:
        live.client.loop_stop()
    assert not try_connect(fleet.broker.tls_endpoint(old.credentials)).accepted
    assert try_connect(fleet.broker.tls_endpoint(new)).accepted


def test_group_membership_change_takes_effect_at_once(fleet, device_ids):
    a_id, _ = device_ids
    topics = fleet.topics
    a = fleet.identities.add_device(a_id, groups=["site-1"])
    fleet.identities.set_device_groups(a_id, ["site-2"])
    with probe(fleet.broker.tls_endpoint(a.credentials)) as dev_a:
        assert refused(dev_a, topics.group_desired("site-1"))
        dev_a.subscribe(topics.group_desired("site-2"))


def test_a_device_cannot_use_the_broker_admin_api(fleet, device_ids):
    a_id, b_id = device_ids
    a = fleet.identities.add_device(a_id)
    command = {"commands": [{"command": "createClient", "username": b_id, "password": "pw"}]}
    with probe(fleet.broker.tls_endpoint(a.credentials)) as dev_a:
        dev_a.publish(CONTROL_TOPIC, json.dumps(command).encode())
        dev_a.publish(fleet.topics.telemetry(a_id), b"sentinel")
    # The admin API answers in order; a later admin command sees no client B.
    assert not fleet.identities.is_enrolled(b_id)
    assert not try_connect(fleet.broker.tls_endpoint(BrokerCredentials(b_id, "pw"))).accepted


def test_the_controller_cannot_manage_identities_or_impersonate_devices(fleet, device_ids):
    a_id, _ = device_ids
    with probe(fleet.broker.tls_endpoint(fleet.controller)) as ctl:
        assert refused(ctl, "$CONTROL/dynamic-security/v1/response")
        for channel in DeviceChannel:
            ctl.subscribe(fleet.topics.all_devices(channel))
        for channel in DEVICE_TO_CONTROLLER:
            info = ctl.client.publish(fleet.topics.device(a_id, channel), b"forged", qos=1)
            info.wait_for_publish(5)
        ctl.publish(fleet.topics.desired(a_id), b"sentinel")
        ctl.wait_for(lambda r: r.payload == b"sentinel")
    assert ctl.count(lambda r: r.payload == b"forged") == 0


def test_rewriting_a_role_replaces_its_rules(fleet):
    # BrokerIdentities relies on this to keep roles in step with the code (setup_fleet).
    first = Role("edgefleet-test-rewrite", (AclRule(AclType.SUBSCRIBE, "x/old"),))
    second = Role("edgefleet-test-rewrite", (AclRule(AclType.SUBSCRIBE, "x/new"),))
    fleet.identities._ensure_role(first)
    fleet.identities._ensure_role(second)
    (response,) = fleet.admin.execute([{"command": "getRole", "rolename": second.name}])
    assert [acl["topic"] for acl in response["data"]["role"]["acls"]] == ["x/new"]
