"""A crash after a download finished never costs a second download: the agent finds the file
the reassembler renamed into ``downloads/`` (with or without its bitmap still there), or the
artifact the install moved into ``artifacts/`` before ``slots.json`` named it.

The data dir is left exactly as each crash leaves it, with the real Reassembler and the real
install steps, then the agent restarts and receives the desired state again.
"""

from __future__ import annotations

import json
import os

import pytest

from edgefleet.shared import EventType, OutcomeResult, Reassembler
from support.agent_harness import DEVICE, x_batch

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def served_then_stopped(models, publisher, watcher, start_agent, data_dir):
    """Serial 1 (model A) installed by a real agent, which then stops."""
    agent = start_agent(data_dir=data_dir)
    first = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, http_source=True
    )
    publisher.publish_desired(DEVICE, publisher.sign(first))
    watcher.wait_event(EventType.SWAPPED)
    agent.stop()


def second_manifest(models, publisher):
    return publisher.manifest(
        models.onnx_b, device_id=DEVICE, serial=2, golden_inputs=GOLDEN, http_source=True
    )


def assemble(manifest, data_dir) -> Reassembler:
    """The agent's reassembler for ``manifest``, as its downloader opens it."""
    artifact = manifest.artifact
    reassembler = Reassembler(
        data_dir / "downloads" / artifact.sha256,
        sha256=artifact.sha256,
        size=artifact.size,
        chunk_size=artifact.chunk_size,
        chunk_sha256=artifact.chunk_sha256,
    )
    return reassembler


def fill(reassembler: Reassembler, data: bytes) -> None:
    for index in reassembler.missing():
        start = index * reassembler.chunk_size
        reassembler.accept(index, data[start : start + reassembler.chunk_size])


def restart_and_converge(publisher, watcher, start_agent, retained, data_dir, manifest):
    publisher.requests.clear()
    publisher.http_ranges.clear()
    agent = start_agent(data_dir=data_dir)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(
        lambda s: (
            s.last_outcome is not None
            and s.last_outcome.serial == 2
            and s.last_outcome.result == OutcomeResult.SWAPPED
        )
    )
    assert state.active.sha256 == manifest.artifact.sha256
    assert agent.current_model.info.serial == 2
    assert publisher.requests == []  # no chunk request
    assert publisher.http_ranges == []  # no HTTP request
    started = [e for e in watcher.events() if e.type == EventType.DOWNLOAD_STARTED]
    assert [e.serial for e in started] == [1]  # only the first run's download
    assert sorted(p.name for p in (data_dir / "downloads").iterdir()) == []
    slots = json.loads((data_dir / "slots.json").read_text())
    assert slots["active"]["manifest"]["serial"] == 2
    return agent


@pytest.mark.parametrize("crash", ["after_finalize", "between_rename_and_bitmap_removal"])
def test_finished_download_is_installed_after_a_crash(
    crash, models, publisher, watcher, start_agent, retained, tmp_path
):
    data_dir = tmp_path / "agent-data"
    served_then_stopped(models, publisher, watcher, start_agent, data_dir)
    manifest = second_manifest(models, publisher)
    reassembler = assemble(manifest, data_dir)
    fill(reassembler, models.onnx_b.path.read_bytes())
    if crash == "after_finalize":
        reassembler.finalize()  # the file is complete; the install never ran
    else:  # finalize renamed the partial file, then the process died
        os.replace(reassembler.partial, reassembler.dest)
        assert reassembler.bitmap_path.exists()
    restart_and_converge(publisher, watcher, start_agent, retained, data_dir, manifest)


def test_installed_artifact_without_slot_state_is_used_after_a_crash(
    models, publisher, watcher, start_agent, retained, tmp_path
):
    data_dir = tmp_path / "agent-data"
    served_then_stopped(models, publisher, watcher, start_agent, data_dir)
    manifest = second_manifest(models, publisher)
    reassembler = assemble(manifest, data_dir)
    fill(reassembler, models.onnx_b.path.read_bytes())
    # SlotStore.install: the rename into artifacts/ happened, the slots.json write did not
    os.replace(reassembler.finalize(), data_dir / "artifacts" / manifest.artifact.sha256)
    before = json.loads((data_dir / "slots.json").read_text())
    assert before["active"]["manifest"]["serial"] == 1
    restart_and_converge(publisher, watcher, start_agent, retained, data_dir, manifest)


def test_a_corrupt_finished_download_is_fetched_again(
    models, publisher, watcher, start_agent, retained, tmp_path
):
    data_dir = tmp_path / "agent-data"
    agent = start_agent(data_dir=data_dir)
    agent.stop()
    manifest = second_manifest(models, publisher)
    bad = bytearray(models.onnx_b.path.read_bytes())
    bad[3] ^= 0xFF
    (data_dir / "downloads" / manifest.artifact.sha256).write_bytes(bytes(bad))
    start_agent(data_dir=data_dir)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    retained(lambda s: s.last_outcome is not None and s.last_outcome.result == "swapped")
    assert sorted(set(publisher.requested_indices(manifest.artifact.sha256))) == list(
        range(manifest.artifact.chunk_count)
    )
