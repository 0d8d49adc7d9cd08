"""edgefleet.agent.progress: phases at once, byte counts at most every interval, retries kept."""

from __future__ import annotations

from edgefleet.agent.progress import ProgressTracker
from edgefleet.shared import ProgressPhase
from support.samples import make_manifest


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_download_progress_is_rate_limited():
    clock = Clock()
    tracker = ProgressTracker(2.0, clock)
    manifest = make_manifest(data=b"x" * 1000)
    begun = tracker.begin(manifest)
    assert (begun.phase, begun.done_bytes, begun.total_bytes) == ("downloading", 0, 1000)
    assert not tracker.downloaded(256)  # too soon after the last publish
    clock.now += 2.5
    assert tracker.downloaded(512)
    assert not tracker.downloaded(512)  # no news
    clock.now += 2.5
    assert not tracker.downloaded(512)
    assert tracker.current.done_bytes == 512
    installing = tracker.enter(ProgressPhase.INSTALLING, done_bytes=1000)
    assert (installing.phase, installing.done_bytes) == ("installing", 1000)
    assert not tracker.downloaded(1000)  # not downloading any more
    tracker.clear()
    assert tracker.current is None
    assert tracker.enter(ProgressPhase.INSTALLING) is None


def test_retries_count_keep_the_error_and_resume_the_phase():
    tracker = ProgressTracker(2.0, Clock())
    tracker.begin(make_manifest())
    tracker.downloaded(256)
    first = tracker.retrying("[Errno 28] No space left on device " + "x" * 1000)
    assert (first.phase, first.attempts, len(first.last_error)) == ("retrying", 1, 512)
    assert tracker.retrying("again").attempts == 2
    resumed = tracker.resume()
    assert (resumed.phase, resumed.attempts, resumed.last_error) == ("downloading", 2, "again")
    assert resumed.done_bytes == 256
