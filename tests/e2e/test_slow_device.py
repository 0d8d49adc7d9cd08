"""A device much slower than the controller host, on x86: one real agent process runs in a cgroup
with a CPU quota that makes it at least 10x slower than the host, beside an unthrottled one.
Latency is judged where the model runs, so a model that is quick on the host is not refused for
being slower on that device, while the fleet's p95 gate still stops a model that is slower than
the one it replaces on that very device.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cpu_quota import CpuQuota, cpu_quota, find_cpu_hierarchy
from support.fleet import register_cpu_bound_model
from support.mqtt import wait_until

SLOW = "pi-throttled"  # sorts first among the online devices: the canary of every rollout
FAST = "x86-host"
SLOW_CLASS = "board=throttled-x86"
# 1 ms of CPU per 20 ms (5% of a core, ~20x slower): the shortest period the kernel accepts
# for such a quota, so a model's latency grows with its compute in steps of 20 ms rather than
# in jumps of whole 100 ms periods.
QUOTA_US, PERIOD_US = 1000, 20_000
MIN_SLOWDOWN = 10.0
# ~157M MACs: ~3 ms of CPU per inference on the host it was tuned on (more where the host is
# faster, see model_template); version 2 has five times the compute.
HEAVY_REPEAT = 600
SLOWER = 5


@pytest.fixture(scope="module")
def model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overrides the e2e template for this module: ``heavy:1``, a host p95 over 2 ms, and
    ``heavy:2``, the same network with five times its compute."""
    repeat = HEAVY_REPEAT
    for _ in range(3):  # a faster host than the one HEAVY_REPEAT was tuned on: more compute
        data_dir = tmp_path_factory.mktemp("slow-device-template")
        heavy = register_cpu_bound_model(data_dir, name="heavy", version="1", repeat=repeat)
        (artifact,) = heavy.artifacts
        p95 = artifact.report.latency.p95_ms
        if p95 > 2.0:
            break
        repeat = math.ceil(repeat * 3.0 / p95)
    assert p95 > 2.0, artifact.report.latency
    register_cpu_bound_model(data_dir, name="heavy", version="2", repeat=repeat * SLOWER)
    return data_dir


@pytest.fixture
def throttled(fleet: Any) -> Iterator[tuple[Any, CpuQuota]]:
    """The fleet with a fast agent and a slow one: the slow one started, online, then moved
    with all its threads into a fresh cgroup whose slowdown was measured on creation."""
    with cpu_quota(QUOTA_US, PERIOD_US) as quota:
        assert quota.slowdown >= MIN_SLOWDOWN, (quota.slowdown, quota.last_benchmark)
        key, _, value = SLOW_CLASS.partition("=")
        slow = fleet.start_agent(SLOW, runtimes=["onnxruntime"], labels={key: value})
        fleet.start_agent(FAST, runtimes=["onnxruntime"])
        fleet.wait_devices([SLOW, FAST])
        assert slow.proc is not None
        quota.add(slow.proc.pid)
        assert quota.pids() == [slow.proc.pid]
        yield fleet, quota
        # Leaving the block moves the agent back out and removes the cgroup; the fleet
        # fixture stops the agents after that.


def _states(rollout: dict[str, Any]) -> dict[str, str]:
    return {d["device_id"]: d["state"] for d in rollout["devices"]}


def _active_versions(fleet: Any) -> dict[str, str | None]:
    devices = fleet.controller.get("/api/devices")
    return {d["id"]: d["active"]["version"] if d["active"] else None for d in devices}


def _requests(fleet: Any, device_id: str, version: str) -> int:
    windows = fleet.controller.get(f"/api/telemetry?device_id={device_id}&model_id=heavy")
    return sum(w["requests"] for w in windows if w["version"] == version)


@pytest.mark.slow
def test_on_a_device_10x_slower_a_heavy_model_lands_and_a_5x_slower_one_is_gated(
    throttled: tuple[Any, CpuQuota],
) -> None:
    fleet, quota = throttled
    landed = fleet.rollout(
        "1", model="heavy", expect={"completed", "paused", "rolled_back"}, waves="100%",
        policy={"soak_s": 0}, timeout=120,
    )  # fmt: skip
    slow = next(d for d in landed["devices"] if d["device_id"] == SLOW)
    assert landed["status"] == "completed", (
        f"{SLOW}, {quota.slowdown:.1f}x slower than the host: {slow['state']}: {slow['reason']}"
    )
    assert _states(landed) == {SLOW: "active", FAST: "active"}
    assert _active_versions(fleet) == {SLOW: "1", FAST: "1"}

    fleet.start_traffic([SLOW, FAST])
    # A latency baseline of version 1 on the slow device itself.
    wait_until(lambda: _requests(fleet, SLOW, "1") >= 40, timeout=60, interval=0.5)
    throttled_before = quota.throttled_periods()
    # The operator's budget for this class of boards admits version 2 on the device, so what
    # stops it is the fleet's gate on the latency it then shows in service.
    bad = fleet.rollout(
        "2",
        model="heavy",
        expect={"rolled_back", "paused", "completed"},
        waves="1,100%",
        policy={
            "soak_s": 4,
            "max_p95_regression": 0.5,
            "min_requests": 5,
            "latency_budgets": [{"selector": SLOW_CLASS, "budget_ms": 10_000}],
        },
        timeout=150,
    )
    assert bad["status"] == "rolled_back", (bad["reason"], bad["gate"], bad["devices"])
    assert "gate breached in wave 1/2" in bad["reason"]
    checks = {c["name"]: c for c in bad["gate"]["checks"]}
    assert checks["failures"]["passed"], checks  # it installed: the p95 gate stopped it
    p95 = checks["p95_regression"]
    assert not p95["passed"], checks
    # Five times the compute shows on the slow device as well over the gate's threshold
    # (throttling in 20 ms steps and the agent's own work under the same quota blur it: +180 to
    # +220 % measured in CI, +92 % once with other benchmarks running beside it): 1.5x the
    # threshold at least, so the breach is the model's, not noise at the threshold.
    assert p95["value"] >= 0.75, p95
    print(f"{SLOW}: {quota.slowdown:.1f}x slower; {p95['detail']}")  # pytest -rP shows it
    assert _states(bad) == {SLOW: "reverted", FAST: "cancelled"}, bad["devices"]
    assert next(d["wave"] for d in bad["devices"] if d["device_id"] == SLOW) == 0
    wait_until(lambda: _active_versions(fleet) == {SLOW: "1", FAST: "1"}, timeout=60)
    assert quota.pids() == [fleet.agents[SLOW].proc.pid]  # it ran in the cgroup throughout
    assert quota.throttled_periods() > throttled_before
    assert fleet.requests_ok > 0


_THREADS = """
import sys, threading
for i in range(3):
    threading.Thread(target=threading.Event().wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_the_quota_cgroup_holds_every_thread_and_is_gone_afterwards() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _THREADS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        before = Path(f"/proc/{proc.pid}/cgroup").read_text()
        with cpu_quota(QUOTA_US, PERIOD_US) as quota:
            assert quota.slowdown >= MIN_SLOWDOWN, quota.last_benchmark
            quota.add(proc.pid)
            assert quota.pids() == [proc.pid]
            for task in Path(f"/proc/{proc.pid}/task").iterdir():  # 4 threads, all inside
                assert quota.path.name in (task / "cgroup").read_text()
            path = quota.path
        assert not path.exists()
        assert Path(f"/proc/{proc.pid}/cgroup").read_text() == before  # back where it was
    finally:
        proc.kill()
        proc.wait()


def test_cgroup_v2_quota_goes_under_the_deepest_ancestor_delegating_cpu(tmp_path: Path) -> None:
    """Where a v2-only machine gets its cgroup, on a stand-in tree (this host runs cgroup v1)."""
    root = tmp_path / "unified"
    own = root / "system.slice" / "ci.service"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for directory, control in ((root, "cpu memory"), (root / "system.slice", "cpu"), (own, "")):
        (directory / "cgroup.subtree_control").write_text(control + "\n")
    mountinfo = (
        f"30 1 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "31 1 0:27 / /proc rw - proc proc rw\n"
    )
    found = find_cpu_hierarchy(mountinfo, "0::/system.slice/ci.service\n")
    assert (found.version, found.parent) == (2, root / "system.slice")
    (root / "system.slice" / "cgroup.subtree_control").write_text("memory\n")
    assert find_cpu_hierarchy(mountinfo, "0::/system.slice/ci.service\n").parent == root
