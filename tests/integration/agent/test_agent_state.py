"""The retained state v2: ``seq`` increases across states and restarts, the last outcome is
published again after a restart, and a download shows its progress."""

from __future__ import annotations

from edgefleet.shared import EventType, OutcomeResult
from support import agent_models
from support.agent_harness import DEVICE, x_batch
from support.mqtt import wait_until

GOLDEN = [x_batch(1, seed=i) for i in range(2)]


def test_seq_increases_across_states_and_restarts(
    models, publisher, watcher, start_agent, retained, tmp_path
):
    data_dir = tmp_path / "agent-data"
    first = start_agent(data_dir=data_dir)
    for serial, model in ((1, models.onnx_a), (2, models.onnx_b)):
        manifest = publisher.manifest(model, device_id=DEVICE, serial=serial, golden_inputs=GOLDEN)
        publisher.publish_desired(DEVICE, publisher.sign(manifest))
        watcher.wait_event(EventType.SWAPPED, where=lambda e, s=serial: e.serial == s)
    first.stop()
    stopped = watcher.wait_state(lambda s: s.status == "offline")
    assert stopped.last_outcome is not None
    assert stopped.last_outcome.serial == 2
    run_one = [s.seq for s in watcher.states()]

    start_agent(data_dir=data_dir)
    again = retained(lambda s: s.status == "serving" and s.seq > stopped.seq)
    # published again on reconnect: the outcome survived the restart in slots.json
    assert again.last_outcome == stopped.last_outcome
    # the watcher has its own subscription: wait until it too has seen that state
    watcher.wait_state(lambda s: s.seq == again.seq)
    seqs = [s.seq for s in watcher.states()]
    assert None not in seqs  # no will was needed: every state came from the agent
    assert len(run_one) >= 5
    assert seqs == sorted(set(seqs))  # strictly increasing, in the order they arrived
    assert min(seqs[len(run_one) :]) > max(run_one)
    assert seqs[-1] == again.seq


def test_download_shows_progress_then_installing(
    publisher, watcher, start_agent, retained, tmp_path
):
    start_agent(progress_interval_s=0.05)
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=6, hidden=64)
    manifest = publisher.manifest(
        big, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=64
    )
    total = manifest.artifact.size
    publisher.chunk_limit = 5  # the download stalls after 5 chunks
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    stalled = retained(
        lambda s: (
            s.progress is not None
            and s.progress.phase == "downloading"
            and s.progress.done_bytes == 5 * 64
        )
    )
    assert stalled.status == "updating"
    assert stalled.updating_to.serial == 1
    assert (stalled.progress.serial, stalled.progress.sha256) == (1, manifest.artifact.sha256)
    assert stalled.progress.total_bytes == total
    assert 0 < stalled.progress.percent < 100
    publisher.chunk_limit = None
    done = retained(
        lambda s: s.last_outcome is not None and s.last_outcome.result == OutcomeResult.SWAPPED
    )
    assert done.progress is None
    assert done.updating_to is None
    progress = [s.progress for s in watcher.states() if s.progress is not None]
    assert any(p.phase == "downloading" and 0 < p.done_bytes < total for p in progress)
    installing = [p for p in progress if p.phase == "installing"]
    assert installing
    assert installing[0].done_bytes == total
    downloaded = [p.done_bytes for p in progress if p.phase == "downloading"]
    assert downloaded == sorted(downloaded)


def test_progress_is_published_at_most_every_interval(
    publisher, watcher, start_agent, retained, tmp_path
):
    start_agent(progress_interval_s=30.0)
    big = agent_models.linear_classifier(tmp_path / "big.onnx", seed=7, hidden=64)
    manifest = publisher.manifest(
        big, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=64
    )
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 1)
    wait_until(lambda: watcher.states()[-1].progress is None)
    phases = [s.progress.phase for s in watcher.states() if s.progress is not None]
    assert phases == ["downloading", "installing"]  # phase changes only: no byte counts
