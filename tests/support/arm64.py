"""An arm64 Debian root run under qemu-user, for agents that run as they would on a Pi.

The root is built once with ``debootstrap`` (into a temporary directory renamed when complete,
under a lock shared by concurrent pytest processes) and cached outside the repository. Every
command runs chrooted in a mount namespace of its own, so the bind mounts it needs (``/proc``,
``/sys``, ``/dev``, the board's ``/proc/cpuinfo`` and the host directories a test shares with
it, at the same paths) vanish with it, even when it is killed. ``QEMU_CPU`` in its environment
picks the emulated CPU (``cortex-a72`` a Pi 4, ``cortex-a76`` a Pi 5); binfmt_misc runs
``qemu-aarch64-static`` for every arm64 binary, registered here when it is not already.
What is installed in the root lives in :mod:`support.arm64_install`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("EDGEFLEET_ARM64_CACHE", "/var/cache/edgefleet"))
SUITE = "bookworm"
MIRROR = os.environ.get("EDGEFLEET_ARM64_MIRROR", "http://deb.debian.org/debian")
DEBOOTSTRAP_ARGS = (
    "--arch=arm64",
    "--variant=minbase",
    "--include=python3,python3-venv,ca-certificates",
)


@dataclass(frozen=True)
class CpuModel:
    """A board whose CPU qemu emulates, as its ``/proc/cpuinfo`` describes it."""

    board: str
    variant: int
    part: int
    revision: int


CPU_MODELS = {
    "cortex-a72": CpuModel("Raspberry Pi 4 Model B Rev 1.4", variant=0x0, part=0xD08, revision=3),
    "cortex-a76": CpuModel("Raspberry Pi 5 Model B Rev 1.0", variant=0x4, part=0xD0B, revision=1),
}
# AT_HWCAP bit names in the order of the kernel's arch/arm64/kernel/cpuinfo.c.
_HWCAP_BITS = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
)
HWCAP_NAMES = tuple(_HWCAP_BITS.split())

QEMU = Path("/usr/bin/qemu-aarch64-static")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# The ELF header of a little-endian arm64 executable; F (fix binary) makes the kernel open the
# interpreter now, so it runs inside a chroot that has no qemu of its own.
BINFMT_RULE = (
    rb":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00"
    rb"\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:"
    + bytes(QEMU)
    + b":F"
)
# A command's private mounts: the root's kernel file systems, the emulated board's cpuinfo over
# the host's (qemu-user shows the x86 one, on which LiteRT's cpuinfo crashes), a /tmp of its own
# (so the mount points of host directories under /tmp vanish too), host directories shared at
# the same path, then the chroot. No core files: a crash is reported by its signal.
MOUNT_AND_CHROOT = """set -e
root=$1; cpuinfo=$2; count=$3; shift 3
ulimit -c 0
for fs in proc sys dev; do mount --rbind "/$fs" "$root/$fs"; done
if [ -n "$cpuinfo" ]; then mount --bind "$cpuinfo" "$root/proc/cpuinfo"; fi
mount -t tmpfs -o mode=1777,size=1g arm64-tmp "$root/tmp"
while [ "$count" -gt 0 ]; do
    mkdir -p "$root$1"; mount --bind "$1" "$root$1"; shift; count=$((count - 1))
done
exec chroot "$root" "$@"
"""
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_CPUINFO_WRITTEN: set[Path] = set()


class Arm64UnavailableError(Exception):
    """This kernel cannot run arm64 binaries here (the reason names the missing feature)."""


@contextlib.contextmanager
def cache_lock(cache: Path = CACHE_DIR) -> Iterator[None]:
    """One builder at a time across pytest processes sharing ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "arm64.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_binfmt() -> None:
    """Mount binfmt_misc and register qemu-aarch64 with flag F when they are not already.

    Raises:
        Arm64UnavailableError: not root, or the kernel has no binfmt_misc or refuses it.
    """
    if os.geteuid() != 0:
        raise Arm64UnavailableError(
            "needs root: binfmt_misc registration, mount namespaces and chroot"
        )
    if not (BINFMT_DIR / "register").exists():
        if shutil.which("modprobe"):  # a built-in binfmt_misc needs no module (and no kmod)
            subprocess.run(["modprobe", "binfmt_misc"], capture_output=True, check=False)
        mounted = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            raise Arm64UnavailableError(
                f"the kernel's binfmt_misc file system cannot be mounted at {BINFMT_DIR} "
                f"(CONFIG_BINFMT_MISC): {mounted.stderr.strip()}"
            )
    entry = BINFMT_DIR / "qemu-aarch64"
    if entry.exists():
        lines = entry.read_text().splitlines()
        flags = next((ln.split()[1] for ln in lines if ln.startswith("flags:")), "")
        if lines and lines[0] == "enabled" and "F" in flags:
            return
        entry.write_text("-1")  # disabled, or without F (useless in a chroot): replace it
    try:
        (BINFMT_DIR / "register").write_bytes(BINFMT_RULE)
    except OSError as e:
        raise Arm64UnavailableError(
            f"the kernel refused to register qemu-aarch64 with binfmt_misc: {e}"
        ) from e


def check_mount_namespaces() -> None:
    """Every command in the root runs in a mount namespace of its own.

    Raises:
        Arm64UnavailableError: the kernel does not let this process create one.
    """
    probe = ["unshare", "--mount", "--propagation", "private", "--", "true"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise Arm64UnavailableError(
            f"the kernel refuses a private mount namespace (CLONE_NEWNS): {done.stderr.strip()}"
        )


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """Delete a directory that may be a (half-built) root, never through a mount in it."""
    if not path.exists():
        return
    mounts = _mounts_under(path)
    if mounts:
        raise RuntimeError(f"refusing to delete {path}: mounts inside it {mounts}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def tail_text(path: Path, size: int = 3000) -> str:
    """The end of a log file (empty when there is none yet)."""
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


@dataclass(frozen=True)
class Arm64Root:
    """A complete arm64 root and the host directories shared with every command run in it."""

    path: Path
    binds: tuple[Path, ...] = ()

    def environment(
        self, cpu: str | None, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """A clean environment for a command in the root (nothing of the host's leaks in)."""
        env = {
            "PATH": ROOT_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
        }
        if cpu is not None:
            if cpu not in CPU_MODELS:
                raise ValueError(f"unknown CPU model {cpu!r}: one of {sorted(CPU_MODELS)}")
            env["QEMU_CPU"] = cpu
        env.update(extra or {})
        return env

    def command(self, argv: Sequence[str], cpu: str | None = None) -> list[str]:
        """``argv`` run chrooted in the root, in a mount namespace of its own, seeing the
        ``/proc/cpuinfo`` of the board with CPU model ``cpu`` (the host's without one)."""
        binds = [str(b.resolve()) for b in self.binds]
        cpuinfo = str(self.cpuinfo(cpu)) if cpu is not None else ""
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", MOUNT_AND_CHROOT, "arm64-chroot", str(self.path), cpuinfo,
            str(len(binds)), *binds, *argv,
        ]  # fmt: skip

    def cpuinfo(self, cpu: str) -> Path:
        """A ``/proc/cpuinfo`` for the board with ``cpu``, its features those qemu emulates
        (read from AT_HWCAP in the emulation), one entry per host CPU."""
        if cpu not in CPU_MODELS:
            raise ValueError(f"unknown CPU model {cpu!r}: one of {sorted(CPU_MODELS)}")
        path = self.path / "opt" / "edgefleet" / "cpuinfo" / cpu
        if path not in _CPUINFO_WRITTEN:
            auxv = "import ctypes; f = ctypes.CDLL(None).getauxval; f.restype = ctypes.c_ulong"
            probe = ["/usr/bin/python3", "-c", f"{auxv}; print(f(16))"]  # 16: AT_HWCAP
            hwcap = int(self.run(probe, timeout=120, env={"QEMU_CPU": cpu}).stdout)
            features = " ".join(n for bit, n in enumerate(HWCAP_NAMES) if hwcap >> bit & 1)
            model = CPU_MODELS[cpu]
            entry = (
                "processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
                "CPU implementer\t: 0x41\nCPU architecture: 8\n"
                f"CPU variant\t: {model.variant:#x}\nCPU part\t: {model.part:#x}\n"
                f"CPU revision\t: {model.revision}\n"
            )
            text = "\n".join(
                entry.format(n=n, features=features) for n in range(os.cpu_count() or 1)
            )
            text += f"\nHardware\t: BCM2835\nModel\t\t: {model.board}\n"
            _write_atomically(path, text)
            _CPUINFO_WRITTEN.add(path)
        return path

    def run(
        self,
        argv: Sequence[str],
        *,
        cpu: str | None = None,
        timeout: float = 600,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the root and wait (output captured as text).

        Raises:
            subprocess.CalledProcessError: it failed and ``check`` is set (output attached).
        """
        result = subprocess.run(
            self.command(argv, cpu),
            env=self.environment(cpu, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, list(argv), result.stdout[-4000:], result.stderr[-4000:]
            )
        return result

    def popen(
        self,
        argv: Sequence[str],
        *,
        cpu: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the root; the returned process *is* the emulated program."""
        with log_path.open("ab") as log:
            return subprocess.Popen(
                self.command(argv, cpu),
                env=self.environment(cpu, env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def inside(self, host_path: Path) -> Path:
        """Where a path in the root's directory appears to a command run in it."""
        return Path("/") / host_path.relative_to(self.path)

    def python_version(self) -> str:
        """The root's ``python3`` as ``3.11``."""
        found = sorted(p.name for p in (self.path / "usr" / "lib").glob("python3.*"))
        if not found:
            raise RuntimeError(f"no python3 in {self.path}")
        return found[-1].removeprefix("python")

    def glibc(self) -> tuple[int, int]:
        """The root's glibc version, as ``ldd --version`` there reports it."""
        text = self.run(["/usr/bin/ldd", "--version"], timeout=60).stdout.partition("\n")[0]
        major, _, minor = text.rsplit(" ", 1)[-1].partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise RuntimeError(f"cannot tell the glibc version of {self.path}: {text!r}")
        return int(major), int(minor)

    def with_binds(self, *binds: Path) -> Arm64Root:
        return Arm64Root(self.path, (*self.binds, *binds))


def root_name() -> str:
    """The cached root's directory name: what debootstrap was asked for, hashed."""
    recipe = "\n".join((SUITE, *DEBOOTSTRAP_ARGS)).encode()
    return f"arm64-{SUITE}-{hashlib.sha256(recipe).hexdigest()[:10]}"


def ensure_root(cache: Path = CACHE_DIR, timeout: float = 1800) -> Arm64Root:
    """The cached arm64 root, built by debootstrap the first time (about 6 minutes).

    Raises:
        Arm64UnavailableError: the kernel cannot run arm64 binaries or chroot them privately.
        RuntimeError: debootstrap failed (its log's end attached).
    """
    final = cache / root_name()
    check_mount_namespaces()
    with cache_lock(cache):
        ensure_binfmt()
        if not final.is_dir():
            _build_root(final, timeout)
    for name in ("etc/resolv.conf", "etc/ssl/certs/ca-certificates.crt"):
        _copy_atomically(Path("/") / name, final / name)
    root = Arm64Root(final)
    machine = root.run(["/usr/bin/uname", "-m"], timeout=60).stdout.strip()
    if machine != "aarch64":
        raise RuntimeError(f"{final} runs as {machine!r}, not aarch64")
    return root


def _build_root(final: Path, timeout: float) -> None:
    for leftover in final.parent.glob(f"{final.name}.tmp*"):
        remove_tree(leftover)  # a build that crashed: never reused
    building = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    log = final.with_name(f"{final.name}.log")
    started = time.monotonic()
    with log.open("w") as out:
        # In a mount namespace of its own: the /proc and /sys debootstrap mounts in the new
        # root die with it, whatever happens to it.
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "debootstrap", *DEBOOTSTRAP_ARGS, SUITE, str(building), MIRROR]  # fmt: skip
        result = subprocess.run(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        remove_tree(building)
        raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{tail_text(log)}")
    os.rename(building, final)
    print(f"arm64 root built in {time.monotonic() - started:.0f}s: {final}", file=sys.stderr)


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    os.replace(temporary, target)


@pytest.fixture(scope="session")
def arm64_root(tmp_path_factory: pytest.TempPathFactory) -> Arm64Root:
    """The cached root, sharing this session's temp dir with every command run in it."""
    require_tool("debootstrap", "apt-get install debootstrap")
    require_tool(QEMU.name, "apt-get install qemu-user-static")
    try:
        root = ensure_root()
    except Arm64UnavailableError as e:
        pytest.skip(f"cannot run arm64 binaries on this machine: {e}")
    return root.with_binds(tmp_path_factory.getbasetemp())
