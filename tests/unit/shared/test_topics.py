import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.shared.errors import InvalidTopicError
from edgefleet.shared.topics import DEFAULT_TOPICS, DeviceChannel, Topics, validate_device_id


def test_topics_live_under_the_versioned_root():
    assert DEFAULT_TOPICS.state("pi-7") == "edgefleet/v1/devices/pi-7/state"
    assert DEFAULT_TOPICS.desired("pi-7") == "edgefleet/v1/devices/pi-7/desired"
    assert DEFAULT_TOPICS.all_devices(DeviceChannel.TELEMETRY) == "edgefleet/v1/devices/+/telemetry"
    sha = "a" * 64
    assert DEFAULT_TOPICS.artifact_chunks(sha) == f"edgefleet/v1/artifacts/{sha}/chunks"
    assert Topics.shared("controllers", "x/+/y") == "$share/controllers/x/+/y"


@pytest.mark.parametrize(
    "bad", ["", "a+b", "a#", "a/b", "x" * 65, " pi", "pi 7", "-pi", "pi\x00", "ü", "$SYS"]
)
def test_invalid_device_ids_are_refused(bad):
    with pytest.raises(InvalidTopicError):
        validate_device_id(bad)
    with pytest.raises(InvalidTopicError):
        DEFAULT_TOPICS.state(bad)


def test_longest_valid_device_id_is_64_chars():
    assert validate_device_id("a" * 64) == "a" * 64


@given(
    device_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    channel=st.sampled_from(list(DeviceChannel)),
)
def test_build_then_parse_round_trips(device_id, channel):
    topics = Topics(root="edgefleet-test/abc/v1")
    parsed = topics.parse_device_topic(topics.device(device_id, channel))
    assert (parsed.device_id, parsed.channel) == (device_id, channel)


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/devices/pi/state",
        "edgefleet/v1/devices/pi/unknown",
        "edgefleet/v1/devices/pi/state/extra",
        "edgefleet/v1/devices/pi+/state",
        "edgefleet/v1/devices//state",
    ],
)
def test_parse_rejects_foreign_topics(topic):
    with pytest.raises(InvalidTopicError):
        DEFAULT_TOPICS.parse_device_topic(topic)


def test_artifact_topic_parses_and_validates_sha():
    sha = "0123456789abcdef" * 4
    assert DEFAULT_TOPICS.parse_artifact_topic(DEFAULT_TOPICS.artifact_chunks(sha)) == sha
    with pytest.raises(InvalidTopicError):
        DEFAULT_TOPICS.artifact_chunks("ABC")


@pytest.mark.parametrize("root", ["", "a/+/b", "a/#", "/lead", "trail/"])
def test_bad_roots_are_refused(root):
    with pytest.raises(InvalidTopicError):
        Topics(root=root)
