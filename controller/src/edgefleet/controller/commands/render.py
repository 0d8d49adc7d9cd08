"""Rendering of registry records for the terminal (rich tables) and for scripts (JSON)."""

from __future__ import annotations

from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgefleet.controller.registry.records import ArtifactRecord, ModelSummary, VersionRecord


def fail(err: Exception) -> typer.Exit:
    """Print ``err`` as the command's one-line error (its text verbatim: brackets such as
    ``[tensorflow]`` are not markup) and the exit to raise."""
    Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
    return typer.Exit(code=1)


def artifact_json(artifact: ArtifactRecord) -> dict[str, Any]:
    return {
        "target": artifact.target,
        "runtime": artifact.runtime,
        "sha256": artifact.sha256,
        "size": artifact.size,
        "path": str(artifact.path),
        "latency_budget_ms": artifact.latency_budget_ms,
        "signature": artifact.signature.model_dump(mode="json"),
        "golden": None
        if artifact.golden is None
        else {
            "pairs": len(artifact.golden.pairs),
            "compare": artifact.golden.compare,
            "atol": artifact.golden.atol,
            "rtol": artifact.golden.rtol,
            "min_top1_agreement": artifact.golden.min_top1_agreement,
        },
        "report": artifact.report.model_dump(mode="json"),
    }


def version_json(record: VersionRecord) -> dict[str, Any]:
    return {
        "model": record.model,
        "version": record.version,
        "created_at": record.created_at.isoformat(),
        "source_sha256": record.source_sha256,
        "source_size": record.source_size,
        "recipe": record.recipe,
        "summary": record.summary,
        "artifacts": [artifact_json(a) for a in record.artifacts],
    }


def models_json(models: list[ModelSummary]) -> list[dict[str, Any]]:
    return [
        {"name": m.name, "versions": list(m.versions), "created_at": m.created_at.isoformat()}
        for m in models
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A table whose figures fold rather than run off a narrow terminal."""
    table = Table(
        title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False
    )
    for column in columns:
        if column == "target":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right", overflow="fold")
    return table


def print_version(console: Console, record: VersionRecord) -> None:
    """The report of a version in three tables of a few columns each (80 columns suffice):
    the artifacts, their quality against the original, their latency and where it was measured.
    """
    files = _table(
        f"{record.model}:{record.version}: artifacts",
        ("target", "runtime", "bytes", "smaller", "params", "sparsity"),
    )
    quality = _table(
        "quality against the original",
        ("target", "accuracy", "Δ pt", "top-1 agree", "max abs err", "max rel err"),
    )
    hosts = sorted({lat.host for a in record.artifacts if (lat := a.report.latency) and lat.host})
    latency = _table(
        "latency on the controller host (a reference: devices judge their own)",
        ("target", "mean ms", "p95 ms", "budget ms"),
    )
    for a in record.artifacts:
        r = a.report
        q, lat = r.quality, r.latency
        files.add_row(
            a.target, a.runtime, f"{a.size:,}", f"{r.size_ratio:.2f}x", f"{r.param_count:,}",
            f"{r.sparsity:.0%}",
        )  # fmt: skip
        quality.add_row(
            a.target,
            "-" if q is None else _pct(q.accuracy),
            "-" if q is None or q.accuracy_delta_pt is None else f"{q.accuracy_delta_pt:+.2f}",
            "-" if q is None else _pct(q.top1_agreement),
            "-" if q is None else f"{q.max_abs_error:.3g}",
            "-" if q is None else f"{q.max_rel_error:.3g}",
        )
        latency.add_row(
            a.target,
            "-" if lat is None else f"{lat.mean_ms:.3f}",
            "-" if lat is None else f"{lat.p95_ms:.3f}",
            "-" if lat is None else f"{a.latency_budget_ms:.1f}",
        )
    for table in (files, quality, latency):
        console.print(table)
    if hosts:  # a line of its own: a host's name can be long, and a title would fold it
        console.print(f"latency measured on {', '.join(hosts)}", markup=False, highlight=False)
    for a in record.artifacts:
        if a.report.unmeasured:  # the reason a row has no figures
            console.print(
                f"{a.target}: not measured: {a.report.unmeasured}", markup=False, highlight=False
            )
    distill = record.summary.get("distillation")
    if distill:
        console.print(
            "distillation: teacher {t} ({tp:,} params), distilled student {d}, same student "
            "from scratch {s} ({sp:,} params, {ratio:.1f}x fewer)".format(
                t=_pct(distill.get("teacher_accuracy")),
                d=_pct(distill.get("distilled_accuracy")),
                s=_pct(distill.get("scratch_accuracy")),
                tp=distill["teacher_params"],
                sp=distill["student_params"],
                ratio=distill["param_ratio"],
            )
        )
    structured = record.summary.get("structured_pruning")
    if structured:
        console.print(
            f"structured pruning: params {structured['params_before']:,} -> "
            f"{structured['params_after']:,}, MACs {structured['macs_before']:,} -> "
            f"{structured['macs_after']:,}, eager torch median latency "
            f"{structured['torch_median_ms_before']:.3f} -> "
            f"{structured['torch_median_ms_after']:.3f} ms"
        )


def print_models(console: Console, models: list[ModelSummary]) -> None:
    table = Table(title="models")
    table.add_column("name")
    table.add_column("versions")
    table.add_column("created")
    for m in models:
        table.add_row(m.name, ", ".join(m.versions), m.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)
