"""Which onnxruntime and ai-edge-litert releases load and run on an emulated Pi 4 and Pi 5.

Each release's aarch64 wheel is installed alone (cached per version) over the agent's cached
dependencies in the arm64 root, then a child process under each CPU model imports it and runs
the controller's own artifacts of a tiny model (fp32 and int8) against their golden pairs. A
release that uses an instruction the CPU lacks dies of SIGILL, as it does on the board. The
agent's aarch64 pins must be proved here: every tested release they allow works on every CPU,
and no newer tested release works on all of them.
"""

from __future__ import annotations

import json
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from support import arm64, arm64_install
from support.arm64 import CPU_MODELS, Arm64Root
from support.arm64_install import aarch64_requirements, install_runtime
from support.fleet import register_tiny_model

# The session fixtures used here (pytest finds fixtures among a module's names).
arm64_root = arm64.arm64_root
agent_wheels = arm64_install.agent_wheels
arm64_deps = arm64_install.arm64_deps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# Releases with cp311 aarch64 wheels: the agent's pin, 1.21.0 (reported to crash a Pi 4 with
# "Illegal instruction" at import: microsoft/onnxruntime#23957, #24112) and its patch release,
# and the newest patch of later minors up to the newest the other platforms allow.
RELEASES = {
    "onnxruntime": (
        "1.20.1", "1.21.0", "1.21.1", "1.22.0", "1.23.2", "1.24.4", "1.26.0", "1.28.0",
        "1.30.0", "1.32.0",
    ),
    "ai-edge-litert": ("2.0.3", "2.1.6", "2.2.0", "2.3.0"),
}  # fmt: skip
TARGETS = {
    "onnxruntime": ("onnx-fp32", "onnx-int8"),
    "ai-edge-litert": ("tflite-fp32", "tflite-int8"),
}
# The reported Pi 4 crash, and where it must (not) reproduce: the control that shows the
# emulated Cortex-A72 catches instructions a Pi 4 lacks, so what passes there means something.
KNOWN_CRASH = ("onnxruntime", "1.21.0", "cortex-a72")

PROBE = r"""
import importlib.metadata as md, json, sys
import numpy as np
from packaging.requirements import Requirement

dist, version_dir, plan_path = sys.argv[1:4]
report = {"version": md.version(dist), "stage": "start", "unmet": [], "models": {}}
for line in md.requires(dist) or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        report["unmet"].append(f"{req} (none installed)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        report["unmet"].append(f"{req} (have {have})")


def emit(stage):
    report["stage"] = stage
    print(json.dumps(report), flush=True)


emit("importing")
if dist == "onnxruntime":
    import onnxruntime as module

    def load(path):
        session = module.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda feeds: dict(zip(names, session.run(None, feeds)))
else:
    import ai_edge_litert as module
    from ai_edge_litert.interpreter import Interpreter

    def load(path):
        runner = Interpreter(model_path=path, num_threads=1).get_signature_runner()
        return lambda feeds: runner(**feeds)

report["module"] = module.__file__
for model in json.loads(open(plan_path).read()):
    emit("running " + model["target"])
    golden = np.load(model["golden"])
    run = load(model["path"])
    agree = total = 0
    verdict = "ok"
    for i in range(model["pairs"]):
        feeds = {k.split(".", 1)[1]: golden[k] for k in golden.files if k.startswith(f"in{i}.")}
        got = run(feeds)
        for key in (k for k in golden.files if k.startswith(f"out{i}.")):
            name = key.split(".", 1)[1]
            value = got[name] if name in got else next(iter(got.values()))
            want = golden[key]
            if model["compare"] == "top1":
                agree += int((value.argmax(-1) == want.argmax(-1)).sum())
                total += want.reshape(-1, want.shape[-1]).shape[0]
            elif not np.allclose(value, want, atol=model["atol"], rtol=model["rtol"]):
                error = float(np.abs(value - want).max())
                verdict = f"mismatch: max abs error {error:.3g} in pair {i}"
    if total and agree / total < model["min_top1"]:
        verdict = f"mismatch: top-1 agreement {agree}/{total}"
    report["models"][model["target"]] = verdict
emit("done")
"""


@dataclass(frozen=True)
class Outcome:
    """How one release did under one CPU model."""

    ok: bool
    summary: str
    unmet: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def probe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The controller's artifacts of a tiny model and their golden pairs, as plan files."""
    work = tmp_path_factory.mktemp("arm64-probe")
    registered = register_tiny_model(
        work / "controller", seed=3, targets=tuple(t for ts in TARGETS.values() for t in ts)
    )
    by_target = {a.target: a for a in registered.artifacts}
    plans = {}
    for dist, targets in TARGETS.items():
        plan = []
        for target in targets:
            artifact = by_target[target]
            model = shutil.copyfile(artifact.path, work / target)
            arrays = {}
            for i, pair in enumerate(artifact.golden.pairs):
                for kind, tensors in (("in", pair.inputs), ("out", pair.outputs)):
                    for name, t in tensors.items():
                        array = np.frombuffer(t.raw(), dtype=t.dtype).reshape(t.shape)
                        arrays[f"{kind}{i}.{name}"] = array
            np.savez(work / f"{target}.npz", **arrays)  # type: ignore[arg-type]
            golden = artifact.golden
            plan.append(
                {
                    "target": target,
                    "path": str(model),
                    "golden": str(work / f"{target}.npz"),
                    "pairs": len(golden.pairs),
                    "compare": golden.compare,
                    "atol": golden.atol,
                    "rtol": golden.rtol,
                    "min_top1": golden.min_top1_agreement,
                }
            )
        plans[dist] = work / f"{dist}.json"
        plans[dist].write_text(json.dumps(plan))
    (work / "probe.py").write_text(PROBE)
    plans["probe"] = work / "probe.py"
    return plans


def releases_to_test(requirement: Requirement, listed: tuple[str, ...]) -> list[str]:
    """The listed releases plus any the requirement pins exactly, oldest first."""
    pinned = {s.version for s in requirement.specifier if s.operator in ("==", "===")}
    return sorted(set(listed) | pinned, key=Version)


def run_probe(
    root: Arm64Root, deps: Path, plans: dict[str, Path], dist: str, version: str, cpu: str
) -> Outcome:
    version_dir = install_runtime(root, dist, version)
    python = str(root.inside(deps) / "bin" / "python")
    argv = [python, str(plans["probe"]), dist, str(version_dir), str(plans[dist])]
    result = root.run(argv, cpu=cpu, env={"PYTHONPATH": str(version_dir)}, timeout=900, check=False)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    report: dict[str, Any] = json.loads(lines[-1]) if lines else {"stage": "start"}
    unmet = tuple(report.get("unmet", ()))
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        return Outcome(False, f"{name} while {report['stage']}", unmet)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1][:120]
        return Outcome(False, f"error while {report['stage']}: {last}", unmet)
    if report.get("version") != version or not str(report.get("module", "")).startswith(
        str(version_dir)
    ):
        return Outcome(False, f"loaded {report.get('version')} from {report.get('module')}")
    bad = {t: v for t, v in report["models"].items() if v != "ok"}
    if bad or set(report["models"]) != set(TARGETS[dist]):
        return Outcome(False, f"ran, but {bad or report['models']}", unmet)
    return Outcome(True, "ok", unmet)


def _table(results: dict[tuple[str, str, str], Outcome], pins: dict[str, Requirement]) -> str:
    cpus = list(CPU_MODELS)
    rows = [["release", *[f"{cpu} ({CPU_MODELS[cpu].board.split(' Model')[0]})" for cpu in cpus]]]
    for dist, version in dict.fromkeys((d, v) for d, v, _ in results):
        pinned = " (allowed by the agent)" if pins[dist].specifier.contains(version) else ""
        cells = []
        for cpu in cpus:
            outcome = results[(dist, version, cpu)]
            unmet = f" [unmet: {', '.join(outcome.unmet)}]" if outcome.unmet else ""
            cells.append(outcome.summary + unmet)
        rows.append([f"{dist} {version}{pinned}", *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


@pytest.fixture(scope="module")
def matrix(
    arm64_root: Arm64Root, arm64_deps: Path, probe_models: dict[str, Path]
) -> dict[tuple[str, str, str], Outcome]:
    """Every tested release under every CPU model, two probes at a time."""
    pins = aarch64_requirements()
    jobs = [
        (dist, version, cpu)
        for dist, listed in RELEASES.items()
        for version in releases_to_test(pins[dist], listed)
        for cpu in CPU_MODELS
    ]
    for dist, version, _ in jobs:  # downloads first, one at a time (they share a lock)
        install_runtime(arm64_root, dist, version)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="arm64-probe") as pool:
        outcomes = list(
            pool.map(lambda job: run_probe(arm64_root, arm64_deps, probe_models, *job), jobs)
        )
    return dict(zip(jobs, outcomes, strict=True))


def test_runtime_releases_per_emulated_cpu(matrix, capsys):
    pins = aarch64_requirements()
    table = _table(matrix, pins)
    with capsys.disabled():
        print(f"\naarch64 runtime releases under emulated Pi CPUs:\n{table}\n")
    problems = []
    dist, version, cpu = KNOWN_CRASH
    if not matrix[(dist, version, cpu)].summary.startswith("SIGILL"):
        problems.append(f"{dist} {version} did not die of SIGILL on {cpu}, as on the board")
    if not all(matrix[(dist, version, other)].ok for other in CPU_MODELS if other != cpu):
        problems.append(f"{dist} {version} failed on a CPU other than {cpu}")
    for dist, requirement in pins.items():
        versions = sorted({v for d, v, _ in matrix if d == dist}, key=Version)
        works = [v for v in versions if all(matrix[(dist, v, c)].ok for c in CPU_MODELS)]
        allowed = [v for v in versions if requirement.specifier.contains(v)]
        if not allowed:
            problems.append(f"no tested {dist} release is allowed by {requirement}")
        if broken := [v for v in allowed if v not in works]:
            problems.append(f"{requirement} allows {broken}, which fail")
        # The pin is the newest release that works on every Pi CPU, not an older one.
        newest = works[-1] if works else None
        if newest not in allowed:
            problems.append(
                f"{requirement} does not allow {dist} {newest}, the newest tested release "
                f"that works on {' and '.join(CPU_MODELS)}"
            )
    assert not problems, "\n".join(problems) + "\n" + table
