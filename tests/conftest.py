import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # toy_models:NAME for the user-factory tests
torch.set_num_threads(min(2, torch.get_num_threads()))

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


def calib_batches(shape, n=2, batch=8, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]
