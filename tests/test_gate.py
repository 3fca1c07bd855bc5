"""The measurement gate: training steps on a node pause while the latency meter times a model there."""
import fcntl
import threading
import time
import uuid

from autoprune.measure import gate
from autoprune.measure.gate import MeasurementGate


def run_in_thread(fn):
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def wait_until_held(probe: MeasurementGate, timeout: float = 10.0) -> None:
    """Return once another holder has the turnstile (a non-blocking exclusive lock on it fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fcntl.flock(probe._turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        fcntl.flock(probe._turnstile, fcntl.LOCK_UN)
        time.sleep(0.01)
    raise AssertionError("the measurement never took the turnstile")


def test_steps_wait_while_a_measurement_runs():
    name = f"t-{uuid.uuid4().hex}"
    meter, trial = MeasurementGate(name), MeasurementGate(name)  # two processes' worth of open files
    events = []
    with meter.measuring():
        trying = threading.Event()
        t = run_in_thread(lambda: (trying.set(), trial.step().__enter__(), events.append("step")))
        assert trying.wait(5)  # the thread runs and is about to take a step
        t.join(0.3)
        assert events == [] and t.is_alive()  # blocked for as long as the measurement runs
    t.join(5)
    assert events == ["step"]


def test_a_measurement_waits_for_running_steps_and_new_steps_queue_behind_it():
    name = f"t-{uuid.uuid4().hex}"
    meter, trial, other = MeasurementGate(name), MeasurementGate(name), MeasurementGate(name)
    events = []

    def measure():
        with meter.measuring():
            events.append("measure")

    step = trial.step()
    step.__enter__()
    m = run_in_thread(measure)
    wait_until_held(MeasurementGate(name))  # the measurement holds the turnstile, waiting for the gate
    assert events == []  # the running step finishes first
    trying = threading.Event()
    late = run_in_thread(lambda: (trying.set(), other.step().__enter__(), events.append("late step")))
    assert trying.wait(5)
    late.join(0.3)
    assert late.is_alive()  # queued behind the waiting measurement
    step.__exit__(None, None, None)
    m.join(5)
    late.join(5)
    assert events == ["measure", "late step"]  # the turnstile: no step slips in ahead of the waiting measurement


def test_no_gate_installed_is_a_no_op_and_install_switches_gates():
    gate.install(None)
    with gate.step():
        pass
    name, other = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    gate.install(name)
    first = gate._installed
    gate.install(name)
    assert gate._installed is first
    gate.install(other)
    assert gate._installed is not first and gate._installed.name == other
    gate.install(None)
    assert gate._installed is None
