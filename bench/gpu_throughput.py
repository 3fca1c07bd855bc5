"""GPU throughput: trials per hour with 1, 2 and 4 trials sharing one GPU, and a ResNet-56 search on full
Fashion-MNIST.

    .venv/bin/python bench/gpu_throughput.py [--per-gpu 1,2,4] [--trials 8] [--epochs 1] [--data-root DIR]
        [--resnet56-minutes 20] [--out runs/bench-gpu]

1. Sharing: for each N of ``--per-gpu``, the same ``--trials`` random policies of ResNet-20 on the embedded data
   (``searcher.name: random``, seed 0), N at a time with ``resources.gpu: 1/N``; trials per hour, GPU utilisation
   (``nvidia-smi``) and the spread of the base's CUDA latency as the trials timed it.
2. ResNet-56 (``search_spaces/resnet56_cifar10.yaml`` on Fashion-MNIST from ``$AUTOPRUNE_DATA``, base trained
   on the GPU first), 4 trials per GPU for ``--resnet56-minutes``: trials finished, trials per hour, the front.
Needs a CUDA machine (exits 2 with one line otherwise); results in ``OUT/gpu_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import ROOT, gpu_search  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-gpu", default="1,2,4")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--data-root", default=os.environ.get("AUTOPRUNE_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--resnet56-minutes", type=float, default=20.0)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-gpu"))
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_throughput: no CUDA device here (torch {torch.__version__}): run it on a GPU machine")
        return 2
    out = Path(args.out)
    results: dict[str, object] = {"gpu": torch.cuda.get_device_name(0), "sharing": []}
    for n in (int(v) for v in args.per_gpu.split(",")):
        run = gpu_search(out / f"share{n}", n, args.trials, args.epochs)
        base = [r["latency_raw_base_ms"] for r in run["rows"] if r.get("latency_raw_base_ms")]
        row = {"per_gpu": n, "finished": run["finished"], "seconds": round(run["wall"], 1),
               "trials_per_hour": round(run["trials_per_hour"], 1), "utilisation": run["utilisation"],
               "base_latency_spread": (max(base) - min(base)) / statistics.median(base) if base else None}
        results["sharing"].append(row)  # type: ignore[union-attr]
        print(json.dumps(row), flush=True)
    run = gpu_search(out / "resnet56", 4, 10_000, args.epochs,
                     ["data.dataset=fashionmnist", f"data.root={args.data_root}", "base.epochs=30",
                      f"time_budget_s={args.resnet56_minutes * 60}", "name=resnet56_fashionmnist"],
                     config_path=str(ROOT / "search_spaces" / "resnet56_cifar10.yaml"))
    results["resnet56"] = {"finished": run["finished"], "trials_per_hour": round(run["trials_per_hour"], 1),
                           "utilisation": run["utilisation"], "seconds": round(run["wall"], 1)}
    print(json.dumps(results["resnet56"]), flush=True)
    (out / "gpu_throughput.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
