"""The fleet page: who is online, which versions run where, rollouts in flight with their waves
and gates, fleet latency, ingest health and recent events."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.dashboard.charts import PALETTE, Line, line_chart
from edgefleet.controller.dashboard.html import (
    badge,
    card,
    e,
    link,
    num,
    progress,
    stat,
    table,
    when,
)
from edgefleet.controller.fleet.tables import DeviceRow, EventRow
from edgefleet.controller.metrics import device_online
from edgefleet.controller.rollouts.states import UNFINISHED
from edgefleet.controller.rollouts.tables import RolloutRow
from edgefleet.controller.service import ControllerService
from edgefleet.controller.telemetry.series import DeviceSeries, query_series
from edgefleet.shared.manifest import runtime_for_target

MAX_DEVICE_ROWS = 200
CHART_MINUTES = 15
CHART_TTL_S = 5.0
_chart_cache: dict[int, tuple[float, str]] = {}


def active_label(active: dict[str, Any] | None) -> str:
    if not active:
        return "—"
    return link(f"{active['model_id']}:{active['version']}", "models", active["model_id"])


def last_p95(device: DeviceRow) -> float | None:
    telemetry = device.last_telemetry or {}
    for stats in telemetry.get("models", []):
        summary = stats.get("latency_ms")
        if summary:
            return float(summary["p95"])
    return None


def approximate_note(series: DeviceSeries) -> str:
    """What the chart's note adds when some of its points are v1 agents' summaries."""
    points = [p for pts in series.latency.values() for p in pts]
    rough = sum(1 for p in points if not p.exact)
    if not rough:
        return ""
    return (
        f"; hollow points ({rough} of {len(points)}) are approximate: v1 agents send "
        "percentiles, not histograms, and those are averaged weighted by requests"
    )


def rollout_summary(rollout: RolloutRow) -> str:
    """A rollout as one block: status, wave progress, device states and the last gate."""
    states = Counter(d.state for d in rollout.devices)
    total = len(rollout.devices)
    converged = states["active"] + states["skipped"]
    waves = len(rollout.waves)
    wave = min(rollout.current_wave, waves - 1)
    in_wave = sum(1 for d in rollout.devices if d.wave <= wave)
    counts = " ".join(f"{badge(state)}&nbsp;{count}" for state, count in sorted(states.items()))
    gate = rollout.gate or {}
    checks = gate.get("checks") or []
    gate_text = (
        "no gate evaluated yet"
        if not checks
        else ("gates passed" if gate.get("passed") else "gate breached")
        + f" (wave {gate.get('wave', '?')}): "
        + "; ".join(f"{c['name']} {'ok' if c['passed'] else 'BREACH'}" for c in checks)
    )
    return (
        f'<div class="rollout" data-rollout="{rollout.id}" data-status="{e(rollout.status)}">'
        f'<div class="rollout-head">{link(f"#{rollout.id}", "rollouts", str(rollout.id))} '
        f"<strong>{e(rollout.model)}:{e(rollout.version)}</strong> {badge(rollout.status)} "
        f'<span class="muted">selector {e(rollout.selector)} · waves {e(rollout.wave_spec)}</span>'
        f"</div>"
        f'<div class="waves">wave <strong class="wave-no">{wave + 1}</strong> of {waves} '
        f"({in_wave} of {total} devices in scope)</div>"
        f"{progress(converged, total, f'{converged}/{total} devices converged')}"
        f'<div class="states">{counts}</div>'
        f'<div class="gate {"ok" if gate.get("passed", True) else "bad"}">{e(gate_text)}</div>'
        + (f'<div class="reason">{e(rollout.reason)}</div>' if rollout.reason else "")
        + "</div>"
    )


def render_fleet(service: ControllerService, session: Session) -> str:
    now = datetime.now(UTC)
    after = service.settings.offline_after_s
    devices = list(session.scalars(select(DeviceRow).order_by(DeviceRow.id)))
    online = [d for d in devices if device_online(d, now, after)]
    rollouts = list(
        session.scalars(
            select(RolloutRow)
            .where(RolloutRow.status.in_(list(UNFINISHED)))
            .order_by(RolloutRow.id.desc())
        )
    )
    finished = list(
        session.scalars(
            select(RolloutRow)
            .where(RolloutRow.status.not_in(list(UNFINISHED)))
            .order_by(RolloutRow.id.desc())
            .limit(3)
        )
    )
    events = list(session.scalars(select(EventRow).order_by(EventRow.at.desc()).limit(15)))
    counters = service.ingest.counters if service.ingest else None
    written_rate, _ = service.ingest_rate.rates()
    stats = [
        stat("devices", num(len(devices))),
        stat("online", num(len(online)), "good" if online else ""),
        stat(
            "offline", num(len(devices) - len(online)), "bad" if len(devices) > len(online) else ""
        ),
        stat("rollouts in flight", num(len(rollouts)), "busy" if rollouts else ""),
        stat("ingest", num(written_rate, "msg/s", 1)),
        stat(
            "telemetry dropped",
            num(counters.telemetry_dropped if counters else 0),
            "warn" if counters and counters.telemetry_dropped else "",
        ),
        stat(
            "malformed / oversize",
            f"{num(counters.malformed if counters else 0)} / "
            f"{num(counters.oversize if counters else 0)}",
        ),
    ]
    parts = [f'<div class="stats">{"".join(stats)}</div>', _refusals(service)]
    parts.append(_versions(online))
    rollout_html = "".join(rollout_summary(r) for r in rollouts) or (
        '<p class="empty">no rollout in flight</p>'
    )
    if finished:
        rollout_html += "<h3>Recently finished</h3>" + "".join(rollout_summary(r) for r in finished)
    parts.append(card("Rollouts", rollout_html, cls="rollouts"))
    parts.append(_fleet_chart(service, session, now))
    parts.append(_devices(devices, now, after))
    parts.append(
        card(
            "Recent events",
            table(
                ["at", "device", "event", "version", "reason"],
                (
                    [
                        when(ev.at, now),
                        link(ev.device_id, "devices", ev.device_id),
                        badge(ev.type),
                        e(ev.version or ""),
                        e((ev.reason or "")[:160]),
                    ]
                    for ev in events
                ),
                empty="no events yet",
            ),
            wide=True,
        )
    )
    return "".join(parts)


def _refusals(service: ControllerService) -> str:
    """One line: what ingest dropped, dead-lettered and refused since start, by reason."""
    ingest, chunks = service.ingest, service.chunks
    if ingest is None:
        return ""
    counters = ingest.counters

    def by_reason(counts: dict[str, int]) -> str:
        return " · ".join(f"{e(reason)} {num(n)}" for reason, n in sorted(counts.items()))

    dead = {f"{kind} {error}": n for (kind, error), n in counters.dead_lettered.items()}
    refused = dict(chunks.refused) if chunks is not None else {}
    clamped = {f"{kind} {name}": n for (kind, name), n in counters.clamped.items()}
    groups = [
        ("dropped", by_reason(counters.dropped)),
        ("dead-lettered", by_reason(dead)),
        ("chunk requests refused", by_reason(refused)),
        ("future timestamps clamped", by_reason(clamped)),
    ]
    text = "; ".join(f"{label}: {counts}" for label, counts in groups if counts)
    line = f"dropped / dead-lettered: {text or 'none'}"
    # In a full-width row of its own (the page is a grid of cards; ``stats`` rows span it).
    return f'<div class="stats"><p class="muted ingest-refusals">{line}</p></div>'


def _versions(online: list[DeviceRow]) -> str:
    by_version: Counter[tuple[str, str]] = Counter()
    by_runtime: dict[tuple[str, str], Counter[str]] = {}
    for device in online:
        active = device.active or {}
        key = (active.get("model_id", ""), active.get("version", ""))
        by_version[key] += 1
        runtime = runtime_for_target(active["target"]) if active.get("target") else "no model"
        by_runtime.setdefault(key, Counter())[runtime] += 1
    total = max(1, len(online))
    rows = []
    for (model, version), count in by_version.most_common():
        label = link(f"{model}:{version}", "models", model) if model else "<em>no model</em>"
        runtimes = ", ".join(f"{e(r)} {n}" for r, n in sorted(by_runtime[(model, version)].items()))
        rows.append([label, num(count), progress(count, total, f"{100 * count / total:.0f}%"),
                     runtimes])  # fmt: skip
    return card(
        "Versions on online devices",
        table(["model:version", "devices", "share", "runtimes"], rows, empty="no device online"),
    )


def _fleet_chart(service: ControllerService, session: Session, now: datetime) -> str:
    """The fleet's p95 per version; rendered at most every ``CHART_TTL_S`` per service, since
    it reads every device's recent windows."""
    cached = _chart_cache.get(id(service))
    if cached is not None and time.monotonic() - cached[0] < CHART_TTL_S:
        return cached[1]
    since = now - timedelta(minutes=CHART_MINUTES)
    series = query_series(
        session, device_ids=None, since=since, until=now, now=now,
        policy=service.retention, max_points=120,
    )  # fmt: skip
    first = min((pts[0].t_ms for pts in series.latency.values() if pts), default=None)
    start_ms = int(since.timestamp() * 1000)
    if first is not None:  # a young fleet: start at its first point, show two minutes at least
        start_ms = max(start_ms, min(first - 5_000, int(now.timestamp() * 1000) - 120_000))
    lines = [
        Line(f"{model}:{version} p95", [p.t_ms for p in pts], [p.p95_ms for p in pts],
             PALETTE[i % len(PALETTE)], approximate=[not p.exact for p in pts])
        for i, ((model, version), pts) in enumerate(sorted(series.latency.items()))
    ]  # fmt: skip
    chart = line_chart(
        lines, name="fleet-latency", unit="ms", start_ms=start_ms,
        end_ms=int(now.timestamp() * 1000), width=1200, height=260,
    )  # fmt: skip
    note = (
        f'<p class="muted">p95 of every device\'s requests per {series.step_s} s (their latency '
        f"histograms merged), up to the last {CHART_MINUTES} min{approximate_note(series)}</p>"
    )
    html = card("Fleet latency (p95)", chart + note, wide=True)
    _chart_cache[id(service)] = (time.monotonic(), html)
    return html


def _devices(devices: list[DeviceRow], now: datetime, after: float) -> str:
    rows = []
    for device in devices[:MAX_DEVICE_ROWS]:
        up = device_online(device, now, after)
        system = (device.last_telemetry or {}).get("system") or {}
        active = device.active or {}
        rows.append([
            link(device.id, "devices", device.id),
            badge(device.status if up else "offline"),
            active_label(device.active),
            e(active.get("target", "—")),
            num(last_p95(device), "ms"),
            num(system.get("cpu_percent"), "%", 0),
            when(device.last_seen, now),
        ])  # fmt: skip
    more = len(devices) - MAX_DEVICE_ROWS
    note = f'<p class="muted">and {more} more</p>' if more > 0 else ""
    return card(
        "Devices",
        table(
            ["device", "status", "model", "target", "p95 (last window)", "CPU", "last seen"],
            rows,
            empty="no device has said hello yet",
            cls="devices",
        )
        + note,
        wide=True,
    )
