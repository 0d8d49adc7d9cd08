"""The device page: capabilities, active and previous model, latency per model version over time
with swaps marked, CPU, memory and temperature charts, rollouts and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.dashboard.charts import PALETTE, Line, VMarker, line_chart
from edgefleet.controller.dashboard.fleet_page import active_label, approximate_note
from edgefleet.controller.dashboard.html import badge, card, e, link, num, size, table, when
from edgefleet.controller.fleet.tables import DeviceRow, EventRow
from edgefleet.controller.metrics import device_online
from edgefleet.controller.rollouts.tables import RolloutDeviceRow, RolloutRow
from edgefleet.controller.service import ControllerService
from edgefleet.controller.telemetry.series import DeviceSeries, auto_since, query_series

RANGES = ((15, "15 min"), (60, "1 h"), (360, "6 h"), (1440, "24 h"), (10080, "7 d"))
PERCENTILE_DASH = (("p50", "2 3"), ("p95", ""), ("p99", "7 3"))
MIB = 1024 * 1024
DEFAULT_MINUTES = 30


def _slot(slot: dict[str, Any] | None) -> str:
    if not slot:
        return '<span class="muted">empty</span>'
    return (
        f"{active_label(slot)} · target {e(slot.get('target'))} · serial {e(slot.get('serial'))}"
        f' · <code title="{e(slot.get("sha256"))}">{e(str(slot.get("sha256", ""))[:12])}</code>'
    )


def _facts(device: DeviceRow, online: bool, now: datetime) -> str:
    runtimes = ", ".join(f"{e(r.get('name'))} {e(r.get('version', ''))}" for r in device.runtimes)
    labels = " ".join(
        f'<span class="label-chip">{e(k)}={e(v)}</span>' for k, v in device.labels.items()
    )
    status = badge(device.status if online else "offline")
    if device.detail:
        status += f" {e(device.detail)}"
    rows = [
        ("status", status),
        ("last seen", when(device.last_seen, now)),
        ("active model", _slot(device.active)),
        ("previous model", _slot(device.previous)),
        ("architecture", f"{e(device.arch)} · {device.cpu_count} CPU · {size(device.ram_bytes)}"),
        ("OS", e(device.os)),
        ("agent", e(device.agent_version)),
        ("runtimes", runtimes or "—"),
        ("accelerators", e(", ".join(device.accelerators)) or "none"),
        ("labels", labels or "—"),
    ]  # fmt: skip
    body = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return card("Device", f'<table class="facts">{body}</table>')


def latency_chart(series: DeviceSeries, start_ms: int, end_ms: int) -> str:
    lines = []
    for i, ((model, version), points) in enumerate(sorted(series.latency.items())):
        color = PALETTE[i % len(PALETTE)]
        t = [p.t_ms for p in points]
        rough = [not p.exact for p in points]
        for name, dash in PERCENTILE_DASH:
            values = [getattr(p, f"{name}_ms") for p in points]
            lines.append(Line(f"{model}:{version} {name}", t, values, color, dash, rough))
    markers = [
        VMarker(
            m.t_ms,
            ("⇄ " if m.type == "swapped" else "↶ ") + (m.version or "?"),
            m.type,
            f"{m.type.replace('_', ' ')}{': ' + m.reason if m.reason else ''}",
        )
        for m in series.markers
    ]
    return line_chart(
        lines, name="latency", unit="ms", start_ms=start_ms, end_ms=end_ms, markers=markers,
        width=1200, height=330,
    )  # fmt: skip


def _system_charts(series: DeviceSeries, start_ms: int, end_ms: int) -> str:
    t = [p.t_ms for p in series.system]
    cpu = line_chart(
        [Line("CPU (device)", t, [p.cpu_percent for p in series.system], PALETTE[0])],
        name="cpu", unit="%", start_ms=start_ms, end_ms=end_ms, height=190,
    )  # fmt: skip
    memory = line_chart(
        [
            Line("memory used", t, [p.mem_used_bytes / MIB for p in series.system], PALETTE[2]),
            Line("agent RSS", t, [p.rss_bytes / MIB for p in series.system], PALETTE[3], "4 3"),
        ],
        name="memory", unit="MiB", start_ms=start_ms, end_ms=end_ms, height=190,
    )  # fmt: skip
    parts = [card("CPU", cpu), card("Memory", memory)]
    if any(p.temperature_c is not None for p in series.system):
        temperature = line_chart(
            [Line("temperature", t, [p.temperature_c for p in series.system], PALETTE[1])],
            name="temperature", unit="°C", start_ms=start_ms, end_ms=end_ms, height=190,
        )  # fmt: skip
        parts.append(card("Temperature", temperature))
    else:
        parts.append(card("Temperature", '<p class="muted">this device reports no sensor</p>'))
    return "".join(parts)


def render_device(
    service: ControllerService, session: Session, device: DeviceRow, minutes: int | None
) -> str:
    now = datetime.now(UTC)
    since = now - timedelta(minutes=minutes or DEFAULT_MINUTES)
    if minutes is None:
        since = auto_since(session, [device.id], since, now)
    online = device_online(device, now, service.settings.offline_after_s)
    series = query_series(
        session, device_ids=[device.id], since=since, until=now, now=now,
        policy=service.retention,
    )  # fmt: skip
    start_ms, end_ms = int(since.timestamp() * 1000), int(now.timestamp() * 1000)
    ranges = " ".join(
        f'<a class="range{" on" if m == minutes else ""}" href="?minutes={m}">{label}</a>'
        for m, label in RANGES
    )
    note = (
        f'<p class="muted">{e(series.resolution)} data, one point per {series.step_s} s, '
        "percentiles of its merged latency histograms; dotted p50, solid p95, dashed p99; "
        f"⇄ swap, ↶ rollback{approximate_note(series)}</p>"
    )
    parts = [
        _facts(device, online, now),
        card(
            "Inference latency per model version",
            f'<div class="ranges">{ranges}</div>' + latency_chart(series, start_ms, end_ms) + note,
            wide=True,
        ),
        _system_charts(series, start_ms, end_ms),
        _rollouts(session, device.id),
        _events(session, device.id, now),
    ]
    return "".join(parts)


def _rollouts(session: Session, device_id: str) -> str:
    rows = session.execute(
        select(RolloutDeviceRow, RolloutRow)
        .join(RolloutRow)
        .where(RolloutDeviceRow.device_id == device_id)
        .order_by(RolloutRow.id.desc())
        .limit(10)
    ).all()
    return card(
        "Rollouts touching this device",
        table(
            ["rollout", "model:version", "wave", "state", "reason"],
            (
                [
                    link(f"#{r.id}", "rollouts", str(r.id)),
                    e(f"{r.model}:{r.version}"),
                    num(d.wave + 1),
                    badge(d.state),
                    e(d.reason or ""),
                ]
                for d, r in rows
            ),
            empty="none",
        ),
    )


def _events(session: Session, device_id: str, now: datetime) -> str:
    events = session.scalars(
        select(EventRow)
        .where(EventRow.device_id == device_id)
        .order_by(EventRow.at.desc())
        .limit(30)
    )
    return card(
        "Events",
        table(
            ["at", "event", "version", "serial", "reason"],
            (
                [
                    when(ev.at, now),
                    badge(ev.type),
                    e(ev.version or ""),
                    e(ev.serial or ""),
                    e((ev.reason or "")[:200]),
                ]
                for ev in events
            ),
            empty="no events yet",
        ),
        wide=True,
    )
