"""``edgefleet rollout ...``: start, watch and steer rollouts through the controller API."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgefleet.controller.commands.api_client import (
    DEFAULT_URL,
    ApiClient,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    resolve_token,
)
from edgefleet.controller.rollouts.gates import LatencyBudget

rollout_app = typer.Typer(help="Start, watch and steer rollouts.", no_args_is_help=True)
console = Console()
FINAL = {"completed", "aborted", "rolled_back"}


def _left(deadline: str | None) -> str:
    """``(12m30s left)`` until an API timestamp, or nothing."""
    if not deadline:
        return ""
    moment = datetime.fromisoformat(deadline)
    if moment.tzinfo is None:  # SQLite hands datetimes back naive; they are UTC
        moment = moment.replace(tzinfo=UTC)
    seconds = (moment - datetime.now(UTC)).total_seconds()
    if seconds < 0:
        return " (deadline passed)"
    return f" ({int(seconds // 60)}m{int(seconds % 60):02d}s left)"


def _percent(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a percentage like 20%")
    return float(match.group(1)) / 100


def _seconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 60s or 5m")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s)?\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a latency like 1ms, 500us or 0.5s")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, None: 1.0, "s": 1000.0}[match.group(2)]


def rollout_table(rollout: dict[str, Any]) -> Table:
    counts = rollout.get("counts", {})
    title = (
        f"rollout {rollout['id']}: {rollout['model']}:{rollout['version']} -> "
        f"{rollout['selector']}  [{rollout['status']}]  wave {rollout['current_wave'] + 1}/"
        f"{len(rollout['waves'])}{_left(rollout.get('wave_deadline_at'))}  "
        + " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    )
    table = Table(title=title, title_justify="left")
    for column in ("device", "wave", "state", "target", "serial", "deadline", "reason"):
        table.add_column(column)
    for device in rollout["devices"]:
        in_flight = device["state"] in {"sent", "pending", "reverting"}
        table.add_row(
            device["device_id"],
            str(device["wave"] + 1),
            device["state"],
            device["target"] or "",
            str(device["serial"] or ""),
            _left(device.get("deadline_at")).strip(" ()") if in_flight else "",
            (device["reason"] or "")[:80],
        )
    if rollout.get("reason"):
        table.caption = rollout["reason"]
    return table


def watch(
    client: ApiClient, rollout_id: int, *, interval: float = 1.0, timeout: float = 0
) -> dict[str, Any]:
    """Show a live view until the rollout ends (or pauses); return its last state."""
    started = time.monotonic()
    rollout: dict[str, Any] = client.call("GET", f"/api/rollouts/{rollout_id}")
    with Live(rollout_table(rollout), console=console, refresh_per_second=4) as live:
        while rollout["status"] not in FINAL | {"paused"}:
            if timeout and time.monotonic() - started > timeout:
                break
            time.sleep(interval)
            rollout = client.call("GET", f"/api/rollouts/{rollout_id}")
            live.update(rollout_table(rollout))
    return rollout


@rollout_app.command("start")
def start(
    target: Annotated[str, typer.Argument(metavar="MODEL:VERSION")],
    to: Annotated[str, typer.Option("--to", help="device selector, e.g. site=plant-3")] = "*",
    waves: Annotated[str, typer.Option(help="cumulative waves, canary first")] = "1,10%,50%,100%",
    max_failures: Annotated[str, typer.Option(help="failed devices allowed: N or N%")] = "0",
    max_p95_regression: Annotated[str, typer.Option(help="e.g. 20%")] = "20%",
    min_p95_regression: Annotated[
        str,
        typer.Option(help="a p95 rise breaches only when it is also more than this, e.g. 1ms"),
    ] = "1ms",
    min_requests: Annotated[
        int,
        typer.Option(min=0, help="requests needed on each side (new, previous) to judge p95"),
    ] = 20,
    max_error_rate: Annotated[str, typer.Option(help="e.g. 1%")] = "1%",
    soak: Annotated[str, typer.Option(help="observation window per wave, e.g. 60s")] = "60s",
    on_breach: Annotated[str, typer.Option(help="pause or rollback")] = "rollback",
    install_timeout: Annotated[
        str, typer.Option(help="per device: converge within this or count as failed, e.g. 15m")
    ] = "15m",
    min_converged: Annotated[
        int | None,
        typer.Option(help="devices per wave that must converge [default: all online ones]"),
    ] = None,
    health_window: Annotated[
        str, typer.Option(help="device-side watch after each swap, e.g. 60s")
    ] = "60s",
    health_max_error_rate: Annotated[
        str, typer.Option(help="device rolls back above this error rate, e.g. 5%")
    ] = "5%",
    health_max_p95_regression: Annotated[
        str, typer.Option(help="device rolls back above this p95 increase, e.g. 50%")
    ] = "50%",
    health_min_p95_regression: Annotated[
        str, typer.Option(help="... and only when the p95 rises by more than this, e.g. 1ms")
    ] = "1ms",
    latency_budget: Annotated[
        list[str] | None,
        typer.Option(
            help="a device class's latency budget, judged on the device: SELECTOR:BUDGET, "
            "e.g. board=pi4:150ms (repeat it; the first match wins)"
        ),
    ] = None,
    latency_ratio: Annotated[
        float,
        typer.Option(help="without a budget: candidate / active model latency on the device"),
    ] = 3.0,
    watch_: Annotated[bool, typer.Option("--watch", help="show live progress")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a gated rollout of MODEL:VERSION to the devices matching --to."""
    model, sep, version = target.partition(":")
    if not sep or not model or not version:
        raise typer.BadParameter("give the model as MODEL:VERSION", param_hint="MODEL:VERSION")
    if on_breach not in {"pause", "rollback"}:
        raise typer.BadParameter("--on-breach takes pause or rollback")
    try:
        budgets = [LatencyBudget.parse(spec).model_dump() for spec in latency_budget or []]
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--latency-budget") from None
    body = {
        "model": model,
        "version": version,
        "selector": to,
        "waves": waves,
        "policy": {
            "max_failures": max_failures,
            "max_p95_regression": _percent(max_p95_regression),
            "min_p95_regression_ms": _milliseconds(min_p95_regression),
            "min_requests": min_requests,
            "max_error_rate": _percent(max_error_rate),
            "soak_s": _seconds(soak),
            "on_breach": on_breach,
            "install_timeout_s": _seconds(install_timeout),
            "min_converged": min_converged,
            "health_window_s": _seconds(health_window),
            "health_max_error_rate": _percent(health_max_error_rate),
            "health_max_p95_regression": _percent(health_max_p95_regression),
            "health_min_p95_regression_ms": _milliseconds(health_min_p95_regression),
            "latency_budgets": budgets,
            "latency_ratio": latency_ratio,
        },
    }
    client = ApiClient(url, resolve_token(token))
    rollout = client.call("POST", "/api/rollouts", json=body)
    if watch_:
        rollout = watch(client, rollout["id"])
    if as_json:
        typer.echo(json.dumps(rollout, indent=2))
    elif not watch_:
        console.print(rollout_table(rollout))
    if rollout["status"] in {"rolled_back", "rolling_back", "paused", "aborted"}:
        raise typer.Exit(1)


@rollout_app.command("status")
def status(
    rollout_id: int,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    watch_: Annotated[bool, typer.Option("--watch", help="follow until it ends")] = False,
) -> None:
    """Show one rollout: waves, per-device state, gate figures."""
    client = ApiClient(url, resolve_token(token))
    rollout = (
        watch(client, rollout_id) if watch_ else client.call("GET", f"/api/rollouts/{rollout_id}")
    )
    if as_json:
        typer.echo(json.dumps(rollout, indent=2))
    elif not watch_:
        console.print(rollout_table(rollout))
        if rollout.get("gate"):
            for check in rollout["gate"].get("checks", []):
                mark = "ok " if check["passed"] else "BREACH"
                console.print(f"  {mark} {check['name']}: {check['detail']}")


@rollout_app.command("list")
def list_rollouts(
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """List rollouts, newest first."""
    rollouts = ApiClient(url, resolve_token(token)).call("GET", "/api/rollouts")
    if as_json:
        typer.echo(json.dumps(rollouts, indent=2))
        return
    table = Table("id", "model", "selector", "status", "wave", "devices", "reason")
    for r in rollouts:
        counts = " ".join(f"{k}={v}" for k, v in sorted(r["counts"].items()))
        table.add_row(
            str(r["id"]), f"{r['model']}:{r['version']}", r["selector"], r["status"],
            f"{r['current_wave'] + 1}/{len(r['waves'])}", counts, (r["reason"] or "")[:60],
        )  # fmt: skip
    console.print(table)


def _action(action: str) -> Any:
    def command(
        rollout_id: int,
        reason: Annotated[str | None, typer.Option(help="recorded with the rollout")] = None,
        url: UrlOpt = DEFAULT_URL,
        token: TokenOpt = None,
    ) -> None:
        rollout = ApiClient(url, resolve_token(token)).call(
            "POST", f"/api/rollouts/{rollout_id}/{action}", json={"reason": reason}
        )
        console.print(f"rollout {rollout_id}: {rollout['status']}")

    command.__doc__ = f"{action.capitalize()} a rollout."
    return command


for _name in ("pause", "resume", "abort", "rollback"):
    rollout_app.command(_name)(_action(_name))
