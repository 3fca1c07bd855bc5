"""The deployable files beside ``model.pt``: ``model.onnx``, ``model.int8.onnx``, ``model.shared.npz``.

``write_deployables`` writes each one it can and reports what it measured: the ONNX export checked in onnxruntime
against torch (largest absolute output difference, at most ``ONNX_TOLERANCE``), int8 quantized by onnxruntime and
calibrated on training batches (with a short quantization-aware fine-tune when it loses more than
``int8_max_drop`` on the validation split), weight sharing on request, and the latency of the model and of the
base in torch, onnxruntime fp32 and int8, timed interleaved in one process. A file that cannot be made is
reported (in ``metrics.json``, the model card and one warning line) and the others are still written.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.config import SearchConfig, deploy_problem
from autoprune.errors import AutopruneError
from autoprune.measure.metrics import measure_latency
from autoprune.measure.runtimes import OPSET, OnnxExportError, OrtModel, quantize_int8, random_calibration, to_onnx
from autoprune.measure.spec import LatencySpec
from autoprune.tasks.base import Task

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
ONNX_TOLERANCE = 1e-4  # fp32 onnxruntime vs torch: largest absolute output difference allowed
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DeployOptions:
    """What ``export`` and ``finalize`` write beside the PyTorch files (config keys ``deploy.*``)."""

    onnx: bool = True                 # model.onnx (int8 needs it)
    int8: bool = True                 # model.int8.onnx
    share_bits: int | None = None     # model.shared.npz with 2**bits shared values per layer (4 to 8); None: none
    qat_epochs: float = 1.0           # quantization-aware fine-tune when int8 loses more than int8_max_drop; 0: never
    int8_max_drop: float = 0.01       # of the metric, on the validation split (1 point of accuracy)
    calibration_batches: int = 8      # training batches that calibrate int8 activation ranges

    @classmethod
    def from_config(cls, config: SearchConfig) -> "DeployOptions":
        return cls(**{k: config[f"deploy.{k}"] for k in asdict(cls())})

    def __post_init__(self) -> None:
        problem = deploy_problem(asdict(self))
        if problem:
            raise AutopruneError(f"deploy options: {problem}")


def _problem(e: BaseException) -> str:
    if isinstance(e, AutopruneError):
        return str(e)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}"


def max_abs_difference(model: nn.Module, onnx_model: bytes, input_shape: tuple[int, ...]) -> float:
    """The largest absolute difference between ``model``'s outputs and onnxruntime's, on seeded inputs of batch 1
    and 3 (the batch dimension is dynamic)."""
    generator = torch.Generator().manual_seed(0)
    runner, worst = OrtModel(onnx_model), 0.0
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, *input_shape, generator=generator)
            worst = max(worst, float((model(x) - runner(x)).abs().max()))
    return worst


def _loss(task: Task, fp32: float, other: float) -> float:
    """How much worse ``other`` is than ``fp32`` by the task's metric (negative: better)."""
    return fp32 - other if task.metric.mode == "max" else other - fp32


def write_deployables(out: Path, model: nn.Module, base: nn.Module, task: Task, spec: LatencySpec,
                      options: DeployOptions, test_metric: float, size_bytes: int, echo: Echo) -> dict[str, Any]:
    """Write the deployable files into ``out`` and return the report for ``metrics.json`` (keys ``onnx``,
    ``int8``, ``weight_sharing``, ``runtimes``; a file that could not be made has ``{"error": ...}``). ``base``
    is the unpruned architecture: only its structure matters (latency)."""
    model = copy.deepcopy(model).cpu().eval()
    name, shape, threads = task.metric.name, spec.input_shape, spec.threads
    report: dict[str, Any] = {}
    runners: dict[str, nn.Module] = {"torch": model}

    def failed(key: str, file: str, e: BaseException) -> None:
        report[key] = {"error": _problem(e)}
        echo(f"warning: {file} not written: {_problem(e)}")

    fp32 = None
    if options.onnx:
        try:
            fp32 = to_onnx(model, shape)
            diff = max_abs_difference(model, fp32, shape)
            if diff > ONNX_TOLERANCE:
                raise OnnxExportError(f"onnxruntime's outputs differ from torch's by up to {diff:.2e} "
                                      f"(more than {ONNX_TOLERANCE:g})")
            (out / ONNX_FILE).write_bytes(fp32)
        except Exception as e:  # reported, and the other files are still written
            fp32 = None
            failed("onnx", ONNX_FILE, e)
    if fp32 is not None:
        runners["onnxruntime"] = OrtModel(fp32, threads)
        report["onnx"] = {"file": ONNX_FILE, "max_abs_diff": diff, "size_bytes": len(fp32), "opset": OPSET}
        try:  # a task's evaluate may need more of the model than calls (its parameters, say)
            report["onnx"][f"test_{name}"] = task.evaluate(runners["onnxruntime"], "test")
        except Exception as e:
            report["onnx"].update({f"test_{name}": None, "evaluate_error": _problem(e)})
            echo(f"warning: {ONNX_FILE} written, but the task's evaluate failed on it in onnxruntime (so int8, which "
                 f"must be checked, is not written): {_problem(e)}")
    if options.int8 and (fp32 is None or "evaluate_error" in report["onnx"]):
        report["int8"] = {"error": "it quantizes a checked model.onnx, which " + (
            "was not written" if fp32 is None else "the task's evaluate could not run")}
    elif options.int8 and fp32 is not None:
        try:
            report["int8"] = _write_int8(out, model, fp32, task, spec, options, echo, runners)
        except Exception as e:  # the fp32 files stay as written
            failed("int8", INT8_FILE, e)
    if options.share_bits is not None:
        try:
            report["weight_sharing"] = _write_shared(out, model, task, options.share_bits)
        except Exception as e:
            from autoprune.deploy.sharing import SHARED_FILE

            failed("weight_sharing", SHARED_FILE, e)
    report["runtimes"] = _runtime_table(runners, base, task, fp32 is not None, spec, report, test_metric, size_bytes)
    return report


def _write_int8(out: Path, model: nn.Module, fp32: bytes, task: Task, spec: LatencySpec, options: DeployOptions,
                echo: Echo, runners: dict[str, nn.Module]) -> dict[str, Any]:
    """Quantize, check on the validation split, recover with QAT if it lost too much, write ``INT8_FILE``."""
    name = task.metric.name
    calibration = [x for x, _ in task.calibration(options.calibration_batches, seed=0)]
    int8 = quantize_int8(fp32, calibration)
    val_fp32 = task.evaluate(runners["onnxruntime"], "val")
    val_int8 = task.evaluate(OrtModel(int8), "val")
    result: dict[str, Any] = {"file": INT8_FILE, "calibration_batches": len(calibration), f"val_{name}_fp32": val_fp32,
                              f"val_{name}_ptq": val_int8, "qat": None}
    lost = _loss(task, val_fp32, val_int8)
    if lost > options.int8_max_drop and options.qat_epochs > 0:
        echo(f"int8 loses {lost:.4f} {name} on the validation split (more than {options.int8_max_drop:g}): "
             f"quantization-aware fine-tune for {options.qat_epochs:g} epoch(s)")
        try:
            result["qat"], recovered = _recover(model, task, spec, options, calibration, val_int8)
        except Exception as e:  # the post-training int8 model stands
            result["qat"], recovered = {"epochs": options.qat_epochs, "error": _problem(e)}, None
            echo(f"warning: quantization-aware fine-tuning failed, post-training int8 kept: {_problem(e)}")
        if recovered is not None:
            int8 = recovered
    (out / INT8_FILE).write_bytes(int8)
    runners["int8"] = OrtModel(int8, spec.threads)
    result.update({"size_bytes": len(int8), f"test_{name}": task.evaluate(runners["int8"], "test"),
                   "method": "onnxruntime static quantization (QDQ; int8 weights per channel, uint8 activations)"
                             + (" after quantization-aware fine-tuning" if (result["qat"] or {}).get("kept") else "")})
    return result


def _recover(model: nn.Module, task: Task, spec: LatencySpec, options: DeployOptions,
             calibration: list[torch.Tensor], val_ptq: float) -> tuple[dict[str, Any], bytes | None]:
    """Quantization-aware fine-tuning; its report, and its int8 model when it beats post-training quantization."""
    from autoprune.deploy.qat import quantization_aware_finetune

    name = task.metric.name
    tuned = quantization_aware_finetune(model, task, options.qat_epochs, calibration[0])
    int8 = quantize_int8(to_onnx(tuned, spec.input_shape), calibration)
    val_qat = task.evaluate(OrtModel(int8), "val")
    kept = _loss(task, val_ptq, val_qat) < 0  # QAT's int8 is better than post-training int8
    return ({"epochs": options.qat_epochs, f"val_{name}": val_qat, "kept": kept}, int8 if kept else None)


def _write_shared(out: Path, model: nn.Module, task: Task, bits: int) -> dict[str, Any]:
    from autoprune.deploy.sharing import SHARED_FILE, share_weights

    shared = share_weights(model, bits)
    size = shared.save(out / SHARED_FILE)
    rebuilt = with_shared_weights(out, copy.deepcopy(model))  # as autoprune.load(DIR, shared=True) reads it
    return {"file": SHARED_FILE, "bits": bits, "size_bytes": size, "packed_bytes": shared.packed_bytes,
            f"test_{task.metric.name}": task.evaluate(rebuilt, "test")}


def _runtime_table(runners: dict[str, nn.Module], base: nn.Module, task: Task, exported: bool, spec: LatencySpec,
                   report: dict[str, Any], test_metric: float, size_bytes: int) -> dict[str, Any]:
    """The model and the base in every runtime that worked, timed interleaved in one process on the CPU."""
    name, shape = task.metric.name, spec.input_shape
    models = {f"model {k}": v for k, v in runners.items()}
    models["base torch"] = copy.deepcopy(base).cpu().eval()
    base_error = None
    if exported:
        try:
            base_fp32 = to_onnx(models["base torch"], shape)
            models["base onnxruntime"] = OrtModel(base_fp32, spec.threads)
            if "int8" in runners:  # quantized for its speed only, which the ranges do not change
                models["base int8"] = OrtModel(quantize_int8(base_fp32, random_calibration(shape)), spec.threads)
        except Exception as e:  # the base then has its torch figure only; the card says why
            base_error = _problem(e)
    timing = replace(spec, device="cpu")
    lat = measure_latency(models, shape, batch_size=timing.batch_size, threads=timing.threads, device="cpu",
                          warmup=timing.warmup, repeats=max(timing.repeats, 50))
    base_torch = lat["base torch"].median_ms
    table: dict[str, Any] = {}
    for runtime in runners:
        here = lat[f"model {runtime}"].median_ms
        base_here = lat[f"base {runtime}"].median_ms if f"base {runtime}" in lat else None
        written = report.get({"onnxruntime": "onnx"}.get(runtime, runtime), {})  # torch: the recorded figures
        size = size_bytes if runtime == "torch" else written["size_bytes"]
        metric = test_metric if runtime == "torch" else written[f"test_{name}"]
        table[runtime] = {"latency_ms": here, "latency_iqr_ms": lat[f"model {runtime}"].iqr_ms,
                          "base_latency_ms": base_here, "speedup": base_here / here if base_here else None,
                          "speedup_vs_base_torch": base_torch / here, "size_bytes": size, f"test_{name}": metric}
    table["timing"] = {"batch_size": timing.batch_size, "threads": timing.threads, "device": "cpu",
                       "repeats": lat["base torch"].repeats, "base_error": base_error}
    return table


def deploy_card(report: dict[str, Any], metric: str) -> str:
    """The model card's section on the deployable files."""
    rows = ["| runtime | file | size (bytes) | test " + metric + " | latency (ms) | base latency (ms) | speedup | "
            "vs base in torch |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    files = {"torch": "model.pt / model.pt2", "onnxruntime": ONNX_FILE, "int8": INT8_FILE}
    runtimes = report["runtimes"]
    for runtime, r in runtimes.items():
        if runtime == "timing":
            continue
        base = f"{r['base_latency_ms']:.3f}" if r["base_latency_ms"] else "-"
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        score = f"{r[f'test_{metric}']:.4f}" if r[f"test_{metric}"] is not None else "-"
        rows.append(f"| {runtime} | {files[runtime]} | {r['size_bytes']:,} | {score} | "
                    f"{r['latency_ms']:.3f} | {base} | {speedup} | {r['speedup_vs_base_torch']:.2f}x |")
    t = runtimes["timing"]
    notes = [f"Timed on the CPU, model and base in every runtime interleaved in one process (batch {t['batch_size']}, "
             f"{t['threads']} thread(s), {t['repeats']} rounds, median). The base is the unpruned architecture"
             + (f" (not in onnxruntime: {t['base_error']})." if t["base_error"] else ".")]
    if "onnx" in report:
        o = report["onnx"]
        notes.append(f"`{ONNX_FILE}`: not written: {o['error']}" if "error" in o else
                     f"`{ONNX_FILE}` (opset {o['opset']}, dynamic batch): onnxruntime's outputs within "
                     f"{o['max_abs_diff']:.1e} of torch's" + (f"; the task's evaluate failed on it: "
                                                              f"{o['evaluate_error']}." if "evaluate_error" in o else "."))
    if "int8" in report:
        q = report["int8"]
        if "error" in q:
            notes.append(f"`{INT8_FILE}`: not written: {q['error']}")
        else:
            qat = q["qat"]
            notes.append(f"`{INT8_FILE}`: {q['method']}, calibrated on {q['calibration_batches']} training batches; "
                         f"validation {metric} {q[f'val_{metric}_ptq']:.4f} in int8 vs {q[f'val_{metric}_fp32']:.4f} "
                         f"in fp32" + (f"; after {qat['epochs']:g} epoch(s) of quantization-aware fine-tuning "
                                       f"{qat[f'val_{metric}']:.4f}" if qat else "") + ".")
    if "weight_sharing" in report:
        w = report["weight_sharing"]
        notes.append(f"`model.shared.npz`: not written: {w['error']}" if "error" in w else
                     f"`{w['file']}`: weight sharing, {2 ** w['bits']} shared values per layer ({w['bits']} bits per "
                     f"weight): {w['size_bytes']:,} bytes ({w['packed_bytes']:,} before compression), test {metric} "
                     f"{w[f'test_{metric}']:.4f}; load it with `autoprune.load(DIR, shared=True)`.")
    usage = ("\n```python\nimport onnxruntime as ort  # plain onnxruntime, no torch needed\n"
             f"session = ort.InferenceSession(\"{ONNX_FILE}\")  # or \"{INT8_FILE}\"\n"
             "logits = session.run(None, {\"input\": batch})[0]  # batch: float32 numpy array, any batch size\n```\n"
             if "onnxruntime" in runtimes else "")
    return "\n## Runtimes\n\n" + "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n" + usage


def with_shared_weights(directory: Path, model: nn.Module) -> nn.Module:
    """``model`` (the pruned architecture) with the shared weights of ``directory``'s ``model.shared.npz``."""
    from autoprune.deploy.sharing import SHARED_FILE, shared_state_dict

    path = directory / SHARED_FILE
    if not path.is_file():
        raise AutopruneError(f"export '{directory}' has no {SHARED_FILE}: export it with --share-bits")
    model.load_state_dict(shared_state_dict(path))
    return model

