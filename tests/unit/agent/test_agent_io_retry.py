"""edgefleet.agent.io_retry: local I/O errors are retried with backoff until the time limit."""

from __future__ import annotations

import errno

import pytest

from edgefleet.agent.errors import StorageError, ValidationFailedError
from edgefleet.agent.io_retry import LocalIoRetry
from edgefleet.agent.settings import AgentSettings


@pytest.fixture
def settings(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("x")
    return AgentSettings(
        device_id="d",
        controller_key=key,
        data_dir=tmp_path,
        io_retry_min_s=1.0,
        io_retry_max_s=4.0,
        io_retry_limit_s=30.0,
    )


class FakeTime:
    """A clock that ``wait`` moves forward, so no test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def full(n: int) -> StorageError:
    return StorageError(f"storing chunk {n}", OSError(errno.ENOSPC, "No space left on device"))


def test_retries_until_it_succeeds(settings):
    time = FakeTime()
    retries: list[tuple[str, int]] = []
    outcomes = iter([full(0), PermissionError(13, "Permission denied"), None])

    def attempt() -> str:
        error = next(outcomes)
        if error is not None:
            raise error
        return "installed"

    retry = LocalIoRetry(
        settings,
        wait=time.wait,
        on_retry=lambda e, n, d: retries.append((str(e), n)),
        clock=time.clock,
    )
    assert retry.run(attempt) == "installed"
    assert [n for _, n in retries] == [1, 2]
    assert "No space left on device" in retries[0][0]
    assert all(0.5 <= w <= 4.0 for w in time.waits)


def test_gives_up_with_the_last_error_at_the_limit(settings):
    time = FakeTime()
    count = 0

    def attempt() -> None:
        nonlocal count
        count += 1
        raise full(count)

    retry = LocalIoRetry(settings, wait=time.wait, on_retry=lambda *a: None, clock=time.clock)
    with pytest.raises(StorageError, match=r"storing chunk \d+: \[Errno 28\]") as raised:
        retry.run(attempt)
    assert raised.value.errno == errno.ENOSPC
    assert time.now == pytest.approx(30.0)  # the last wait ends at the limit, then one more try
    assert count == len(time.waits) + 1
    assert max(time.waits) <= 4.0


def test_other_errors_are_not_retried(settings):
    time = FakeTime()

    def attempt() -> None:
        raise ValidationFailedError("golden output mismatch")

    retry = LocalIoRetry(settings, wait=time.wait, on_retry=lambda *a: None, clock=time.clock)
    with pytest.raises(ValidationFailedError):
        retry.run(attempt)
    assert time.waits == []
