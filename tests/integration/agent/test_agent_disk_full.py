"""A full disk is a local failure, not the manifest's: the agent retries with backoff, shows
``retrying`` in its state, obeys commands meanwhile, and converges once space returns, with no
restart; only at ``io_retry_limit_s`` does it report ``io_error``.

The agent's data dir is a real, small tmpfs (mounted here; the test is skipped only if the
mount fails), filled with a ballast file.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.shared import EventType, OutcomeResult
from support import agent_models
from support.agent_harness import DEVICE, x_batch
from support.mqtt import wait_until
from support.tmpfs import small_tmpfs

GOLDEN = [x_batch(1, seed=i) for i in range(2)]
FAST_RETRY = {"io_retry_min_s": 0.05, "io_retry_max_s": 0.2}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted after the test (request it before ``start_agent``, so the
    agents stop first)."""
    with small_tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


def fill_disk(mount: Path, leave: int = 0) -> Path:
    """Write a ballast file until only ``leave`` bytes (about) are free; 0 fills it up."""
    ballast = mount / "ballast"
    block = b"\0" * 65536
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > leave:
            room = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize - leave
            try:
                os.write(fd, block[: max(4096, min(len(block), room))])
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return ballast


def serve(publisher, watcher, model, serial):
    manifest = publisher.manifest(
        model, device_id=DEVICE, serial=serial, golden_inputs=GOLDEN, version=f"v{serial}"
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == serial)
    return manifest


def test_full_disk_is_retried_commands_are_obeyed_and_it_converges(
    small_disk, models, publisher, watcher, start_agent, retained, tmp_path
):
    agent = start_agent(data_dir=small_disk / "agent", disk_reserve_bytes=16384, **FAST_RETRY)
    serve(publisher, watcher, models.onnx_a, 1)
    left = serve(publisher, watcher, models.onnx_b, 2)
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=11, hidden=4096)
    manifest = publisher.manifest(
        big, device_id=DEVICE, serial=3, golden_inputs=GOLDEN, version="v3", chunk_size=4096
    )
    assert manifest.artifact.size > 100_000
    ballast = fill_disk(small_disk, leave=48 * 1024)  # the slot state still fits, not the model
    publisher.publish_desired(DEVICE, publisher.sign(manifest))

    retrying = retained(
        lambda s: (
            s.progress is not None and s.progress.phase == "retrying" and s.progress.attempts >= 2
        )
    )
    assert (retrying.status, retrying.progress.serial) == ("updating", 3)
    assert "No space left on device" in retrying.progress.last_error
    assert "bytes needed" in retrying.progress.last_error  # the figures
    assert retrying.last_outcome.serial == 2  # nothing final about serial 3
    error = watcher.wait_event(EventType.ERROR, where=lambda e: e.serial == 3)
    assert error.reason.startswith("local I/O error, retry 1 in")

    publisher.command_rollback(DEVICE, reason="while the disk is full")
    rolled = watcher.wait_event(EventType.ROLLED_BACK)
    assert rolled.serial == 2
    done = watcher.wait_event(EventType.COMMAND_DONE)
    assert done.figures["ok"] == 1.0
    state = retained(
        lambda s: s.last_outcome is not None and s.last_outcome.result == "rolled_back"
    )
    outcome = state.last_outcome
    assert (outcome.serial, outcome.from_serial, outcome.to_serial) == (2, 2, 1)
    assert outcome.sha256 == left.artifact.sha256
    assert state.active.serial == 1
    assert state.status == "updating"  # serial 3 is still in hand
    assert agent.current_model.info.serial == 1

    ballast.unlink()  # space returns: no restart needed
    converged = retained(
        lambda s: (
            s.last_outcome is not None
            and s.last_outcome.serial == 3
            and s.last_outcome.result == OutcomeResult.SWAPPED
        )
    )
    assert converged.status == "serving"
    assert converged.progress is None
    assert (converged.active.serial, converged.previous.serial) == (3, 1)
    assert agent.current_model.info.serial == 3
    assert agent.session.connects == 1
    assert json.loads((small_disk / "agent" / "slots.json").read_text())["last_serial"] == 3


def test_disk_filling_mid_download_ends_in_io_error_at_the_limit(
    small_disk, publisher, watcher, start_agent, retained, tmp_path
):
    data_dir = small_disk / "agent"
    start_agent(data_dir=data_dir, disk_reserve_bytes=0, io_retry_limit_s=1.0, **FAST_RETRY)
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=12, hidden=4096)
    manifest = publisher.manifest(
        big, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=4096
    )
    sha = manifest.artifact.sha256
    publisher.chunk_limit = 3  # the download starts, then waits
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    bitmap = data_dir / "downloads" / f"{sha}.bitmap"
    wait_until(lambda: bitmap.exists() and publisher.frames_sent == 3)
    fill_disk(small_disk)  # another program takes the rest of the disk
    publisher.chunk_limit = None  # the next chunk cannot be written: ENOSPC from the kernel

    final = retained(
        lambda s: s.last_outcome is not None and s.last_outcome.result == OutcomeResult.IO_ERROR
    )
    outcome = final.last_outcome
    assert (outcome.serial, outcome.sha256) == (1, sha)
    assert outcome.reason.startswith("local I/O error for 1s: ")
    assert "No space left on device" in outcome.reason
    assert (final.status, final.progress, final.last_serial) == ("idle", None, 1)
    progress = [s.progress for s in watcher.states() if s.progress is not None]
    retries = [p for p in progress if p.phase == "retrying"]
    assert retries
    assert re.match(r"storing chunk \d+ in ", retries[0].last_error)  # the kernel's ENOSPC
    assert retries[0].last_error.endswith("[Errno 28] No space left on device")
    assert [p.attempts for p in retries] == list(range(1, len(retries) + 1))
    assert not list((data_dir / "downloads").iterdir())  # the space it held is given back
