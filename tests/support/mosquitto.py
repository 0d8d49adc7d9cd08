"""A real mosquitto process on a free loopback port, for tests that need a broker.

The config is generated per broker and includes ``deploy/mosquitto/limits.conf``, so tests run
with the same limits production does. The broker can be stopped, killed and restarted on the
same port (fault tests); persistence keeps retained messages across a clean restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMITS_CONF = REPO / "deploy" / "mosquitto" / "limits.conf"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
    return found


class MosquittoProcess:
    """Lifecycle of one mosquitto process: start (waiting for its ports), stop, kill, restart.

    Subclasses say which config to write and which ports to wait for.
    """

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        raise NotImplementedError

    @property
    def ports(self) -> tuple[int, ...]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.write_config()
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        pending = set(self.ports)
        while pending:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: {err}{self.log()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on {pending} within {timeout}s")
            for port in list(pending):
                try:
                    with socket.create_connection((self.host, port), timeout=0.2):
                        pending.discard(port)
                except OSError:
                    time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGTERM): mosquitto saves its persistence file."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close()

    def kill(self) -> None:
        """Kill hard (SIGKILL), as a crash or power cut would."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close()

    def restart(self, *, hard: bool = False) -> None:
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: re-read the config (password file, ACL)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGHUP)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def _close(self) -> None:
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None


class MosquittoBroker(MosquittoProcess):
    """An anonymous, plain-MQTT mosquitto on a free loopback port, with the deploy limits."""

    def __init__(self, workdir: Path, *, port: int | None = None, extra_config: str = "") -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def write_config(self) -> None:
        lines = [
            # Started as root, mosquitto would drop to user "mosquitto" and lose access to the
            # test's private temp dir (persistence, log); stay the user that started it.
            *(["user root"] if os.geteuid() == 0 else []),
            "per_listener_settings false",
            "allow_anonymous true",
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            LIMITS_CONF.read_text(),
            self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
