"""Model coverage: every torchvision classifier through discover, 30 % pruning of every group and a forward pass.

    python bench/coverage.py [--ratio 0.3] [--criterion l1] [--size 64] [--timeout 120] [--only NAME ...]

Each model (torchvision.models.list_models(module=torchvision.models), random init, 10 classes) runs in
its own subprocess with a time limit: build it, count params and MACs, ``autoprune.discover`` its
groups at a small input (``--size`` px, or the smallest input the model accepts), prune every group
by ``--ratio`` with ``autoprune.prune``, run a forward pass and count again. Prints a Markdown table:
model, input, groups, params before / after, MACs after / before, and ``pass`` or the one-line reason
(an AutopruneError's message, another exception's first line, or the time limit).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

# smallest input some models accept (inception_v3's stem; MaxViT's 7x7 window partitions at every stage)
MIN_SIZE = {"inception_v3": 75, "maxvit_t": 224}


def model_kwargs(name: str, size: int) -> dict[str, Any]:
    """Constructor arguments a model needs at this input size (ViTs fix theirs), without auxiliary heads."""
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    if name.startswith("vit_"):
        return {"image_size": size}
    return {}


def input_size(name: str, size: int) -> int:
    """``size``, raised to the model's minimum; for a ViT, rounded up to a multiple of its patch size."""
    size = max(size, MIN_SIZE.get(name, 0))
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        size = -(-size // patch) * patch
    return size


def run_one(name: str, size: int, ratio: float, criterion: str) -> dict[str, Any]:
    """Prune one model in this process and describe the outcome."""
    import torch

    from autoprune import AutopruneError, Policy, discover, prune
    from autoprune.measure.metrics import count_macs, count_params
    from autoprune.models import ModelSpec, build_model

    torch.manual_seed(0)
    size = input_size(name, size)
    row: dict[str, Any] = {"model": name, "size": size}
    shape = (3, size, size)
    try:
        model = build_model(ModelSpec(f"torchvision:{name}", 10, 3, model_kwargs(name, size))).eval()
        row.update(params_before=count_params(model), macs_before=count_macs(model, shape))
        x = torch.zeros(1, *shape)
        groups = discover(model, x)
        row["groups"] = len(groups)
        pruned = prune(model, Policy.uniform(groups, ratio, criterion=criterion), x)
        with torch.no_grad():
            out = pruned(torch.randn(2, *shape))
        if tuple(out.shape) != (2, 10):
            raise AutopruneError(f"pruned model gives outputs of shape {tuple(out.shape)}, not (2, 10)")
        row.update(params_after=count_params(pruned), macs_after=count_macs(pruned, shape), result="pass")
    except AutopruneError as e:
        row["result"] = str(e)
    except Exception as e:  # noqa: BLE001 (report whatever breaks, in one line)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row["result"] = f"{type(e).__name__}: {first}"
    return row


def run_isolated(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``run_one`` in a subprocess with ``args.timeout`` seconds; a crash or a timeout is the result."""
    cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size), "--ratio", str(args.ratio),
           "--criterion", args.criterion]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        row = {"model": name, "size": input_size(name, args.size), "result": f"timed out after {args.timeout} s"}
    else:
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if lines:
            row = json.loads(lines[-1])
        else:
            tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            row = {"model": name, "size": input_size(name, args.size), "result": f"crashed: {tail}"}
    row["seconds"] = time.perf_counter() - start
    return row


def fmt_row(r: dict[str, Any]) -> str:
    def millions(key: str) -> str:
        return f"{r[key] / 1e6:.2f}M" if key in r else "-"

    macs = f"{r['macs_after'] / r['macs_before']:.2f}" if "macs_after" in r else "-"
    result = str(r["result"]).replace("|", "\\|")
    return (f"| {r['model']} | {r['size']} | {r.get('groups', '-')} | {millions('params_before')} | "
            f"{millions('params_after')} | {macs} | {result} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--criterion", default="l1")
    p.add_argument("--size", type=int, default=64, help="input size in px (raised to a model's minimum)")
    p.add_argument("--timeout", type=int, default=120, help="seconds per model")
    p.add_argument("--only", nargs="*", help="these models only")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model here, print its row as JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.ratio, args.criterion)))
        return

    import torchvision

    names = args.only or torchvision.models.list_models(module=torchvision.models)
    print("| model | input px | groups | params before | params after | MACs after / before | result |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = []
    for name in names:
        rows.append(run_isolated(name, args))
        print(fmt_row(rows[-1]), flush=True)
    passed = sum(r["result"] == "pass" for r in rows)
    print(f"\n{passed} of {len(rows)} pass ({args.ratio:.0%} of every group, criterion {args.criterion}, "
          f"{time.strftime('%Y-%m-%d')}, {sum(r['seconds'] for r in rows) / 60:.1f} minutes)")


if __name__ == "__main__":
    main()
