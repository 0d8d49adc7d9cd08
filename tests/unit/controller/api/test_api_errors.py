"""The API's errors and formats: one error shape from every handler, integers bounded before
they reach the database, the formats the schema states accepted by the code behind them, and
the OpenAPI document completed by :func:`install_openapi`.

HTTP cases run the real app in-process (its lifespan starts a real service on the session's
mosquitto, with SQLite in a temp dir).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.controller.api.openapi import LOOPBACK_NOTE, document_api, install_openapi
from edgefleet.controller.api.schemas import (
    DEVICE_ID_PATTERN,
    MAX_FAILURES_PATTERN,
    MAX_ROLLOUT_ID,
    SELECTOR_PATTERN,
    WAVES_PATTERN,
    RolloutCreate,
    RolloutPolicy,
    as_utc,
)
from edgefleet.controller.app import create_app
from edgefleet.controller.config import get_settings
from edgefleet.controller.fleet.selectors import parse_selector
from edgefleet.controller.rollouts.gates import GatePolicy, failures_allowed
from edgefleet.controller.rollouts.waves import parse_waves
from edgefleet.shared.topics import validate_device_id
from support.mosquitto import MosquittoBroker

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoBroker
) -> Iterator[TestClient]:
    settings = get_settings(
        data_dir=tmp_path_factory.mktemp("api-errors"),
        broker_url=mosquitto.url,
        topic_root=f"edgefleet-api-errors/{uuid.uuid4().hex[:10]}/v1",
        share_group=f"errors{uuid.uuid4().hex[:6]}",
        api_token=TOKEN,
    )
    app = create_app(settings)
    # A loopback Host, as the controller's own clients send: the guard serves only those.
    with TestClient(app, base_url="http://127.0.0.1:8080", raise_server_exceptions=False) as c:
        yield c


def error_of(response: Any) -> dict[str, Any]:
    """The body of an error response, checked to be an ``ErrorBody``."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body["detail"], str), body
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", body["error"]), body
    assert set(body) <= {"detail", "error", "problems"}, body
    return dict(body)


# --- integers bounded before the database ------------------------------------------------------


@pytest.mark.parametrize("rollout_id", [10**22, 2**63, MAX_ROLLOUT_ID + 1, 0, -1])
def test_a_rollout_id_out_of_range_is_refused_not_a_500(
    client: TestClient, rollout_id: int
) -> None:
    for response in (
        client.get(f"/api/rollouts/{rollout_id}"),
        client.post(f"/api/rollouts/{rollout_id}/pause", json={}, headers=AUTH),
    ):
        assert response.status_code == 422, response.text
        body = error_of(response)
        assert body["error"] == "RequestValidationError"
        assert body["problems"][0]["where"] == "path.rollout_id"


def test_the_largest_rollout_id_is_simply_not_found(client: TestClient) -> None:
    response = client.get(f"/api/rollouts/{MAX_ROLLOUT_ID}")
    assert response.status_code == 404
    assert error_of(response) == {
        "detail": f"no rollout {MAX_ROLLOUT_ID}",
        "error": "RolloutNotFoundError",
    }


# --- one error shape ---------------------------------------------------------------------------


def test_every_kind_of_error_answers_the_same_shape(client: TestClient) -> None:
    missing_device = client.get("/api/devices/nobody")
    assert missing_device.status_code == 404
    assert error_of(missing_device)["error"] == "DeviceNotFoundError"

    no_token = client.post("/api/rollouts", json={"model": "m", "version": "1"})
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"] == "Bearer"
    error_of(no_token)

    wrong_token = client.post(
        "/api/rollouts", json={"model": "m", "version": "1"}, headers={"Authorization": "Bearer x"}
    )
    assert wrong_token.status_code == 403
    error_of(wrong_token)

    unknown_model = client.post("/api/rollouts", json={"model": "m", "version": "1"}, headers=AUTH)
    assert unknown_model.status_code == 404
    assert error_of(unknown_model)["error"] == "ModelNotFoundError"

    unreadable = client.post(
        "/api/rollouts",
        content=b"\xff\xfe not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert unreadable.status_code in {400, 422}, unreadable.text
    error_of(unreadable)

    no_route = client.get("/api/nothing-here")
    assert no_route.status_code == 404
    assert error_of(no_route)["error"] == "NotFound"


def test_a_validation_error_is_a_sentence_and_a_list_of_problems(client: TestClient) -> None:
    response = client.post(
        "/api/rollouts",
        json={"model": "tiny", "version": "1", "selector": "site", "surprise": 1},
        headers=AUTH,
    )
    assert response.status_code == 422
    body = error_of(response)
    assert body["error"] == "RequestValidationError"
    where = {p["where"] for p in body["problems"]}
    assert where == {"body.selector", "body.surprise"}
    assert "body.selector: bad selector term in 'site'" in body["detail"]
    assert "body.surprise: Extra inputs are not permitted" in body["detail"]


def test_a_wrong_method_lists_every_method_the_path_serves(client: TestClient) -> None:
    response = client.delete("/api/rollouts", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert error_of(response)["error"] == "MethodNotAllowed"


def test_a_range_outside_the_artifact_is_416_in_the_same_shape(client: TestClient) -> None:
    # No artifact is registered here: the 404 comes first, and says which.
    response = client.get("/artifacts/" + "0" * 64, headers={**AUTH, "Range": "bytes=0-1"})
    assert response.status_code == 404
    assert error_of(response)["error"] == "ArtifactNotFoundError"


# --- the formats the schema states, against the code behind them --------------------------------


@settings(max_examples=100, deadline=None)
@given(st.from_regex(SELECTOR_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 512))
def test_every_selector_the_schema_allows_parses(text: str) -> None:
    parse_selector(text)
    RolloutCreate(model="m", version="1", selector=text)  # pydantic's regex engine agrees


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab=!,* .-\t", max_size=20))
def test_what_the_selector_parser_refuses_the_schema_refuses(text: str) -> None:
    try:
        parse_selector(text)
    except ValueError:
        assert re.fullmatch(SELECTOR_PATTERN, text) is None


@settings(max_examples=100, deadline=None)
@given(
    st.from_regex(WAVES_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 128),
    st.integers(1, 5000),
)
def test_every_wave_plan_the_schema_allows_parses(spec: str, fleet: int) -> None:
    waves = parse_waves(spec, fleet)
    assert waves[-1] == fleet
    RolloutCreate(model="m", version="1", waves=spec)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(MAX_FAILURES_PATTERN, fullmatch=True))
def test_every_failure_budget_the_schema_allows_parses(spec: str) -> None:
    assert failures_allowed(spec, 100) >= 0
    RolloutPolicy(max_failures=spec)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_failures", "x"),
        ("max_failures", "-1"),
        ("max_failures", "101%"),
        ("max_failures", " 3"),
        ("soak_s", 1e12),
        ("max_p95_regression", float("inf")),
        ("min_requests", 10**12),
    ],
)
def test_a_policy_value_the_gates_cannot_use_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        RolloutPolicy.model_validate({field: value})


def test_the_request_policy_is_the_gate_policy_with_its_rules_written_down() -> None:
    assert set(RolloutPolicy.model_fields) == set(GatePolicy.model_fields)
    assert RolloutPolicy().model_dump() == GatePolicy().model_dump()
    with pytest.raises(ValidationError, match=r"latency_budgets\.0\.selector"):
        RolloutPolicy.model_validate({"latency_budgets": [{"selector": "site", "budget_ms": 5}]})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aZ09._-/ \x00é", max_size=70))
def test_the_device_id_pattern_is_the_wire_rule(text: str) -> None:
    try:
        validate_device_id(text)
        wire_accepts = True
    except ValueError:
        wire_accepts = False
    assert wire_accepts == (re.fullmatch(DEVICE_ID_PATTERN, text) is not None)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-01-31T08:00:00+01:00", datetime(2026, 1, 31, 7, tzinfo=UTC)),
        ("0001-01-01T00:00:00+05:00", datetime.min.replace(tzinfo=UTC)),
        ("9999-12-31T23:59:59-05:00", datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_query_times_are_compared_in_utc_even_at_the_edges(moment: str, expected: datetime) -> None:
    assert as_utc(datetime.fromisoformat(moment)) == expected


@pytest.mark.parametrize("query", ["since=0.5", "since=2026-01-31", "since=2026-01-31T08:00:00"])
def test_a_time_that_is_not_rfc_3339_with_an_offset_is_refused(
    client: TestClient, query: str
) -> None:
    response = client.get(f"/api/telemetry?{query}")
    assert response.status_code == 422, response.text
    assert error_of(response)["problems"][0]["where"] == "query.since"


def test_an_empty_or_overlong_series_range_answers_what_it_covers(client: TestClient) -> None:
    backwards = client.get(
        "/api/series/group",
        params={"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
    )
    assert backwards.status_code == 200, backwards.text
    assert backwards.json()["latency"] == []
    long = client.get(
        "/api/series/group",
        params={"since": "0001-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
    )
    assert long.status_code == 200, long.text
    since = datetime.fromisoformat(long.json()["since"])
    assert since == datetime(2026, 1, 1, tzinfo=UTC) - timedelta(days=400)  # the last 400 days


# --- the OpenAPI document ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(get_settings(data_dir=Path(tmp_path_factory.mktemp("openapi"))))
    install_openapi(app)
    return app.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_the_document_has_one_error_schema(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in operations(document):
        for code, response in operation["responses"].items():
            if code[0] in "45":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
        assert {"400", "421"} <= set(operation["responses"]), (method, path)


def test_the_document_says_which_reads_are_open_on_loopback(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        if path in {"/login"} or path.startswith("/artifacts/"):
            continue
        if method == "get":
            assert operation["security"] == [{"HTTPBearer": []}, {}], path
            assert LOOPBACK_NOTE in operation["description"], path
        else:
            assert operation["security"] == [{"HTTPBearer": []}], path
            assert {"401", "403", "413", "422"} <= set(operation["responses"]), path


def test_parameters_are_never_null_and_ids_are_bounded(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for parameter in operation.get("parameters", []):
            assert "anyOf" not in parameter["schema"], (method, path, parameter)
    rollout = document["paths"]["/api/rollouts/{rollout_id}"]["get"]["parameters"][0]["schema"]
    assert (rollout["minimum"], rollout["maximum"]) == (1, MAX_ROLLOUT_ID)


def test_completing_the_document_twice_changes_nothing(document: dict[str, Any]) -> None:
    import copy

    again = document_api(copy.deepcopy(document))
    assert again == document
