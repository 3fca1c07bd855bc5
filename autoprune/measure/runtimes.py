"""The runtimes a model ships in: eager PyTorch, ONNX Runtime in fp32, and ONNX Runtime in int8.

``to_onnx`` exports a model with torch's ONNX exporter (``torch.export`` based; dynamic batch), ``quantize_int8``
quantizes an ONNX model with onnxruntime's static quantizer (QDQ format: int8 weights per output channel,
uint8 activations per tensor, ranges calibrated by min/max on the given batches), and ``OrtModel`` runs an ONNX
model in an onnxruntime session behind the ``nn.Module`` call that tasks and the latency meter use.

Why onnxruntime for int8 rather than PyTorch 2 export with the X86 inductor quantizer: quantizing takes about a
second and the result runs with no compile step, so the search can time every candidate in int8; the inductor
path needs ``torch.compile`` (tens of seconds per model on a small CPU and a C++ toolchain where it runs), and
its quantized kernels are only fast inside the compiled graph.
"""
from __future__ import annotations

import contextlib
import copy
import io
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.config import RUNTIMES
from autoprune.errors import AutopruneError

INPUT, OUTPUT = "input", "output"
OPSET = 18


class OnnxExportError(AutopruneError):
    """The model does not export to ONNX; the message names the operator when the exporter names one."""


class QuantizationError(AutopruneError):
    """onnxruntime could not quantize the ONNX model."""


def _unexportable(error: BaseException) -> str:
    """One line naming what the ONNX exporter could not translate (its exception summary otherwise)."""
    text = "\n".join(str(e) for e in (error, error.__cause__) if e is not None)
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if op:
        return f"operator '{op.group(1)}' has no ONNX translation"
    summary = [line.strip() for line in text.splitlines() if line.strip().startswith("<class")]
    first = summary[0].split(">: ", 1)[-1] if summary else (text.strip().splitlines() or [type(error).__name__])[0]
    return first.strip()[:300]


def to_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` (in eval mode, on the CPU) as a serialised ONNX model with a dynamic batch dimension, input
    ``input`` and output ``output``. Raises ``OnnxExportError`` naming the operator that does not export."""
    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and mode
    example = torch.randn(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    chatter = io.StringIO()  # the exporter prints its steps when it fails
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad():
            program = torch.onnx.export(model, (example,), None, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True,
                                        verbose=False, external_data=False)
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        raise OnnxExportError(f"the model does not export to ONNX: {_unexportable(e)}") from None
    if program is None:
        raise OnnxExportError("the ONNX exporter returned no program")
    return program.model_proto.SerializeToString()


def session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OrtModel(nn.Module):
    """An ONNX model run by onnxruntime on the CPU, called like the torch model it came from."""

    def __init__(self, model: bytes | str | Path, threads: int = 1) -> None:
        super().__init__()
        self.session = session(model, threads)
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])


class _Batches:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of input arrays."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.items = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize_int8(fp32: bytes, calibration: Iterable[torch.Tensor]) -> bytes:
    """``fp32`` (an ONNX model from ``to_onnx``) quantized statically to int8 (QDQ; weights int8 per output
    channel, activations uint8 per tensor), activation ranges calibrated on ``calibration`` input batches."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [x.detach().to("cpu", torch.float32).contiguous().numpy() for x in calibration]
    if not batches:
        raise QuantizationError("int8 quantization needs at least one calibration batch")
    with tempfile.TemporaryDirectory(prefix="autoprune-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        try:
            quant_pre_process(str(src), str(pre))  # shape inference and graph optimisation (batch norm folded)
            name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
            quantize_static(str(pre), str(out), _Batches(name, batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            return out.read_bytes()
        except Exception as e:  # onnxruntime's quantizer raises bare exceptions of many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise QuantizationError(f"int8 quantization failed: {type(e).__name__}: {first[:300]}") from None


def random_calibration(input_shape: tuple[int, ...], batches: int = 4, batch_size: int = 8) -> list[torch.Tensor]:
    """Seeded normal inputs: enough to quantize a model for timing (latency does not depend on the ranges)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch_size, *input_shape, generator=generator) for _ in range(batches)]


def in_runtime(model: nn.Module, runtime: str, input_shape: tuple[int, ...], threads: int = 1,
               calibration: Iterable[torch.Tensor] | None = None) -> nn.Module:
    """``model`` as ``runtime`` runs it: itself for ``torch``, an ``OrtModel`` of its ONNX export for
    ``onnxruntime``, of its int8 quantization (calibrated on ``calibration``, else seeded random inputs) for
    ``int8``."""
    if runtime not in RUNTIMES:
        raise AutopruneError(f"unknown runtime '{runtime}': use one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return model
    fp32 = to_onnx(model, input_shape)
    if runtime == "onnxruntime":
        return OrtModel(fp32, threads)
    return OrtModel(quantize_int8(fp32, calibration if calibration is not None else random_calibration(input_shape)),
                    threads)
