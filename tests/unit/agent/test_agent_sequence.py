"""edgefleet.agent.sequence: seq increases within a run, across restarts, and past a lost file."""

from __future__ import annotations

import threading

from edgefleet.agent.sequence import COUNTER_BITS, StateSequence, clock_epoch

NOW = 1_800_000_000.0  # 2027-01-15


def test_seq_increases_within_and_across_runs(tmp_path):
    path = tmp_path / "state-epoch"
    first = StateSequence(path, clock=lambda: NOW)
    seqs = [first.next() for _ in range(5)]
    second = StateSequence(path, clock=lambda: NOW)
    assert second.epoch == first.epoch + 1
    later = [second.next() for _ in range(5)]
    assert seqs + later == sorted(set(seqs + later))
    assert later[0] >> COUNTER_BITS == second.epoch
    assert max(later) < 2**53  # exact in a JSON number


def test_a_lost_or_torn_epoch_file_still_moves_forward_with_the_clock(tmp_path):
    path = tmp_path / "state-epoch"
    before = StateSequence(path, clock=lambda: NOW).next()
    path.write_text("torn")
    after = StateSequence(path, clock=lambda: NOW + 3600).next()
    assert after > before
    path.unlink()
    assert StateSequence(path, clock=lambda: NOW + 7200).next() > after
    assert clock_epoch(0.0) == 0


def test_a_backward_clock_does_not_go_back(tmp_path):
    path = tmp_path / "state-epoch"
    high = StateSequence(path, clock=lambda: NOW + 10 * 3600).next()
    assert StateSequence(path, clock=lambda: NOW).next() > high


def test_an_unwritable_epoch_does_not_stop_the_agent(tmp_path):
    path = tmp_path / "missing-dir" / "state-epoch"
    sequence = StateSequence(path, clock=lambda: NOW)
    assert sequence.next() < sequence.next()


def test_threads_get_distinct_numbers(tmp_path):
    sequence = StateSequence(tmp_path / "e", durable=False, clock=lambda: NOW)
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(500):
            value = sequence.next()
            with lock:
                got.append(value)

    threads = [threading.Thread(target=take, name=f"seq-test-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 2000
