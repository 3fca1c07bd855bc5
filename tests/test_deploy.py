"""Deployable exports: ONNX checked in onnxruntime, int8 by onnxruntime's static quantizer, quantization-aware
fine-tuning, weight sharing, and ``latency.runtime`` (what the search times)."""
import io

import numpy as np
import onnx
import pytest
import torch
from conftest import Mystery
from torch import nn

from autoprune import AutopruneError
from autoprune.config import load_config
from autoprune.data import DataSpec, load_data
from autoprune.deploy import artefacts, qat, sharing
from autoprune.deploy.artefacts import DeployOptions, write_deployables
from autoprune.measure.latency import local_meter
from autoprune.measure.runtimes import (
    OnnxExportError,
    OrtModel,
    QuantizationError,
    in_runtime,
    quantize_int8,
    to_onnx,
)
from autoprune.measure.spec import LatencySpec
from autoprune.pruning.policy import discover
from autoprune.tasks import Metric
from autoprune.tasks.classification import ClassificationTask, Recipe

SHAPE = (1, 28, 28)


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.fixture(scope="module")
def task():
    return ClassificationTask(load_data(DataSpec(max_train_samples=256)), Recipe(batch_size=64))


@pytest.fixture(scope="module")
def fp32():
    return to_onnx(small_cnn(), SHAPE)


def test_onnx_export_matches_torch_at_any_batch(fp32):
    model = small_cnn()
    graph = onnx.load_from_string(fp32)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["input"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic: any batch
    runner = OrtModel(fp32)
    for batch in (1, 5):
        x = torch.randn(batch, *SHAPE)
        out = runner(x)
        assert out.shape == (batch, 10)
        assert float((out - model(x).detach()).abs().max()) <= artefacts.ONNX_TOLERANCE
    assert artefacts.max_abs_difference(model, fp32, SHAPE) <= artefacts.ONNX_TOLERANCE


def test_an_unexportable_operator_is_named():
    with pytest.raises(OnnxExportError) as e:
        to_onnx(Mystery(), SHAPE)
    assert "operator 'autoprune_test.mystery' has no ONNX translation" in str(e.value)
    assert "\n" not in str(e.value)


def test_int8_stores_int8_weights_and_follows_fp32(fp32):
    calibration = [torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    int8 = quantize_int8(fp32, calibration)
    graph = onnx.load_from_string(int8)
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) == 2  # both convolutions' weights stored as int8, one scale per output channel
    scales = {t.name: t for t in graph.graph.initializer}
    assert any(len(t.dims) == 1 and t.dims[0] == 64 and t.data_type == onnx.TensorProto.FLOAT for t in scales.values())
    assert len(int8) < 0.5 * len(fp32)
    x = calibration[0]
    a, b = OrtModel(fp32)(x), OrtModel(int8)(x)
    assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.9


def test_quantization_failure_is_one_line():
    with pytest.raises(QuantizationError) as e:
        quantize_int8(b"not an onnx model", [torch.randn(2, *SHAPE)])
    assert str(e.value).startswith("int8 quantization failed: ") and "\n" not in str(e.value)
    with pytest.raises(QuantizationError, match="at least one calibration batch"):
        quantize_int8(b"", [])


def test_in_runtime():
    model = small_cnn()
    assert in_runtime(model, "torch", SHAPE) is model
    assert isinstance(in_runtime(model, "onnxruntime", SHAPE), OrtModel)
    with pytest.raises(AutopruneError, match="unknown runtime 'tflite'"):
        in_runtime(model, "tflite", SHAPE)


# weight sharing

def test_cluster_keeps_few_distinct_values_exactly():
    values = np.array([0.5, -1.0, 0.5, 2.0], dtype=np.float32)
    codebook, labels = sharing.cluster(values, 4)
    assert np.array_equal(codebook[labels], values)


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_packed_indices_round_trip(bits):
    indices = np.random.default_rng(bits).integers(0, 2 ** bits, size=1001)
    packed = sharing._pack(indices, bits)
    assert packed.nbytes == -(-1001 * bits // 8)
    assert np.array_equal(sharing._unpack(packed, bits, 1001), indices)


def test_shared_weights_round_trip_with_at_most_2_to_the_bits_values(tmp_path):
    model = small_cnn()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = {}
    for bits in (4, 8):
        shared = sharing.share_weights(model, bits)
        sizes[bits] = shared.save(tmp_path / f"{bits}.npz")
        state = sharing.shared_state_dict(tmp_path / f"{bits}.npz")
        assert state.keys() == original.keys()
        for key, tensor in state.items():
            assert tensor.shape == original[key].shape and tensor.dtype == original[key].dtype
            if key.endswith("weight") and original[key].dim() > 1:  # convolutions and the linear layer: shared
                assert tensor.unique().numel() <= 2 ** bits
                spread = float(original[key].max() - original[key].min())
                assert float((tensor - original[key]).abs().max()) <= spread / 2 ** bits
            else:  # biases and batch norm stay exact
                assert torch.equal(tensor, original[key])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert sizes[4] < sizes[8] < buffer.getbuffer().nbytes


@pytest.mark.parametrize("bits", [3, 9, True, 4.0])
def test_bad_bits_are_refused(bits):
    with pytest.raises(AutopruneError, match="4 to 8 bits per weight"):
        sharing.check_bits(bits)


def test_a_file_that_is_not_shared_weights_is_refused(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"nope")
    with pytest.raises(AutopruneError, match="not a readable shared-weights file"):
        sharing.shared_state_dict(tmp_path / "x.npz")


# quantization-aware fine-tuning

def test_fake_quantized_weights_are_on_onnxruntimes_grid():
    model = small_cnn()
    for m in model.modules():  # batch norm that onnxruntime folds into the convolutions: each channel scaled
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2)
            m.running_var.uniform_(0.5, 2)
            m.running_mean.uniform_(-1, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    ours = {}
    for conv in convs:  # the integer grid point of each weight under our fake quantization
        scale = conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / 127
        with qat.fake_quantized(model):
            ours[tuple(conv.weight.shape)] = (conv.weight.detach() / scale).round().to(torch.int8)
    graph = onnx.load_from_string(quantize_int8(to_onnx(model, SHAPE), [torch.randn(8, *SHAPE)])).graph
    theirs = {tuple(t.dims): torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in graph.initializer
              if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4}
    assert theirs.keys() == ours.keys() and len(ours) == 2
    for shape, q in ours.items():
        agree = (theirs[shape] == q).float().mean().item()
        assert agree >= 0.999, (shape, agree)  # float rounding may move a weight sitting on a .5 boundary


def test_fake_quantization_puts_weights_on_the_int8_grid_and_comes_off():
    model = small_cnn()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    before = conv.weight.detach().clone()
    with qat.fake_quantized(model):
        w = conv.weight.detach()
        scale = before.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
        steps = w / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)  # each channel's weights are multiples of its scale
        assert not torch.equal(w, before)
        model(torch.randn(2, *SHAPE))
    assert not hasattr(conv, "parametrizations") and isinstance(conv.weight, nn.Parameter)
    assert torch.equal(conv.weight.detach(), before)


def test_quantization_aware_finetune_trains_a_copy(task):
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, *SHAPE)
    tuned = qat.quantization_aware_finetune(model, task, 0.25, x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model given is untouched
    assert not any(hasattr(m, "parametrizations") for m in tuned.modules()) and not tuned.training
    assert [type(m) for m in tuned.modules()] == [type(m) for m in model.modules()]
    assert not torch.allclose(tuned(x), model(x))  # trained
    images = [inputs for inputs, _ in task.calibration(4)]
    int8 = OrtModel(quantize_int8(to_onnx(tuned, SHAPE), images[:2]))
    held_out = torch.cat(images[2:])
    int8_logits, fp32_logits = int8(held_out), tuned(held_out).detach()
    # the quantized copy computes what the tuned one does (an untrained model's accuracy is chance: its logits tell;
    # int8 errs by about 15 % of their norm here, a wrong graph by about 100 %)
    assert torch.linalg.norm(int8_logits - fp32_logits) <= 0.5 * torch.linalg.norm(fp32_logits)


def test_a_diverged_quantization_aware_finetune_is_an_error(task):
    class Diverging(ClassificationTask):
        def finetune(self, model, epochs, *, teacher=None, on_epoch=None, progress=None):
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    with pytest.raises(QuantizationError, match="diverged: the model's outputs are not finite"):
        qat.quantization_aware_finetune(small_cnn(), Diverging(task.data, task.recipe), 0.25, torch.randn(2, *SHAPE))


# write_deployables: what export and finalize write beside model.pt

def deployables(tmp_path, task, model, options=None, base=None):
    lines = []
    report = write_deployables(tmp_path, model, base if base is not None else small_cnn(1), task,
                               LatencySpec(SHAPE, repeats=30), options or DeployOptions(), 0.5, 1000, lines.append)
    return report, lines


def test_write_deployables_writes_and_reports_every_runtime(tmp_path, task):
    report, lines = deployables(tmp_path, task, small_cnn(), DeployOptions(share_bits=6, qat_epochs=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx", "model.shared.npz"]
    assert report["onnx"]["max_abs_diff"] <= 1e-4
    assert report["onnx"]["size_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert report["int8"]["size_bytes"] == (tmp_path / "model.int8.onnx").stat().st_size
    assert report["weight_sharing"]["bits"] == 6
    assert report["weight_sharing"]["size_bytes"] == (tmp_path / "model.shared.npz").stat().st_size
    runtimes = report["runtimes"]
    assert set(runtimes) == {"torch", "onnxruntime", "int8", "timing"}
    for name in ("torch", "onnxruntime", "int8"):
        r = runtimes[name]
        assert r["latency_ms"] > 0 and r["base_latency_ms"] > 0
        assert r["speedup"] == pytest.approx(r["base_latency_ms"] / r["latency_ms"])
    assert runtimes["torch"]["test_accuracy"] == 0.5 and runtimes["torch"]["size_bytes"] == 1000  # as recorded
    assert runtimes["timing"]["base_error"] is None
    # each runtime's figure is what its written file scores: onnxruntime that of the model in torch, int8 its own
    model_in_torch = task.evaluate(small_cnn(), "test")
    assert runtimes["onnxruntime"]["test_accuracy"] == pytest.approx(model_in_torch, abs=0.001)
    assert runtimes["int8"]["test_accuracy"] == task.evaluate(OrtModel(tmp_path / "model.int8.onnx"), "test")
    assert lines == []
    card = artefacts.deploy_card(report, "accuracy")
    assert "| int8 | model.int8.onnx |" in card and "6 bits per weight" in card


def test_an_unexportable_model_still_gets_its_other_files(tmp_path, task):
    report, lines = deployables(tmp_path, task, Mystery(), DeployOptions(share_bits=4), base=Mystery())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.shared.npz"]
    assert "autoprune_test.mystery" in report["onnx"]["error"]
    assert report["int8"] == {"error": "it quantizes a checked model.onnx, which was not written"}
    assert set(report["runtimes"]) == {"torch", "timing"}
    assert len(lines) == 1 and lines[0].startswith("warning: model.onnx not written: ")
    assert "autoprune_test.mystery" in lines[0]
    assert "not written" in artefacts.deploy_card(report, "accuracy")


def test_a_quantization_failure_leaves_the_fp32_files(tmp_path, task, monkeypatch):
    def fail(*_):
        raise QuantizationError("int8 quantization failed: RuntimeError: boom")

    monkeypatch.setattr(artefacts, "quantize_int8", fail)
    report, lines = deployables(tmp_path, task, small_cnn())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert report["int8"] == {"error": "int8 quantization failed: RuntimeError: boom"}
    assert lines == ["warning: model.int8.onnx not written: int8 quantization failed: RuntimeError: boom"]
    assert set(report["runtimes"]) == {"torch", "onnxruntime", "timing"}


class Recording(OrtModel):
    """An OrtModel that remembers the ONNX bytes it runs."""

    def __init__(self, model, threads=1):
        super().__init__(model, threads)
        self.source = model


@pytest.mark.parametrize("ptq, after, kept", [(0.70, 0.78, True), (0.70, 0.65, False)])
def test_int8_that_loses_too_much_gets_a_quantization_aware_finetune(tmp_path, task, monkeypatch, ptq, after, kept):
    made = []  # int8 models in order: post-training, then after QAT
    quantize = artefacts.quantize_int8
    monkeypatch.setattr(artefacts, "quantize_int8", lambda fp32, calibration: made.append(quantize(fp32, calibration))
                        or made[-1])
    monkeypatch.setattr(artefacts, "OrtModel", Recording)

    class Scripted(ClassificationTask):  # validation accuracy 0.80 in fp32, then as scripted for the int8 models
        def evaluate(self, model, split="val"):
            if split == "val" and isinstance(model, Recording):
                return [ptq, after][made.index(model.source)] if model.source in made else 0.80
            return super().evaluate(model, split)

    report, lines = deployables(tmp_path, Scripted(task.data, task.recipe), small_cnn(), DeployOptions(qat_epochs=0.25))
    assert report["int8"]["qat"] == {"epochs": 0.25, "val_accuracy": after, "kept": kept}
    assert report["int8"]["val_accuracy_ptq"] == ptq and report["int8"]["val_accuracy_fp32"] == 0.80
    assert lines[0] == "int8 loses 0.1000 accuracy on the validation split (more than 0.01): quantization-aware " \
                       "fine-tune for 0.25 epoch(s)"
    assert (tmp_path / "model.int8.onnx").read_bytes() == made[1 if kept else 0]
    assert ("after quantization-aware fine-tuning" in report["int8"]["method"]) is kept


def test_a_failing_quantization_aware_finetune_keeps_post_training_int8(tmp_path, task, monkeypatch):
    monkeypatch.setattr(artefacts, "_loss", lambda task, a, b: 0.05)  # as if int8 lost 5 points

    def fail(*_):
        raise QuantizationError("quantization-aware fine-tuning folds batch norm with torch.fx, which cannot trace "
                                "the model: TraceError: symbolically traced variables cannot be used as inputs")

    monkeypatch.setattr(qat, "quantization_aware_finetune", fail)
    report, lines = deployables(tmp_path, task, small_cnn(), DeployOptions(qat_epochs=0.25))
    assert (tmp_path / "model.int8.onnx").is_file() and "error" not in report["int8"]
    assert "cannot trace the model" in report["int8"]["qat"]["error"]
    assert lines[1].startswith("warning: quantization-aware fine-tuning failed, post-training int8 kept: ")


def test_no_quantization_aware_finetune_with_qat_epochs_0(tmp_path, task, monkeypatch):
    monkeypatch.setattr(artefacts, "_loss", lambda task, a, b: 0.05)
    report, lines = deployables(tmp_path, task, small_cnn(), DeployOptions(qat_epochs=0))
    assert report["int8"]["qat"] is None and lines == [] and (tmp_path / "model.int8.onnx").is_file()


@pytest.mark.parametrize("options, message", [
    (dict(share_bits=3), "4 to 8 bits"), (dict(qat_epochs=-1), "qat_epochs >= 0"),
    (dict(onnx=False), "with onnx off, turn int8 off too"), (dict(calibration_batches=0), "calibration_batches >= 1")])
def test_bad_deploy_options(options, message):
    with pytest.raises(AutopruneError, match=message):
        DeployOptions(**options)


# latency.runtime: what the search times

@pytest.mark.parametrize("sets, message", [
    (["latency.runtime=tflite"], "'latency.runtime' must be one of torch, onnxruntime, int8"),
    (["latency.runtime=int8", "latency.device=cuda"], "int8 times on the CPU"),
    (["latency.runtime=onnxruntime", "latency.table=t.json"], "leave it out"),
    (["deploy.share_bits=9"], "config key 'deploy': share_bits must be 4 to 8"),
    (["deploy.onnx=false"], "config key 'deploy': int8 quantizes the ONNX export"),
])
def test_runtime_and_deploy_config_errors(sets, message):
    with pytest.raises(AutopruneError, match=message):
        load_config(None, sets)


def test_auto_latency_device_is_the_cpu_for_onnxruntime():
    from autoprune.searching.capacity import latency_device

    assert latency_device(load_config(None, ["resources.gpu=0.5"])) == "cuda"
    assert latency_device(load_config(None, ["resources.gpu=0.5", "latency.runtime=int8"])) == "cpu"


def test_the_meter_times_in_its_runtime():
    model = small_cnn()
    example = torch.randn(1, *SHAPE)
    groups = discover(model, example)
    meter = local_meter(model, example, groups, LatencySpec(SHAPE, repeats=30, reference_repeats=30,
                                                            max_rounds=60, runtime="int8"))
    assert isinstance(meter.base, OrtModel)
    candidate = small_cnn()
    candidate[0] = nn.Conv2d(1, 16, 3, padding=1)  # a narrower first layer (structure only matters)
    candidate[1], candidate[3] = nn.BatchNorm2d(16), nn.Conv2d(16, 64, 3, stride=2, padding=1)
    report = meter.measure(candidate.eval(), {g.name: g.channels // (2 if i == 0 else 1) for i, g in enumerate(groups)})
    assert report.latency_ms > 0 and report.ratio > 0 and not report.cached
    assert meter.summary()["runtime"] == "int8"
    with pytest.raises(AutopruneError, match="times eager torch layers"):
        from autoprune.measure.latency_table import build_table
        from autoprune.measure.structure import StructureModel

        build_table(StructureModel.from_model(model, example, groups), LatencySpec(SHAPE, runtime="onnxruntime"), [0.5])


def test_an_evaluate_that_needs_parameters_gets_onnx_without_int8(tmp_path, task, monkeypatch):
    class NeedsParameters(ClassificationTask):
        def evaluate(self, model, split="val"):
            next(model.parameters())  # an OrtModel has none
            return super().evaluate(model, split)

    picky = NeedsParameters(task.data, task.recipe)
    report, lines = deployables(tmp_path, picky, small_cnn())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert report["onnx"]["test_accuracy"] is None and "StopIteration" in report["onnx"]["evaluate_error"]
    assert "the task's evaluate could not run" in report["int8"]["error"]
    assert report["runtimes"]["onnxruntime"]["test_accuracy"] is None
    assert len(lines) == 1 and "the task's evaluate failed on it in onnxruntime" in lines[0]
    assert "| onnxruntime | model.onnx |" in artefacts.deploy_card(report, "accuracy")


def test_the_int8_loss_follows_the_metrics_direction(task):
    class Error(ClassificationTask):
        metric = Metric("err", "min")

    assert artefacts._loss(task, 0.80, 0.75) == pytest.approx(0.05)   # accuracy: lower is worse
    assert artefacts._loss(Error(task.data), 0.20, 0.25) == pytest.approx(0.05)  # error: higher is worse
    assert artefacts._loss(Error(task.data), 0.20, 0.15) == pytest.approx(-0.05)
