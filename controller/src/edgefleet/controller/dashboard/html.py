"""HTML building blocks of the dashboard: the page shell, tables, badges, numbers and times.

Every value that comes from a device or an operator is escaped here, at the point it enters HTML.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from edgefleet.controller import __version__
from edgefleet.controller.registry.db import aware

STATUS_TONE = {
    "serving": "good", "active": "good", "completed": "good", "online": "good", "passed": "good",
    "running": "busy", "sent": "busy", "updating": "busy", "reverting": "busy", "planned": "idle",
    "rolling_back": "warn", "paused": "warn", "skipped": "idle", "idle": "idle",
    "failed": "bad", "rolled_back": "warn", "offline": "bad", "breached": "bad", "aborted": "bad",
    "swapped": "good", "booted": "idle", "manifest_refused": "bad", "download_failed": "bad",
    "verify_failed": "bad", "load_failed": "bad", "validation_failed": "bad", "error": "bad",
    "slot_fallback": "warn", "command_done": "idle", "pending": "idle", "timed_out": "bad",
    "reverted": "warn", "cancelled": "idle", "superseded": "idle",
}  # fmt: skip


def e(value: object) -> str:
    """Escape any value for HTML text or attribute content."""
    return escape("" if value is None else str(value), quote=True)


def href(*parts: str) -> str:
    return "/dashboard/" + "/".join(quote(p, safe="") for p in parts)


def link(text: object, *parts: str) -> str:
    return f'<a href="{href(*parts)}">{e(text)}</a>'


def badge(status: str) -> str:
    tone = STATUS_TONE.get(status, "idle")
    return f'<span class="badge {tone}">{e(status.replace("_", " "))}</span>'


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """``09:12:03 UTC (14 s ago)``, with the full ISO time as a tooltip."""
    if moment is None:
        return "—"
    moment = aware(moment)
    now = now or datetime.now(UTC)
    ago = max(0.0, (now - moment).total_seconds())
    if ago < 90:
        rel = f"{ago:.0f} s ago"
    elif ago < 5400:
        rel = f"{ago / 60:.0f} min ago"
    elif ago < 2 * 86400:
        rel = f"{ago / 3600:.0f} h ago"
    else:
        rel = f"{ago / 86400:.0f} d ago"
    stamp = moment.strftime("%H:%M:%S") if ago < 86400 else moment.strftime("%Y-%m-%d %H:%M")
    iso = e(moment.isoformat())
    return f'<time datetime="{iso}" title="{iso}">{stamp} UTC <small>({rel})</small></time>'


def time_left(deadline: datetime | None, now: datetime) -> str:
    """``12 min 30 s left`` or ``overdue 5 s`` until ``deadline``."""
    if deadline is None:
        return "—"
    seconds = (aware(deadline) - now).total_seconds()
    left = abs(seconds)
    text = f"{left // 60:.0f} min {left % 60:.0f} s" if left >= 60 else f"{left:.0f} s"
    return f"{text} left" if seconds >= 0 else f"overdue {text}"


def num(value: float | int | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return f"{text}\u202f{unit}" if unit else text


def size(value: float | int | None) -> str:
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{amount:,.0f}\u202f{unit}" if unit == "B" else f"{amount:,.1f}\u202f{unit}"
        amount /= 1024
    return f"{amount:,.1f}\u202fGiB"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    empty: str = "nothing yet",
    cls: str = "",
) -> str:
    """A table of pre-rendered (already escaped) cells."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="empty">{e(empty)}</td></tr>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def card(title: str, body: str, *, wide: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("card", "wide" if wide else "", cls) if c)
    return f'<section class="{classes}"><h2>{e(title)}</h2>{body}</section>'


def stat(label: str, value: str, tone: str = "") -> str:
    return (
        f'<div class="stat {e(tone)}"><div class="value">{value}</div>'
        f'<div class="label">{e(label)}</div></div>'
    )


def progress(done: int, total: int, label: str = "") -> str:
    pct = 100.0 * done / total if total else 0.0
    text = label or f"{done}/{total}"
    return (
        f'<div class="progress" role="progressbar" aria-valuenow="{done}" aria-valuemax="{total}">'
        f'<div class="bar" style="width:{pct:.1f}%"></div><span>{e(text)}</span></div>'
    )


NAV = (
    ("Fleet", "/dashboard"),
    ("Models", "/dashboard/models"),
    ("Rollouts", "/dashboard/rollouts"),
)


def page(title: str, live: str, *, refresh_s: float, crumbs: str = "") -> str:
    """A whole page; ``live`` is the fragment the script re-fetches every ``refresh_s``."""
    nav = "".join(f'<a href="{url}">{e(name)}</a>' for name, url in NAV)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · edgefleet</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<script src="/dashboard/static/dashboard.js" defer></script>
</head>
<body data-refresh-ms="{int(refresh_s * 1000)}">
<header><a class="brand" href="/dashboard">edgefleet</a><nav>{nav}</nav>
<span class="crumbs">{crumbs}</span>
<span id="live-status" class="live" title="this page refreshes itself">live</span></header>
<main id="live">{live}</main>
<footer>edgefleet controller {e(__version__)} · read-only view ·
<a href="/metrics">/metrics</a> · <a href="/docs">API</a></footer>
</body></html>"""
