"""``edgefleet demo``, also through the README's first command, run as a user would: the whole
scenario with nothing but the demo's own narration on the console, waves counted from 1, the
figures it narrates measured; Ctrl-C at the end, or SIGTERM or SIGINT in the middle, stops it
and every process it started within 5 s."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Third-party chatter: Python logging's default format, glog/absl lines, TFLite's delegate line.
NOISE = re.compile(
    r"^(WARNING|INFO|ERROR|DEBUG):[\w.]+:|^[IWEF]\d{4} \d\d:\d\d|absl::|oneDNN|XNNPACK|"
    r"Warning:|UserWarning|DeprecationWarning|FutureWarning",
    re.MULTILINE,
)
STOP_S = 5.0


REPO = Path(__file__).resolve().parents[2]


class Demo:
    """``edgefleet demo``, or the README's first command, ``./scripts/try`` (which execs it), in
    this test's environment (already set up: ``scripts/test`` stamped it, so nothing installs)."""

    def __init__(self, tmp_path: Path, *args: str, via_script: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env["COLUMNS"] = "160"
        self.data = tmp_path / "demo"
        self.out_path = tmp_path / "demo.out"
        command = [sys.executable, "-m", "edgefleet.controller.cli", "demo", *args]
        if via_script:
            env["EDGEFLEET_VENV"] = sys.prefix
            command = [str(REPO / "scripts" / "try"), *args]
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "--data-dir", str(self.data)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.out[-5000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.out[-5000:]}")
            time.sleep(0.2)

    def stop(self, signum: int) -> tuple[int, float]:
        """Send ``signum``; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        return code, time.monotonic() - started

    def leftovers(self) -> list[str]:
        """Processes still running that were started for this demo (their command lines name
        its data dir)."""
        return subprocess.run(
            ["pgrep", "-f", str(self.data)], capture_output=True, text=True, check=False
        ).stdout.split()


def test_the_demo_tells_the_scenario_quietly_and_ctrl_c_stops_everything(tmp_path) -> None:
    demo = Demo(tmp_path, via_script=True)
    try:
        demo.wait_for("press Ctrl-C to stop them", timeout=600)
        code, took = demo.stop(signal.SIGINT)
    finally:
        if demo.proc.poll() is None:
            os.killpg(demo.proc.pid, signal.SIGKILL)
    out = demo.out
    assert code == 0, out[-5000:]
    print(f"demo at its end SIGINT: stopped in {took:.2f} s")  # the figure, with -s
    assert took < STOP_S, f"took {took:.1f} s to stop:\n{out[-3000:]}"
    assert demo.leftovers() == []
    assert not NOISE.findall(out), NOISE.findall(out)
    assert (demo.data / "build.log").exists()  # where the libraries' output went
    assert "rollout 1: completed" in out
    assert "rollout 2: rolled_back" in out
    assert "every device runs digits:1 again" in out
    assert "dashboard and API: http://127.0.0.1:" in out
    # waves count from 1 everywhere; no "wave 0" in the narration or the tables
    assert "gate breached in wave 1/2" in out
    assert not re.search(r"\bwave 0\b", out)
    assert re.search(r"wave 3/3", out)
    # the slowdown narrated is the one measured when building, and the gate measured its own
    built = re.search(r"p95 ([\d.e+-]+) ms vs ([\d.e+-]+) ms on this machine", out)
    assert built is not None, out[-5000:]
    ratio = float(built.group(1)) / float(built.group(2))
    narrated = re.search(r"a bad version \(([\d.]+)x the p95 of digits:1 on this machine\)", out)
    assert narrated is not None, out[-5000:]
    assert float(narrated.group(1)) == pytest.approx(ratio, rel=0.01, abs=0.06)  # 4 digits
    assert "10x slower" not in out
    assert re.search(r"stopped the 5 processes it started in [\d.]+ s", out)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "sigint", "sigkill"]
)
def test_a_signal_in_the_middle_stops_the_demo_and_its_fleet(tmp_path, signum) -> None:
    """SIGTERM or SIGINT (Ctrl-C): the demo stops its fleet itself. SIGKILL: nothing runs in
    the demo any more; its children get SIGTERM from the kernel as their parent dies."""
    demo = Demo(tmp_path, "--exit")
    try:
        demo.wait_for("rollout 1: digits:1", timeout=600)  # the fleet is up, a rollout runs
        assert len(demo.leftovers()) == 5  # the controller and four agents
        code, took = demo.stop(signum)
        deadline = time.monotonic() + STOP_S
        while demo.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        gone_in = time.monotonic() - deadline + STOP_S + took
    finally:
        if demo.proc.poll() is None:
            os.killpg(demo.proc.pid, signal.SIGKILL)
    out = demo.out
    assert demo.leftovers() == [], f"children still running {gone_in:.1f} s after the signal"
    print(f"demo mid-scenario {signal.Signals(signum).name}: all gone in {gone_in:.2f} s")
    assert gone_in < STOP_S, f"took {gone_in:.1f} s to stop:\n{out[-3000:]}"
    if signum != signal.SIGKILL:
        assert code == 130, out[-3000:]
        assert f"{signum.name} before the scenario ended" in out
    else:
        assert code == -signal.SIGKILL
    # each agent stopped on its SIGTERM (the demo's signal handling is not passed on to them),
    # not on the SIGKILL that follows the grace period
    logs = sorted(demo.data.glob("agent-*.log"))
    assert len(logs) == 4
    for log in logs:
        assert re.search(r"agent \S+ stopped$", log.read_text(errors="replace").strip()), log
