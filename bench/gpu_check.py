"""GPU check: a short search with four trials sharing one GPU, then one finalize, on the embedded data.

    .venv/bin/python bench/gpu_check.py [--out runs/gpu-check] [--per-gpu 4] [--trials 4] [--epochs 1]

Prints the device every trial trained on, trials per hour, the GPU's utilisation while the search ran (sampled
by ``nvidia-smi`` each second), the CUDA latency of the base and of the finalized model (CUDA events after
warm-up, interleaved), and the finalized model's test accuracy. Exits 2 with one line where there is no CUDA
device. ``--per-gpu N`` runs N trials at once, each with ``resources.gpu: 1/N`` (the throughput bench runs 1, 2
and 4: bench/gpu_throughput.py).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class UtilisationSampler:
    """GPU utilisation (%) and memory (MiB) from ``nvidia-smi`` once a second, in a background thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def __enter__(self) -> "UtilisationSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,"
                                  "nounits", "--id=0"], capture_output=True, text=True, check=False).stdout.strip()
            try:
                util, memory = (float(v) for v in out.split(","))
            except ValueError:
                continue
            self.samples.append((util, memory))

    def report(self) -> str:
        if not self.available:
            return "n/a (nvidia-smi not found)"
        if not self.samples:
            return "n/a (no samples)"
        util = [u for u, _ in self.samples]
        return (f"mean {statistics.fmean(util):.0f} %, median {statistics.median(util):.0f} % over {len(util)} s; "
                f"memory up to {max(m for _, m in self.samples):.0f} MiB")


def gpu_search(out: Path, per_gpu: int, trials: int, epochs: float, extra: Sequence[str] = (),
               config_path: str | None = None) -> dict[str, Any]:
    """Run a search with ``per_gpu`` trials sharing GPU 0 (its base trained first, outside the clock); its rows,
    wall seconds and utilisation."""
    from autoprune.config import load_config
    from autoprune.searching.controller import build_task, classification_data, ensure_base, run_search
    from autoprune.searching.results import read_trials

    config = load_config(config_path, [f"trials={trials}", f"concurrency={per_gpu}", f"resources.gpu={1 / per_gpu:.4f}",
                                       "resources.cpu=1", f"finetune.epochs={epochs}", "searcher.name=random",
                                       "constraints=[]", *extra])
    shutil.rmtree(out, ignore_errors=True)
    data = classification_data(config)
    ensure_base(config, data, build_task(config, data), print)  # trained (on the GPU) before the clock starts
    start = time.perf_counter()
    with UtilisationSampler() as sampler:
        summary = run_search(config, out, echo=lambda m: print(f"  {m}", flush=True))
    wall = time.perf_counter() - start
    rows = read_trials(summary.run_dir).to_pylist()
    return {"rows": rows, "wall": wall, "utilisation": sampler.report(), "finished": summary.finished,
            "trials_per_hour": summary.finished / wall * 3600}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    p.add_argument("--per-gpu", type=int, default=4)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=float, default=1.0, help="each trial's fine-tune")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}): run it "
              f"on a GPU machine")
        return 2
    from autoprune.deploy.finalize import finalize

    out = Path(args.out)
    print(f"gpu-check: {torch.cuda.get_device_name(0)}, {args.trials} trials, {args.per_gpu} per GPU "
          f"(resources.gpu {1 / args.per_gpu:g})", flush=True)
    run = gpu_search(out / "search", args.per_gpu, args.trials, args.epochs, ["finetune.final_epochs=1"])
    devices = sorted({str(r.get("device")) for r in run["rows"] if r["status"] == "ok"})
    ok = [r for r in run["rows"] if r["status"] == "ok"]
    print(f"trials: {run['finished']} finished in {run['wall']:.0f} s on {', '.join(devices) or 'none'}: "
          f"{run['trials_per_hour']:.0f} trials per hour")
    print(f"GPU utilisation during the search: {run['utilisation']}")
    if ok:
        print(f"CUDA latency (batch 1): base {ok[0]['base_latency_ms']:.3f} ms, candidates "
              f"{min(r['latency_ms'] for r in ok):.3f}-{max(r['latency_ms'] for r in ok):.3f} ms")
    metrics = finalize(out / "search", pick="knee", epochs=args.epochs, out=out / "final")
    final = metrics["final"]
    print(f"finalized knee: test accuracy {metrics['test_accuracy']:.4f} (base {metrics['base']['test_accuracy']:.4f}), "
          f"{final['speedup']:.2f}x at {final['latency_ms']:.3f} ms on {metrics['latency']['device']}, "
          f"fine-tuned on {metrics['finetune']['device']}")
    bad = [d for d in devices if d != "cuda"]
    if bad or not ok:
        print(f"gpu-check: FAILED: trials trained on {', '.join(devices) or 'nothing'}, not cuda")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
