"""The examples run as a user runs them (shortened by their own options): the denoising task through the CLI, and
a model, Dataset and training loop of your own through ``autoprune.search``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "autoprune.cli"]


def run(command, env, cwd):
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_denoising_example_trains_searches_and_finalizes(tmp_path):
    example = ROOT / "examples" / "denoising"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example), os.environ.get("PYTHONPATH", "")])}
    weights = tmp_path / "weights.pt"
    trained = run([sys.executable, str(example / "train_denoiser.py"), "--out", str(weights), "--epochs", "1"],
                  env, tmp_path)
    assert "val PSNR" in trained and weights.is_file()
    searched = run([*CLI, "search", str(example / "denoise.yaml"), "--out", str(tmp_path / "search"),
                    "--set", f"base.weights={weights}", "--set", "trials=3", "--set", "finetune.epochs=0.2",
                    "--set", "space.criteria=[l1, taylor]", "--set", "searcher.warm_start=2"], env, tmp_path)
    assert "3 trials finished" in searched and "psnr" in searched
    final = run([*CLI, "finalize", str(tmp_path / "search"), "--pick", "knee", "--epochs", "1",
                 "--out", str(tmp_path / "final")], env, tmp_path)
    assert "test psnr" in final and (tmp_path / "final" / "model.pt").is_file()


@pytest.mark.slow
def test_the_own_model_example_searches_exports_and_reloads(tmp_path, data_root):
    if not (data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST not found under {data_root}")
    out = run([sys.executable, str(ROOT / "examples" / "own_model_mnist.py"), "--data", str(data_root),
               "--train-samples", "2000", "--trials", "3", "--epochs", "1", "--out", str(tmp_path / "run")],
              dict(os.environ), tmp_path)
    assert "3 trials, front of" in out
    line = next(line for line in out.splitlines() if line.startswith("exported trial"))
    reloaded, recorded = line.split("test accuracy ")[1].split(" reloaded (recorded ")
    # the reloaded export scores what the search recorded (export's own tolerance)
    assert abs(float(reloaded) - float(recorded.split(";")[0])) <= 1e-3
