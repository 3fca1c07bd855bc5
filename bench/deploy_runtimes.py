"""The finalized model in every runtime it ships in: accuracy, size and latency, with and without weight sharing.

    .venv/bin/python bench/deploy_runtimes.py [runs/demo/final] [--out bench/results/deploy_runtimes.json]

For an export directory (default: the model `make demo` finalized) and the base it was pruned from, both in eager
torch fp32, onnxruntime fp32 and onnxruntime int8 (static quantization calibrated on 8 training batches): test accuracy
and file size of each; latency of all six timed interleaved in one process (warm-up, median of many rounds, one
thread) at batch 1 and batch 32, as ratios against the base in torch from the same run; a 1-epoch quantization-aware
fine-tune forced on (int8 accuracy after it); weight sharing at 4 to 8 bits per weight: file size and test
accuracy; and uniform 0.5 with channel counts rounded to 1, 8 and 16, its speedup in each runtime.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import autoprune
from autoprune.config import RUNTIMES
from autoprune.data import load_data
from autoprune.deploy.export import run_config
from autoprune.deploy.qat import quantization_aware_finetune
from autoprune.deploy.sharing import share_weights, shared_state_dict
from autoprune.measure.metrics import measure_latency
from autoprune.measure.runtimes import OrtModel, in_runtime, quantize_int8, to_onnx
from autoprune.pruning import Policy, checkpoint, discover, prune
from autoprune.searching.controller import base_checkpoint_path
from autoprune.searching.storage import RunDir
from autoprune.tasks.classification import ClassificationTask


def torch_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def round_to_study(base: torch.nn.Module, example: torch.Tensor, shape: tuple[int, ...],
                   repeats: int) -> dict[str, dict[str, float]]:
    """Uniform 0.5 (l1) with channel counts rounded to 1, 8 and 16, in each runtime: speedup against the base in
    the same runtime, all timed interleaved in one process (batch 1 and 32, one thread)."""
    models = {f"base {rt}": in_runtime(base, rt, shape) for rt in RUNTIMES}
    groups = discover(base, example)
    widths = {}
    for r in (1, 8, 16):
        pruned = prune(base, Policy({g.name: 0.5 for g in groups}, criterion="l1", round_to=r), example)
        widths[r] = sorted({m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)})
        models.update({f"round_to {r} {rt}": in_runtime(pruned, rt, shape) for rt in RUNTIMES})
    result: dict[str, dict[str, float]] = {}
    print("\nuniform 0.5 (l1), speedup against the base in the same runtime (one thread):\n")
    print("| round_to | conv widths | batch | " + " | ".join(RUNTIMES) + " |")
    print("| ---: | --- | ---: |" + " ---: |" * len(RUNTIMES))
    for batch in (1, 32):
        lat = measure_latency(models, shape, batch_size=batch, threads=1, warmup=10, repeats=repeats)
        for r in (1, 8, 16):
            speedups = {rt: lat[f"base {rt}"].median_ms / lat[f"round_to {r} {rt}"].median_ms for rt in RUNTIMES}
            result[f"round_to {r} batch {batch}"] = speedups
            print(f"| {r} | {widths[r]} | {batch} | " + " | ".join(f"{speedups[rt]:.2f}x" for rt in RUNTIMES) + " |")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", nargs="?", default="runs/demo/final")
    parser.add_argument("--out", default="bench/results/deploy_runtimes.json")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    export = Path(args.export)
    if not (export / "metrics.json").is_file():
        print(f"deploy_runtimes: '{export}' is not an export directory (run make demo first)", file=sys.stderr)
        return 2
    saved = json.loads((export / "metrics.json").read_text())
    final = autoprune.load(export)
    ckpt = checkpoint.load(export / "model.pt")
    base_path = base_checkpoint_path(run_config(RunDir(saved["run_dir"])))
    base = checkpoint.load(base_path).build(base_path)
    task = ClassificationTask(load_data(ckpt.data_spec))
    shape = ckpt.input_shape
    calibration = [x for x, _ in task.calibration(8, seed=0)]
    torch.set_num_threads(1)

    models: dict[str, torch.nn.Module] = {}
    rows: dict[str, dict[str, float]] = {}
    for who, model in (("base", base), ("final", final)):
        start = time.perf_counter()
        fp32 = to_onnx(model, shape)
        int8 = quantize_int8(fp32, calibration)
        print(f"{who}: exported and quantized in {time.perf_counter() - start:.1f} s", flush=True)
        runtimes = (("torch fp32", model, torch_bytes(model)), ("onnxruntime fp32", OrtModel(fp32, 1), len(fp32)),
                    ("onnxruntime int8", OrtModel(int8, 1), len(int8)))
        for runtime, runner, size in runtimes:
            models[f"{who} {runtime}"] = runner
            rows[f"{who} {runtime}"] = {"test_accuracy": task.evaluate(runner, "test"), "size_bytes": size}
    for batch in (1, 32):
        lat = measure_latency(models, shape, batch_size=batch, threads=1, warmup=10, repeats=args.repeats)
        reference = lat["base torch fp32"].median_ms
        for name, t in lat.items():
            rows[name][f"latency_ms_b{batch}"] = t.median_ms
            rows[name][f"iqr_ms_b{batch}"] = t.iqr_ms
            rows[name][f"speedup_b{batch}"] = reference / t.median_ms

    # quantization-aware fine-tuning forced on (export runs it only when int8 loses > 1 point on validation)
    start = time.perf_counter()
    tuned = quantization_aware_finetune(final, task, 1.0, calibration[0])
    qat_int8 = quantize_int8(to_onnx(tuned, shape), calibration)
    qat = {"epochs": 1.0, "seconds": time.perf_counter() - start, "size_bytes": len(qat_int8),
           "test_accuracy": task.evaluate(OrtModel(qat_int8, 1), "test"),
           "val_accuracy": task.evaluate(OrtModel(qat_int8, 1), "val"),
           "val_accuracy_ptq": task.evaluate(models["final onnxruntime int8"], "val"),
           "val_accuracy_fp32": task.evaluate(models["final onnxruntime fp32"], "val")}

    sharing = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bits in range(4, 9):
            shared = share_weights(final, bits)
            size = shared.save(Path(tmp) / f"{bits}.npz")
            rebuilt = autoprune.load(export)
            rebuilt.load_state_dict(shared_state_dict(Path(tmp) / f"{bits}.npz"))
            sharing[bits] = {"size_bytes": size, "packed_bytes": shared.packed_bytes,
                             "test_accuracy": task.evaluate(rebuilt, "test")}

    print(f"\n{export} ({saved['model']}, trial {saved['trial_id']}), base {base_path}; CPU, 1 thread, "
          f"{args.repeats} interleaved rounds, median\n")
    print("| model | runtime | test accuracy | size (bytes) | batch 1 (ms) | speedup | batch 32 (ms) | speedup |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        who, runtime = name.split(" ", 1)
        print(f"| {who} | {runtime} | {r['test_accuracy']:.4f} | {r['size_bytes']:,} | {r['latency_ms_b1']:.3f} | "
              f"{r['speedup_b1']:.2f}x | {r['latency_ms_b32']:.3f} | {r['speedup_b32']:.2f}x |")
    print(f"\nquantization-aware fine-tune of the final model, 1 epoch ({qat['seconds']:.0f} s): int8 test accuracy "
          f"{qat['test_accuracy']:.4f} (post-training {rows['final onnxruntime int8']['test_accuracy']:.4f}, fp32 "
          f"{rows['final onnxruntime fp32']['test_accuracy']:.4f}); validation {qat['val_accuracy']:.4f} "
          f"(post-training {qat['val_accuracy_ptq']:.4f}, fp32 {qat['val_accuracy_fp32']:.4f})")
    print("\n| weight sharing (final) | size (bytes) | before compression | test accuracy |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| none (model.pt state_dict) | {rows['final torch fp32']['size_bytes']:,} | - | "
          f"{rows['final torch fp32']['test_accuracy']:.4f} |")
    for bits, s in sharing.items():
        print(f"| {bits} bits ({2 ** bits} values per layer) | {s['size_bytes']:,} | {s['packed_bytes']:,} | "
              f"{s['test_accuracy']:.4f} |")
    rounding = round_to_study(base, ckpt.example_input, shape, args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"export": str(export), "base": str(base_path), "rows": rows,
                                          "weight_sharing": sharing, "qat": qat, "round_to": rounding,
                                          "repeats": args.repeats,
                                          "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
