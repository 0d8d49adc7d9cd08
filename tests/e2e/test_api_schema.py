"""The controller's OpenAPI document held against the controller itself: schemathesis runs every
check it has (no 5xx, documented status codes, content types, headers and bodies, schema-valid
requests accepted and schema-violating ones refused, auth enforced where declared) on every
operation, with the API token and without it.

It runs as ``st run`` in a child process, the command an operator would type: its pytest loader
(``schemathesis.pytest.from_fixture``) does not work on pytest 9.2 (it sets ``Node._nodeid``,
which pytest 9.2 removed), and the command runs every phase, the stateful one included.

A real controller process with its SQLite database, on the session's mosquitto, with three
devices (hello, state, telemetry, an event) and a running rollout, so reads find data.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.shared import Event, EventType, Topics, encode
from support.fleet import ControllerProcess
from support.mosquitto import MosquittoBroker
from support.mqtt import MqttProbe, wait_until
from support.samples import device_hello, device_state, device_telemetry, slot

pytestmark = pytest.mark.slow

SEED = 20261201  # fixed, so a failure here fails the same way on every run
MAX_EXAMPLES = 25  # per operation and phase: a few seconds per run on two slow cores
FLEET = {"pi-0": "plant-1", "pi-1": "plant-2", "pi-2": "plant-2"}


def seed_fleet(controller: ControllerProcess, broker: MosquittoBroker, topics: Topics) -> int:
    """Devices as agents announce them, then a rollout to one of them; its id."""
    with MqttProbe(broker.host, broker.port) as probe:
        for device_id, site in FLEET.items():
            probe.publish(
                topics.hello(device_id), encode(device_hello(device_id, labels={"site": site}))
            )
            state = device_state(device_id, active=slot())
            probe.publish(topics.state(device_id), encode(state), retain=True)
            probe.publish(topics.telemetry(device_id), encode(device_telemetry(device_id, 2.0)))
            event = Event(device_id=device_id, type=EventType.COMMAND_DONE, at=datetime.now(UTC))
            probe.publish(topics.events(device_id), encode(event))
        wait_until(lambda: len(controller.get("/api/devices")) == len(FLEET), timeout=30)
    created = controller.api(
        "POST", "/api/rollouts", json={"model": "tiny", "version": "2", "selector": "site=plant-1"}
    )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


@pytest.fixture(scope="module")
def controller(
    tmp_path_factory: pytest.TempPathFactory, model_template: Path, mosquitto: MosquittoBroker
) -> Iterator[ControllerProcess]:
    data_dir = tmp_path_factory.mktemp("api-schema") / "controller"
    shutil.copytree(model_template, data_dir)
    topics = Topics(f"edgefleet-schema/{uuid.uuid4().hex[:10]}/v1")
    process = ControllerProcess(
        data_dir,
        broker_url=mosquitto.url,
        topic_root=topics.root,
        extra_env={"EDGEFLEET_SHARE_GROUP": f"schema{uuid.uuid4().hex[:6]}"},
    ).start()
    try:
        seed_fleet(process, mosquitto, topics)
        yield process
    finally:
        process.stop()


def schemathesis_run(url: str, cwd: Path, *headers: str) -> subprocess.CompletedProcess[str]:
    """``st run <url>/openapi.json --checks all``: every phase (examples, coverage, fuzzing,
    stateful sequences) with a bounded number of examples, a fixed seed and no example
    database, so a run is the same on every machine."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--generation-database", "none", "--request-timeout", "20", "--no-color",
        *(option for header in headers for option in ("--header", header)),
    ]  # fmt: skip
    # In a directory of its own: no schemathesis.toml found there, no report left behind.
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=280)


@pytest.mark.parametrize("authenticated", [True, False], ids=["token", "no-token"])
def test_schemathesis_finds_nothing_the_schema_does_not_say(
    controller: ControllerProcess, tmp_path: Path, authenticated: bool
) -> None:
    headers = [f"Authorization: Bearer {controller.token}"] if authenticated else []
    document = controller.get("/openapi.json")
    operations = sum(len(item) for item in document["paths"].values())
    started = time.monotonic()
    run = schemathesis_run(controller.url, tmp_path, *headers)
    elapsed = time.monotonic() - started
    report = run.stdout[-12000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested is not None, report
    assert int(tested[1]) == operations, report  # every operation, none skipped
    assert elapsed < 240, f"schemathesis took {elapsed:.0f}s"


def test_the_document_says_how_each_route_is_guarded(controller: ControllerProcess) -> None:
    """Reads are open on loopback or take the token; writes take the token; every error has
    one shape, FastAPI's list-of-errors schema is gone."""
    document = controller.get("/openapi.json")
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorBody"]["required"]) == {"detail", "error"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            security = operation.get("security")
            if path == "/login" or path.startswith("/artifacts/"):
                continue
            if method == "get":
                assert security == [{"HTTPBearer": []}, {}], (method, path)
                assert "loopback" in operation["description"], (method, path)
            else:
                assert security == [{"HTTPBearer": []}], (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
    artifact = document["paths"]["/artifacts/{sha256}"]["get"]
    assert artifact["security"] == [{"HTTPBearer": []}, {"SignedArtifactUrl": []}]
