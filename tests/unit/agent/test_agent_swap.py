"""edgefleet.agent.swap: requests finish on the model they started with; the old runtime is
released after its last request, exactly once, by the thread that swapped (never by a serving
thread, unless a request outlasts the swap's wait). Real onnxruntime sessions throughout."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgefleet.agent.errors import NoModelError
from edgefleet.agent.runtimes.onnx import OnnxRuntimeModel
from edgefleet.agent.swap import ActiveModel, LoadedModel
from edgefleet.shared import SlotInfo

SHA = "0" * 64


class CountingClose(OnnxRuntimeModel):
    """A real session that counts how often, and on which thread, it was closed."""

    closes = 0
    closed_on: str | None = None

    def close(self) -> None:
        self.closes += 1
        self.closed_on = threading.current_thread().name
        super().close()


def loaded(model, version: str) -> LoadedModel:
    info = SlotInfo(model_id="m", version=version, serial=1, sha256=SHA, target="onnx-fp32")
    return LoadedModel(info, model.signature, CountingClose(model.path))


def test_no_model():
    with pytest.raises(NoModelError):
        ActiveModel().acquire()


def test_in_flight_request_keeps_its_session_across_a_swap(unit_models):
    # the request outlasts the swap's wait (it is held on this very thread), so its release
    # closes the old runtime
    active = ActiveModel(drain_s=0.05)
    old = loaded(unit_models.a, "a")
    active.swap(old)
    in_flight = active.acquire()  # a request that started before the swap
    new = loaded(unit_models.b, "b")
    active.swap(new)
    assert active.current is new
    x = {"x": np.ones((1, 4), np.float32)}
    # the old session still runs, and answers as model a
    np.testing.assert_allclose(
        in_flight.runtime.run(x)["logits"], unit_models.a.reference(x)["logits"], rtol=1e-5
    )
    assert old.runtime.closes == 0
    with active.using() as m:
        assert m is new
    active.release(in_flight)
    assert old.runtime.closes == 1
    assert new.runtime.closes == 0


def test_swap_waits_for_requests_in_flight_and_closes_on_its_own_thread(unit_models):
    active = ActiveModel()
    old = loaded(unit_models.a, "a")
    active.swap(old)
    started, finish = threading.Event(), threading.Event()
    answers: list[np.ndarray] = []
    x = {"x": np.ones((1, 4), np.float32)}

    def request() -> None:
        model = active.acquire()
        started.set()
        finish.wait(10)
        answers.append(model.runtime.run(x)["logits"])  # still open: the swap is waiting
        active.release(model)

    serving = threading.Thread(target=request, name="serving-thread")
    serving.start()
    assert started.wait(10)
    threading.Timer(0.2, finish.set).start()
    active.swap(loaded(unit_models.b, "b"))  # returns once the request released its model
    serving.join(10)
    np.testing.assert_allclose(answers[0], unit_models.a.reference(x)["logits"], rtol=1e-5)
    assert old.runtime.closes == 1
    assert old.runtime.closed_on == threading.current_thread().name  # not "serving-thread"


def test_idle_old_model_is_released_at_once(unit_models):
    active = ActiveModel()
    old = loaded(unit_models.a, "a")
    active.swap(old)
    active.swap(loaded(unit_models.b, "b"))
    assert old.runtime.closes == 1


def test_many_threads_many_swaps_each_runtime_closed_once(unit_models):
    active = ActiveModel()
    models = [loaded(unit_models.a if i % 2 else unit_models.b, str(i)) for i in range(20)]
    active.swap(models[0])
    stop = threading.Event()
    errors: list[BaseException] = []
    x = {"x": np.ones((2, 4), np.float32)}

    def load() -> None:
        while not stop.is_set():
            try:
                with active.using() as m:
                    m.runtime.run(x)
            except BaseException as e:  # noqa: BLE001 - any failure fails the test
                errors.append(e)

    threads = [threading.Thread(target=load, name=f"swap-load-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for m in models[1:]:
        active.swap(m)
    stop.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert [m.runtime.closes for m in models[:-1]] == [1] * 19
    assert models[-1].runtime.closes == 0
    assert all(m.refs == 0 for m in models)
    swapper = threading.current_thread().name
    assert {m.runtime.closed_on for m in models[:-1]} == {swapper}  # no request closed one
