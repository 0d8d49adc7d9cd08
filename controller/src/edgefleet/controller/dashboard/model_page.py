"""Model pages: the list of models, and one model's versions with their artifacts' compression
reports (size, accuracy delta, latency) and where each version runs."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.dashboard.html import card, e, link, num, size, table, when
from edgefleet.controller.fleet.tables import DeviceRow
from edgefleet.controller.metrics import device_online
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.controller.service import ControllerService

MAX_DEVICE_LINKS = 24


def _where_running(
    service: ControllerService, session: Session, model: str
) -> dict[str, list[str]]:
    """Online device ids per version of ``model`` (from the devices' active slots)."""
    now = datetime.now(UTC)
    running: dict[str, list[str]] = defaultdict(list)
    for device in session.scalars(select(DeviceRow).order_by(DeviceRow.id)):
        active = device.active or {}
        if active.get("model_id") == model and device_online(
            device, now, service.settings.offline_after_s
        ):
            running[str(active.get("version"))].append(device.id)
    return running


def render_models(service: ControllerService, session: Session) -> str:
    now = datetime.now(UTC)
    rows = []
    for summary in service.registry.list_models():
        running = _where_running(service, session, summary.name)
        rows.append(
            [
                link(summary.name, "models", summary.name),
                e(", ".join(summary.versions)),
                num(sum(len(v) for v in running.values())),
                when(summary.created_at, now),
            ]
        )
    return card(
        "Models",
        table(
            ["model", "versions", "online devices running it", "registered"],
            rows,
            empty="no model registered: edgefleet model compress ...",
        ),
        wide=True,
    )


def _artifact_row(artifact: ArtifactRecord) -> list[str]:
    report = artifact.report
    quality, latency = report.quality, report.latency
    delta = None if quality is None else quality.accuracy_delta_pt
    agreement = None if quality is None else quality.top1_agreement
    return [
        e(artifact.target),
        e(artifact.runtime),
        size(artifact.size),
        f"{report.size_ratio:.2f}×",
        num(delta, "pt") if delta is not None else "—",
        f"{agreement:.1%}" if agreement is not None else "—",
        "—" if quality is None else f"{quality.max_abs_error:.2g}",
        "—" if latency is None else num(latency.p50_ms, "ms", 3),
        "—" if latency is None else num(latency.p95_ms, "ms", 3),
        "not measured" if latency is None else e(latency.host or "not recorded"),
        f"{report.sparsity:.0%}",
    ]


def render_model(service: ControllerService, session: Session, name: str) -> str:
    """Raises ModelNotFoundError when ``name`` is not registered."""
    now = datetime.now(UTC)
    summary = next((m for m in service.registry.list_models() if m.name == name), None)
    if summary is None:
        service.registry.get_version(name)  # raises the registry's own not-found error
        return ""
    running = _where_running(service, session, name)
    parts = []
    for version in reversed(summary.versions):
        record = service.registry.get_version(name, version)
        devices = running.get(version, [])
        shown = ", ".join(link(d, "devices", d) for d in devices[:MAX_DEVICE_LINKS])
        if len(devices) > MAX_DEVICE_LINKS:
            shown += f" and {len(devices) - MAX_DEVICE_LINKS} more"
        artifacts = table(
            ["target", "runtime", "size", "smaller by", "accuracy Δ", "top-1 agreement",
             "max |error|", "p50", "p95", "measured on", "sparsity"],
            (_artifact_row(a) for a in record.artifacts),
            empty="no artifacts",
        )  # fmt: skip
        notes = "".join(  # why a row has no figures
            f'<p class="muted">{e(a.target)} not measured: {e(a.report.unmeasured)}</p>'
            for a in record.artifacts
            if a.report.unmeasured
        )
        body = (
            f"<p>registered {when(record.created_at, now)} · source {size(record.source_size)} · "
            f"runs on <strong>{len(devices)}</strong> online device(s)"
            f"{': ' + shown if shown else ''}</p>{artifacts}{notes}"
        )
        parts.append(card(f"{name}:{version}", body, wide=True, cls="version"))
    return "".join(parts)
