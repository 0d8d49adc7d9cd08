"""A slow CPU on a fast host: a cgroup of the test's own with a CPU quota (cgroup v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``, or v2 ``cpu.max``), processes moved into it, and the
slowdown it really causes measured by one benchmark inside and outside, in the same run.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

# A pure-Python loop: single-threaded CPU work that neither sleeps nor touches the disk. It waits
# for a line on stdin, so it can be moved into the cgroup before the clock starts.
_BENCHMARK = """
import sys, time
sys.stdin.readline()
wall, cpu = time.perf_counter(), time.process_time()
total = 0
for i in range(int(sys.argv[1])):
    total += i * i
print(time.perf_counter() - wall, time.process_time() - cpu, flush=True)
"""
BENCHMARK_LOOPS = 1_500_000  # ~0.12 s of CPU here: ~2.5 s, 25 periods of 100 ms, at 5%


class CgroupUnavailableError(RuntimeError):
    """The kernel offers no cpu cgroup controller here, or this process may not write to it."""


@dataclass(frozen=True, slots=True)
class CpuHierarchy:
    """Where new cpu cgroups go: ``parent`` (a directory of a mounted hierarchy) and its kind."""

    version: Literal[1, 2]
    parent: Path
    mountpoint: Path


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str
    mountpoint: Path
    fstype: str
    super_options: tuple[str, ...]


def parse_mountinfo(text: str) -> list[_Mount]:
    """The cgroup and cgroup2 mounts in ``/proc/self/mountinfo`` text (see proc(5))."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 6 or len(fields) < dash + 4:
            continue
        fstype = fields[dash + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mountpoint = fields[4].replace("\\040", " ")
        options = tuple(fields[dash + 3].split(","))
        mounts.append(_Mount(fields[3], Path(mountpoint), fstype, options))
    return mounts


def own_cgroup_paths(text: str) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v1 cpu hierarchy and in the v2 one, from
    ``/proc/self/cgroup`` text (``id:controllers:path`` lines)."""
    v1 = v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v1, v2


def _inside(mount: _Mount, own: str | None) -> Path:
    """The directory of cgroup ``own`` (a path in the hierarchy) under ``mount``."""
    if own is None:
        return mount.mountpoint
    relative = Path(own).relative_to("/")
    root = Path(mount.root).relative_to("/")
    if relative.parts[: len(root.parts)] != root.parts:
        return mount.mountpoint  # our cgroup lies outside what is mounted: use the mount's root
    return mount.mountpoint.joinpath(*relative.parts[len(root.parts) :])


def find_cpu_hierarchy(mountinfo: str, proc_cgroup: str) -> CpuHierarchy:
    """Where a child cgroup with a CPU quota can be made: under this process's own cgroup in a
    v1 hierarchy with the cpu controller, else in the v2 hierarchy under the deepest ancestor
    that hands the cpu controller to its children (enabling it at the root when none does).

    Raises:
        CgroupUnavailableError: no mounted hierarchy has the cpu controller.
    """
    mounts = parse_mountinfo(mountinfo)
    own_v1, own_v2 = own_cgroup_paths(proc_cgroup)
    for mount in mounts:
        if mount.fstype == "cgroup" and "cpu" in mount.super_options:
            return CpuHierarchy(1, _inside(mount, own_v1), mount.mountpoint)
    for mount in mounts:
        if mount.fstype != "cgroup2":
            continue
        available = (mount.mountpoint / "cgroup.controllers").read_text().split()
        if "cpu" not in available:
            continue
        here = _inside(mount, own_v2)
        for candidate in (here, *here.parents):
            if candidate.is_relative_to(mount.mountpoint):
                control = (candidate / "cgroup.subtree_control").read_text().split()
                if "cpu" in control:
                    return CpuHierarchy(2, candidate, mount.mountpoint)
        # Nobody delegates cpu yet: the root may, as it is exempt from the rule that a cgroup
        # with processes cannot enable controllers for its children.
        try:
            (mount.mountpoint / "cgroup.subtree_control").write_text("+cpu")
        except OSError as e:
            raise CgroupUnavailableError(
                f"cgroup v2 at {mount.mountpoint} has the cpu controller but it cannot be "
                f"enabled for child cgroups: {e}"
            ) from e
        return CpuHierarchy(2, mount.mountpoint, mount.mountpoint)
    found = ", ".join(f"{m.fstype} at {m.mountpoint}" for m in mounts) or "no cgroup mounts"
    raise CgroupUnavailableError(f"no cgroup hierarchy with the cpu controller ({found})")


def _cgroup_dir_of(pid: int, hierarchy: CpuHierarchy) -> Path:
    """The directory of the cgroup ``pid`` is in now, in ``hierarchy``."""
    text = Path(f"/proc/{pid}/cgroup").read_text()
    own_v1, own_v2 = own_cgroup_paths(text)
    own = own_v1 if hierarchy.version == 1 else own_v2
    if own is None:
        return hierarchy.parent
    return hierarchy.mountpoint.joinpath(*Path(own).relative_to("/").parts)


@dataclass(frozen=True, slots=True)
class BenchmarkRun:
    wall_s: float
    cpu_s: float


@dataclass(frozen=True, slots=True)
class BenchmarkTimes:
    """The runs behind one slowdown figure, for the report of a test that fails on it."""

    inside: BenchmarkRun
    outside_before: BenchmarkRun
    outside_after: BenchmarkRun


@dataclass
class CpuQuota:
    """One cgroup with a CPU quota; :func:`cpu_quota` makes and removes it."""

    path: Path
    hierarchy: CpuHierarchy
    quota_us: int
    period_us: int
    slowdown: float = 0.0  # measured by measure_slowdown() on entry
    last_benchmark: BenchmarkTimes | None = field(default=None, repr=False)
    _origins: dict[int, Path] = field(default_factory=dict, repr=False)

    def add(self, pid: int) -> None:
        """Move process ``pid`` and all its threads into this cgroup.

        Raises:
            RuntimeError: a thread of ``pid`` did not follow it.
        """
        self._origins.setdefault(pid, _cgroup_dir_of(pid, self.hierarchy))
        (self.path / "cgroup.procs").write_text(str(pid))
        threads = {int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()}
        inside = set(self._read_ids("tasks" if self.hierarchy.version == 1 else "cgroup.threads"))
        if not threads <= inside:
            raise RuntimeError(f"threads {sorted(threads - inside)} of {pid} left outside")

    def pids(self) -> list[int]:
        """The processes in this cgroup now."""
        return self._read_ids("cgroup.procs")

    def throttled_periods(self) -> int:
        """How many periods the kernel held this cgroup back so far (``cpu.stat``)."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "nr_throttled":
                return int(value)
        raise RuntimeError(f"no nr_throttled in {self.path / 'cpu.stat'}")

    def measure_slowdown(self, loops: int = BENCHMARK_LOOPS) -> float:
        """How many times longer one benchmark takes in this cgroup than on the host.

        In the cgroup it is the wall time: what an application on this slow device waits. On
        the host it is the CPU time, the best of one run before and one after: what a core of
        the host does, whether or not other tests share it (wall time on a loaded 2-core host
        would count their load as slowness of the host, understating the device's).
        """
        outside_before = _run_benchmark(loops, None)
        inside = _run_benchmark(loops, self)
        outside_after = _run_benchmark(loops, None)
        self.last_benchmark = BenchmarkTimes(inside, outside_before, outside_after)
        return inside.wall_s / min(outside_before.cpu_s, outside_after.cpu_s)

    def _read_ids(self, name: str) -> list[int]:
        return [int(x) for x in (self.path / name).read_text().split()]

    def _release(self, deadline_s: float = 10.0) -> None:
        """Move every process back where it came from, then remove the cgroup."""
        fallback = self.hierarchy.parent
        deadline = time.monotonic() + deadline_s
        while True:
            for pid in self.pids():
                target = self._origins.get(pid, fallback)
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    (target / "cgroup.procs").write_text(str(pid))
            try:
                self.path.rmdir()
                return
            except OSError as e:
                # EBUSY: a process was forked inside or is still exiting; try again.
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def _run_benchmark(loops: int, cgroup: CpuQuota | None) -> BenchmarkRun:
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", _BENCHMARK, str(loops)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if cgroup is not None:
            cgroup.add(proc.pid)
        out, _ = proc.communicate("go\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"CPU benchmark exited {proc.returncode}")
    wall, cpu = (float(x) for x in out.split())
    return BenchmarkRun(wall, cpu)


def _write_limit(path: Path, hierarchy: CpuHierarchy, quota_us: int, period_us: int) -> None:
    if hierarchy.version == 1:
        (path / "cpu.cfs_period_us").write_text(str(period_us))
        (path / "cpu.cfs_quota_us").write_text(str(quota_us))
    else:
        (path / "cpu.max").write_text(f"{quota_us} {period_us}")


@contextmanager
def cpu_quota(
    quota_us: int = 5000, period_us: int = 100_000, *, prefix: str = "edgefleet-test"
) -> Iterator[CpuQuota]:
    """A uniquely named cgroup allowing ``quota_us`` of CPU time per ``period_us`` to all its
    processes together, its slowdown measured on entry; on exit every process in it is moved
    back and it is removed.

    Skips the test, with the reason, when the kernel has no cpu controller or this process
    may not create a cgroup in it.

    Raises:
        ValueError: a quota or period outside what the kernel accepts (1 ms to 1 s periods).
    """
    if not 1000 <= period_us <= 1_000_000 or quota_us < 1000:
        raise ValueError(f"quota {quota_us} us per {period_us} us: both must be >= 1000 us")
    try:
        hierarchy = find_cpu_hierarchy(
            Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text()
        )
    except CgroupUnavailableError as e:
        pytest.skip(str(e))
    path = hierarchy.parent / f"{prefix}-{uuid.uuid4().hex[:12]}"
    try:
        path.mkdir()
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        pytest.skip(f"cannot create a cgroup in {hierarchy.parent}: {e}")
    quota = CpuQuota(path, hierarchy, quota_us, period_us)
    try:
        try:
            _write_limit(path, hierarchy, quota_us, period_us)
        except PermissionError as e:
            pytest.skip(f"cannot set a CPU quota on {path}: {e}")
        quota.slowdown = quota.measure_slowdown()
        yield quota
    finally:
        quota._release()
