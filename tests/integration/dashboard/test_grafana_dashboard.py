"""``deploy/grafana/edgefleet.json`` loads and every metric its PromQL names exists in a real
controller's scrape: its panels' queries and its variables' ``label_values`` are tokenized,
function, keyword, label and Grafana variable names skipped, and each metric name left must be a
series the exposition declares (a histogram's ``_bucket``, ``_count`` and ``_sum``, a counter's
``_total``)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
from dash_sim import topics_of
from prometheus_client.parser import text_string_to_metric_families

from support.latency_windows import LatencyFleet
from support.mosquitto import REPO
from support.mqtt import wait_until

DASHBOARD = REPO / "deploy" / "grafana" / "edgefleet.json"

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
   |(?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
   |(?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(?:(?:ms|[smhdwy])\d*)*)
   |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
   |(?P<punct>[(){}\[\],@])
   |(?P<operator>[-+*/%^=!<>~]+)
   |(?P<space>\s+)
    """,
    re.VERBOSE,
)
# Words of PromQL that are neither metrics nor followed by "(" (functions and aggregations are).
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Raises:
        ValueError: a character no PromQL token starts with (the tokenizer would guess).
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[position : position + 20]!r} in {expr!r}")
        position = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup or "", match.group()))
    names: set[str] = set()
    braces = brackets = parens = 0
    label_list_at: int | None = None  # parenthesis depth of a by (...) / on (...) list
    for i, (kind, text) in enumerate(tokens):
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct":
            braces += {"{": 1, "}": -1}.get(text, 0)
            brackets += {"[": 1, "]": -1}.get(text, 0)
            parens += {"(": 1, ")": -1}.get(text, 0)
            if text == ")" and label_list_at is not None and parens < label_list_at:
                label_list_at = None
            continue
        if kind != "name" or braces or brackets or label_list_at is not None:
            continue  # label matchers, ranges, grouping labels
        if text.lower() in _LABEL_LISTS and following == "(":
            label_list_at = parens + 1
        elif text.lower() in _KEYWORDS or following == "(" or following in {"by", "without"}:
            continue  # a keyword, a function, or an aggregation (its grouping may come first)
        else:
            names.add(text)
    return names


def template_query_names(query: str) -> set[str]:
    """The metric names of a Grafana Prometheus variable query."""
    label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
    if label_values:
        return metric_names(label_values.group(1))
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return set()
    query_result = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
    return metric_names(query_result.group(1) if query_result else query)


def panels_of(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from panels_of(panel.get("panels", []))  # rows, collapsed or not


def referenced(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Where each metric name is used: panel titles and variable names."""
    uses: dict[str, set[str]] = {}
    for panel in panels_of(dashboard["panels"]):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                uses.setdefault(name, set()).add(panel["title"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        for name in template_query_names(text):
            uses.setdefault(name, set()).add(f"${variable['name']}")
    return uses


def exposed_series(text: str) -> set[str]:
    """Every series name the exposition declares, by its families' types."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("", "_count", "_sum"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def missing(dashboard: dict[str, Any], exposed: set[str]) -> dict[str, set[str]]:
    return {name: uses for name, uses in referenced(dashboard).items() if name not in exposed}


def test_the_tokenizer_finds_metrics_and_skips_functions_labels_and_variables() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model_id, version) (rate(a_bucket{group=~"$g", '
        'le!="+Inf"}[$__rate_interval] offset 1h30m))) / on (model_id) group_left (version) '
        "sum without (group) (b:recorded_total) > bool 0 and c unless ignoring(x) d{} @ end()"
    )
    assert metric_names(expr) == {"a_bucket", "b:recorded_total", "c", "d"}
    assert metric_names("sum(rate(x_total[5m])) by (kind)") == {"x_total"}
    assert template_query_names('label_values(m_total{model_id=~"$model"}, group)') == {"m_total"}
    assert template_query_names("label_values(model_id)") == set()


def test_every_metric_the_grafana_dashboard_queries_exists_in_a_real_scrape(
    start_controller, probe
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(panels_of(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)  # Grafana keys panels by id
    targets = [t for p in panels for t in p.get("targets", [])]
    assert len(targets) >= 15
    for target in targets:
        assert target["datasource"]["uid"] == "${datasource}", target
        for by in re.findall(r"histogram_quantile\([^,]+,\s*sum by \(([^)]*)\)", target["expr"]):
            assert "le" in [label.strip() for label in by.split(",")], target["expr"]
    uses = referenced(dashboard)
    for name in ("edgefleet_model_latency_seconds_bucket", "edgefleet_model_latency_seconds_sum",
                 "edgefleet_model_latency_seconds_count", "edgefleet_model_requests_total",
                 "edgefleet_model_errors_total", "edgefleet_devices", "edgefleet_devices_online",
                 "edgefleet_ingest_received_total"):  # fmt: skip
        assert name in uses, f"no panel charts {name}"

    controller = start_controller()
    fleet = LatencyFleet(probe, topics_of(controller), seed=5)
    fleet.hello("pi-1", "plant-a")
    fleet.hello("old-1", "plant-a", wire=1)
    wait_until(lambda: len(controller.get("/api/devices")) == 2, timeout=20, interval=0.1)
    fleet.send("pi-1", 30, errors=1)
    fleet.send("old-1", 10)

    def scraped() -> str:
        return httpx.get(f"{controller.url}/metrics", timeout=10).text

    wait_until(lambda: "edgefleet_model_latency_seconds_bucket{" in scraped(), timeout=20)
    exposed = exposed_series(scraped())
    assert missing(dashboard, exposed) == {}
    assert "edgefleet_device_latency_seconds" not in exposed  # the quantile gauge is gone

    # The check fails on a panel naming a metric the controller does not expose.
    broken = copy.deepcopy(dashboard)
    target = next(t for p in panels_of(broken["panels"]) for t in p.get("targets", []))
    target["expr"] = target["expr"].replace("edgefleet_model_latency_seconds_bucket",
                                            "edgefleet_model_latency_bucket")  # fmt: skip
    assert set(missing(broken, exposed)) == {"edgefleet_model_latency_bucket"}
