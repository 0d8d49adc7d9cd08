"""The controller's API and CLI against a running controller: auth, validation, the embedded
broker, and PostgreSQL as the database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from support.fleet import ControllerProcess, register_tiny_model
from support.mqtt import wait_until
from support.tools import require_tool

SHOTS_FOR_LEAD = Path("/tmp/edgefleet-screenshots")

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(tmp_path, model_template):
    """A controller with no broker URL: it runs its own (amqtt)."""
    data = tmp_path / "controller"
    shutil.copytree(model_template, data)
    controller = ControllerProcess(data, broker_url=None, topic_root="edgefleet-api/v1").start()
    yield controller
    controller.stop()


STATE_CHANGING = [
    ("POST", "/api/rollouts", {"model": "tiny", "version": "1"}),
    ("POST", "/api/rollouts/1/pause", {}),
    ("POST", "/api/rollouts/1/resume", {}),
    ("POST", "/api/rollouts/1/abort", {}),
    ("POST", "/api/rollouts/1/rollback", {}),
    ("POST", "/api/devices/pi-1/rollback", {}),
]


def test_state_changing_routes_need_the_token(embedded):
    for method, path, body in STATE_CHANGING:
        anonymous = httpx.request(method, embedded.url + path, json=body, timeout=10)
        assert anonymous.status_code == 401, (path, anonymous.text)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = httpx.request(
            method, embedded.url + path, json=body, timeout=10,
            headers={"Authorization": "Bearer not-the-token"},
        )  # fmt: skip
        assert wrong.status_code == 403, (path, wrong.text)
    # Reads need no token on loopback.
    assert httpx.get(embedded.url + "/api/rollouts", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"model": "tiny"}, 422, "version"),
        ({"model": "tiny", "version": "1", "surprise": 1}, 422, "surprise"),
        ({"model": "tiny", "version": "9"}, 404, "no model 'tiny:9'"),
        ({"model": "nope", "version": "1"}, 404, "no model"),
        ({"model": "tiny", "version": "1", "selector": "site"}, 422, "bad selector term"),
        ({"model": "tiny", "version": "1", "waves": "0%"}, 422, "bad wave"),
        ({"model": "tiny", "version": "1", "selector": "site=nowhere"}, 404, "matches no known"),
        ({"model": "tiny", "version": "1", "policy": {"max_failures": "x"}}, 422, "max failures"),
        ({"model": "tiny", "version": "1", "policy": {"on_breach": "panic"}}, 422, "on_breach"),
    ],
)
def test_bad_rollout_requests_get_a_4xx_with_the_reason(embedded, body, status, reason):
    response = embedded.api("POST", "/api/rollouts", json=body)
    assert response.status_code == status, response.text
    assert reason in response.text


def sent_sha(controller, target):
    artifacts = controller.get("/api/models/tiny/versions/1")["artifacts"]
    return next(a["sha256"] for a in artifacts if a["target"] == target)


def test_artifact_downloads_need_the_token_or_a_signed_url(embedded):
    sha = sent_sha(embedded, "onnx-fp32")
    url = f"{embedded.url}/artifacts/{sha}"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403
    forged = httpx.get(url, params={"device": "pi-1", "expires": 4102444800, "sig": "0" * 64})
    assert forged.status_code == 403
    assert "signature" in forged.text
    # With the token, and with Range, as a resumed download asks.
    part = embedded.api("GET", f"/artifacts/{sha}", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206
    assert len(part.content) == 10


def test_unknown_resources_are_404(embedded):
    assert embedded.api("GET", "/api/rollouts/99").status_code == 404
    assert embedded.api("POST", "/api/rollouts/99/pause", json={}).status_code == 404
    assert embedded.api("GET", "/api/devices/nobody").status_code == 404
    assert embedded.api("GET", "/artifacts/" + "0" * 64).status_code == 404


def test_embedded_broker_carries_a_rollout_end_to_end(embedded, tmp_path):
    """No external broker at all: the controller's own serves a real agent."""
    from support.agent_harness import AgentProcess, settings_dict, write_toml

    health = embedded.get("/api/health")
    assert health["embedded_broker"] is True
    assert health["broker_connected"] is True
    from edgefleet.shared import Topics

    values = settings_dict(
        device_id="emb-1", broker_url=health["broker_url"], topics=Topics("edgefleet-api/v1"),
        key_path=embedded.data_dir / "keys" / "signing.pub", data_dir=tmp_path / "agent",
        runtimes=["onnxruntime"], fetch_prefer="http",
    )  # fmt: skip
    agent = AgentProcess(write_toml(tmp_path / "agent.toml", values), tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: any(d["online"] for d in embedded.get("/api/devices")), timeout=60)
        created = embedded.api(
            "POST", "/api/rollouts", json={"model": "tiny", "version": "1", "policy": {"soak_s": 0}}
        ).json()
        wait_until(
            lambda: embedded.get(f"/api/rollouts/{created['id']}")["status"] == "completed",
            timeout=60,
        )
        # A completed rollout cannot be paused: 409 with the reason.
        conflict = embedded.api("POST", f"/api/rollouts/{created['id']}/pause", json={})
        assert conflict.status_code == 409
        assert "is completed" in conflict.text
        # The agent fetched over HTTP with the signed URL from its manifest.
        sent = embedded.get(f"/api/rollouts/{created['id']}")["devices"][0]
        fetched = [
            line for line in embedded.log().splitlines()
            if f"GET /artifacts/{sent_sha(embedded, sent['target'])}?device=emb-1&expires=" in line
        ]  # fmt: skip
        assert fetched, embedded.log()[-2000:]
        assert all(" 200 " in line or " 206 " in line for line in fetched), fetched
        # The CLI reads the same API.
        env = {**os.environ, "EDGEFLEET_API_TOKEN": embedded.token}
        listed = subprocess.run(
            [sys.executable, "-m", "edgefleet.controller.cli", "rollout", "list", "--json",
             "--url", embedded.url],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        assert json.loads(listed.stdout)[0]["status"] == "completed"
        devices = subprocess.run(
            [sys.executable, "-m", "edgefleet.controller.cli", "device", "list", "--json",
             "--selector", "runtime=onnxruntime", "--url", embedded.url],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        (device,) = json.loads(devices.stdout)
        assert device["id"] == "emb-1"
        assert device["active"]["version"] == "1"
        shown = subprocess.run(
            [sys.executable, "-m", "edgefleet.controller.cli", "device", "show", "emb-1",
             "--url", embedded.url],
            capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=60, check=True,
        )  # fmt: skip
        assert "swapped" in shown.stdout
        assert "tiny:1" in shown.stdout
    finally:
        agent.terminate()


def test_cli_reports_api_errors_with_a_nonzero_exit(embedded):
    env = {**os.environ, "EDGEFLEET_API_TOKEN": embedded.token}
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "rollout", "start", "tiny:9",
         "--url", embedded.url],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "404" in result.stderr
    assert "tiny:9" in result.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "rollout", "list",
         "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert unreachable.returncode == 3
    assert "cannot reach the controller" in unreachable.stderr


def test_rollout_on_postgresql(tmp_path, database_url, own_broker):
    """The registry and a rollout with PostgreSQL (and SQLite) as the controller's database."""
    from edgefleet.shared import Topics
    from support.agent_harness import AgentProcess, settings_dict, write_toml

    data = tmp_path / "controller"
    register_tiny_model(
        data, version="1", seed=1, targets=("onnx-fp32",), database_url=database_url
    )
    topics = Topics("edgefleet-pg/v1")
    controller = ControllerProcess(
        data, broker_url=own_broker.url, topic_root=topics.root,
        extra_env={"EDGEFLEET_DATABASE_URL": database_url},
    ).start()  # fmt: skip
    agents = []
    try:
        assert controller.get("/api/health")["database"] == database_url.split(":")[0].split("+")[0]
        for device_id in ("db-1", "db-2"):
            values = settings_dict(
                device_id=device_id, broker_url=own_broker.url, topics=topics,
                key_path=data / "keys" / "signing.pub", data_dir=tmp_path / device_id,
            )  # fmt: skip
            agent = AgentProcess(
                write_toml(tmp_path / f"{device_id}.toml", values), tmp_path / f"{device_id}.log"
            )
            agents.append(agent.start())
        wait_until(lambda: len(controller.get("/api/devices")) == 2, timeout=60)
        created = controller.api(
            "POST", "/api/rollouts",
            json={"model": "tiny", "version": "1", "waves": "1,100%", "policy": {"soak_s": 0}},
        ).json()  # fmt: skip
        wait_until(
            lambda: controller.get(f"/api/rollouts/{created['id']}")["status"] == "completed",
            timeout=60,
        )
        controller.stop()  # restart on the same database: everything is still there
        controller.start()
        rollout = controller.get(f"/api/rollouts/{created['id']}")
        assert rollout["status"] == "completed"
        assert {d["state"] for d in rollout["devices"]} == {"active"}
    finally:
        for agent in agents:
            agent.terminate()
        controller.stop()


def test_reads_need_the_token_when_the_api_leaves_loopback(tmp_path, model_template):
    """Bound beyond loopback: reads need the token or a session from the login form, whose
    cookie is derived from the token, Secure, and dies with the token; only the configured
    Host names are served; the token never reaches the log."""
    data = tmp_path / "controller"
    shutil.copytree(model_template, data)
    token = f"open-{uuid.uuid4().hex}"
    controller = ControllerProcess(
        data, broker_url=None, topic_root="edgefleet-open/v1",
        extra_env={
            "EDGEFLEET_HTTP_HOST": "0.0.0.0",  # test traffic still goes to 127.0.0.1
            "EDGEFLEET_HTTP_ALLOWED_HOSTS": "controller.test, *.fleet.test",
            "EDGEFLEET_API_TOKEN": token,
        },
    )  # fmt: skip
    controller.token = token
    controller.start()
    try:
        for path in ("/api/devices", "/api/rollouts", "/dashboard", "/metrics"):
            refused = httpx.get(controller.url + path, timeout=10)
            assert refused.status_code == 401, path
            assert "/login" in refused.json()["detail"]
            assert controller.api("GET", path).status_code == 200, path
        for host in ("controller.test", f"controller.test:{controller.port}", "eu.fleet.test"):
            assert controller.api("GET", "/api/devices", headers={"Host": host}).status_code == 200
        for host in ("evil.test", "fleet.test", "controller.test.evil.test"):
            misdirected = controller.api("GET", "/api/devices", headers={"Host": host})
            assert misdirected.status_code == 421, host
            assert misdirected.json()["error"] == "HostNotAllowedError"

        login = f"{controller.url}/login"
        in_url = httpx.get(login, params={"token": token}, timeout=10)
        assert in_url.status_code == 200
        assert "set-cookie" not in in_url.headers
        assert httpx.post(login, data={"token": "nope"}, timeout=10).status_code == 403
        signed_in = httpx.post(login, data={"token": token}, timeout=10)
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/dashboard"
        cookie = signed_in.headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        value = rest.split(";")[0]
        assert name == "edgefleet_session"
        assert token not in value
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "secure"} <= flags
        # Browsers send a Secure cookie over HTTPS only (a TLS proxy here); httpx neither, so
        # the test sends it as such a browser would.
        session = {"Cookie": f"edgefleet_session={value}"}
        assert httpx.get(controller.url + "/dashboard", headers=session).status_code == 200
        fragment = httpx.get(controller.url + "/dashboard/rollouts?fragment=1", headers=session)
        assert fragment.status_code == 200
        for forged in (token, value[:-1] + ("0" if value[-1] != "0" else "1"), "1." + "0" * 64):
            bad = httpx.get(
                controller.url + "/dashboard", headers={"Cookie": f"edgefleet_session={forged}"}
            )
            assert bad.status_code == 401, forged
        # A session is no bearer token: it does not change state.
        write = httpx.post(controller.url + "/api/rollouts", json={}, headers=session, timeout=10)
        assert write.status_code == 401

        log = controller.log()
        assert token not in log
        assert "GET /login?token=[redacted]" in log

        # A new token ends every session.
        controller.stop()
        controller.token = controller.env["EDGEFLEET_API_TOKEN"] = f"rotated-{uuid.uuid4().hex}"
        controller.start()
        assert httpx.get(controller.url + "/dashboard", headers=session).status_code == 401
        assert controller.api("GET", "/dashboard").status_code == 200
    finally:
        controller.stop()


def test_a_browser_signs_in_with_the_form_when_the_api_leaves_loopback(tmp_path, model_template):
    """Real headless Chromium: the dashboard answers 401, the form signs in, the dashboard
    loads with the session cookie (Chromium keeps Secure cookies on http://localhost)."""
    chromium = require_tool("chromium", "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    data = tmp_path / "controller"
    shutil.copytree(model_template, data)
    token = f"browser-{uuid.uuid4().hex}"
    controller = ControllerProcess(
        data, broker_url=None, topic_root="edgefleet-browser/v1",
        extra_env={"EDGEFLEET_HTTP_HOST": "0.0.0.0", "EDGEFLEET_API_TOKEN": token},
    )  # fmt: skip
    controller.token = token
    controller.start()
    base = f"http://localhost:{controller.port}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": 900, "height": 600})
                denied = page.goto(f"{base}/dashboard")
                assert denied is not None
                assert denied.status == 401
                assert "/login" in page.inner_text("body")
                page.goto(f"{base}/login")
                page.fill("#token", "not-the-token")
                page.click("button[type=submit]")
                assert "Wrong API token." in page.inner_text("[role=alert]")
                page.fill("#token", token)
                SHOTS_FOR_LEAD.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS_FOR_LEAD / "login-form.png"))
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/dashboard")
                page.wait_for_selector("#live")
                assert page.title().startswith("Fleet")
                (cookie,) = page.context.cookies()
                assert cookie["name"] == "edgefleet_session"
                assert token not in cookie["value"]
                assert cookie["secure"] is True
                assert cookie["httpOnly"] is True
                assert cookie["sameSite"] == "Strict"
                # The page's own live refresh goes through with the session too.
                page.wait_for_function("Number(document.body.dataset.refreshes || 0) >= 1")
            finally:
                browser.close()
        assert token not in controller.log()
    finally:
        controller.stop()


def test_cli_refuses_a_latency_budget_it_cannot_read_before_calling_the_api():
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "rollout", "start", "tiny:1",
         "--latency-budget", "board=pi4:fast", "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected SELECTOR:BUDGET, e.g. board=pi4:150ms" in result.stderr
