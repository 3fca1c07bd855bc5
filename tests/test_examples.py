"""The examples run as a user runs them (shortened by their own options): the denoising task through the CLI, and
a model, Dataset and training loop of your own through ``autoprune.search``."""
import sys
from pathlib import Path

import pytest
from conftest import AUTOPRUNE, run_ok

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_denoising_example_trains_searches_and_finalizes(tmp_path):
    example = ROOT / "examples" / "denoising"
    weights = tmp_path / "weights.pt"
    trained = run_ok([sys.executable, example / "train_denoiser.py", "--out", weights, "--epochs", "1"], tmp_path,
                     (example,))
    assert "val PSNR" in trained and weights.is_file()
    searched = run_ok([*AUTOPRUNE, "search", example / "denoise.yaml", "--out", tmp_path / "search",
                       "--set", f"base.weights={weights}", "--set", "trials=3", "--set", "finetune.epochs=0.2",
                       "--set", "space.criteria=[l1, taylor]", "--set", "searcher.warm_start=2"], tmp_path, (example,))
    assert "3 trials finished" in searched and "psnr" in searched
    final = run_ok([*AUTOPRUNE, "finalize", tmp_path / "search", "--pick", "knee", "--epochs", "1",
                    "--out", tmp_path / "final"], tmp_path, (example,))
    assert "test psnr" in final and (tmp_path / "final" / "model.pt").is_file()


@pytest.mark.slow
def test_the_own_model_example_searches_exports_and_reloads(tmp_path, data_root):
    if not (data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST not found under {data_root}")
    out = run_ok([sys.executable, ROOT / "examples" / "own_model_mnist.py", "--data", data_root,
                  "--train-samples", "2000", "--trials", "3", "--epochs", "1", "--out", tmp_path / "run"], tmp_path)
    assert "3 trials, front of" in out
    line = next(line for line in out.splitlines() if line.startswith("exported trial"))
    reloaded, recorded = line.split("test accuracy ")[1].split(" reloaded (recorded ")
    # the reloaded export scores what the search recorded (export's own tolerance)
    assert abs(float(reloaded) - float(recorded.split(";")[0])) <= 1e-3
