import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # toy_models:NAME for the user-factory tests
torch.set_num_threads(min(2, torch.get_num_threads()))
# reference latencies and sensitivity curves are shared across searches on a machine ($AUTOPRUNE_CACHE_DIR): a test
# session keeps its own (for module-scoped fixtures), and each test a fresh one (fresh_cache below)
os.environ["AUTOPRUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="autoprune-test-cache-")

DATA_ROOT = Path(os.environ.get("AUTOPRUNE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real data not found under {DATA_ROOT} (set AUTOPRUNE_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def embedded():
    from autoprune.data import DataSpec, load_data

    return load_data(DataSpec())


@pytest.fixture
def ray_local():
    """The local Ray instance searches start (or the one running)."""
    from autoprune.searching.tuning import init_ray

    init_ray(2)


def calib_batches(shape, n=2, batch=8, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "resnet20_fashionmnist.yaml"


def stop_search_midway(run_dir: Path, sets: list[str], after_rows: int, sig: int) -> None:
    """Run ``autoprune search`` in a subprocess and send ``sig`` to its process group once
    ``after_rows`` trials are in ``trials.parquet``."""
    from autoprune.searching.results import read_trials

    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", str(DEFAULT_SPACE), *args,
                             "--out", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "trials.parquet").exists() and read_trials(run_dir).num_rows >= after_rows:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    proc.wait(timeout=120)


def submit_and_wait(out: Path, sets: list[str], address: str = "http://127.0.0.1:8265") -> tuple[str, str]:
    """``autoprune submit`` the default space as a Ray Job to a ``cluster/local.sh`` cluster, wait for it to end
    (400 s at most); return its final status and its logs."""
    root = DEFAULT_SPACE.parents[1]
    autoprune = [sys.executable, "-m", "autoprune.cli"]
    args = [a for s in sets for a in ("--set", s)]
    job_id, sub = None, None
    for _ in range(10):  # the job server needs a few seconds after the cluster starts
        sub = subprocess.run([*autoprune, "submit", str(DEFAULT_SPACE), "--address", address, "--working-dir",
                              str(root), "--out", str(out), *args], capture_output=True, text=True, cwd=root)
        if sub.returncode == 0:
            job_id = sub.stdout.strip().splitlines()[-1]
            break
        time.sleep(3)
    assert job_id, sub.stderr if sub else "not submitted"
    status, deadline = "", time.time() + 400
    while time.time() < deadline:
        status = subprocess.run([*autoprune, "status", job_id, "--address", address],
                                capture_output=True, text=True).stdout.strip()
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    logs = subprocess.run([*autoprune, "logs", job_id, "--address", address], capture_output=True, text=True).stdout
    return status, logs


AUTOPRUNE = [sys.executable, "-m", "autoprune.cli"]


def run_ok(command: list, cwd: Path, paths: tuple = ()) -> str:
    """Run ``command`` (e.g. ``[*AUTOPRUNE, "search", ...]``) as a user would, ``paths`` ahead on PYTHONPATH (their
    modules); its stdout, once it exited 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@torch.library.custom_op("autoprune_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Mystery(torch.nn.Module):
    """A model with an operator that has no ONNX translation."""

    def __init__(self, in_channels=1, classes=10):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(in_channels, 4, 3), torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.head(mystery(self.conv(x)).mean((2, 3)))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path_factory, monkeypatch):
    """Each test its own cache directory: what a test measures or computes does not depend on the tests before it.
    Subprocesses inherit it; the latency actor gets it from the search that starts it (``ReferenceStore.default``).
    Module-scoped fixtures run before it and share the session's directory (set above); so do Ray workers started
    earlier in the session, for what they read from the environment themselves."""
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session", autouse=True)
def no_gate_files_left_behind():
    """The measurement gates' lock files this session creates (``autoprune/measure/gate.py``) are removed at its end:
    a later session never finds a leftover one."""
    gates = Path(tempfile.gettempdir()) / "autoprune-gates"
    before = set(gates.glob("*")) if gates.is_dir() else set()
    yield
    for path in (set(gates.glob("*")) if gates.is_dir() else set()) - before:
        path.unlink(missing_ok=True)
