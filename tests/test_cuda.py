"""The CUDA path: trials sharing a GPU, mixed precision, CUDA-event latency, export and finalize of GPU-trained
models. Skipped, with the reason, where torch sees no CUDA device; the CPU side of the same code (device
resolution, capacity checks, precision selection) is tested in test_devices.py."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = ["data.max_train_samples=512", "base.epochs=1", "finetune.epochs=1", "finetune.batch_size=64",
        "latency.threads=1", "resources.cpu=1", "searcher.name=random", "searcher.warm_start=2", "trials=4",
        "concurrency=4", "resources.gpu=0.25", "finetune.final_epochs=1", "constraints=[]"]


def test_cuda_latency_is_timed_with_events_and_orders_models_by_size():
    from torch import nn

    from autoprune.measure.metrics import measure_latency

    wide = nn.Sequential(*[nn.Conv2d(256, 256, 3, padding=1) for _ in range(6)])
    narrow = nn.Sequential(nn.Conv2d(256, 8, 3, padding=1))
    lat = measure_latency({"wide": wide, "narrow": narrow}, (256, 32, 32), batch_size=16, device="cuda", repeats=30)
    assert lat["wide"].device.startswith("cuda") and lat["narrow"].median_ms < lat["wide"].median_ms


def test_mixed_precision_training_on_cuda_keeps_fp32_contiguous_weights():
    from autoprune.models import ModelSpec, build_model
    from autoprune.tasks.training import TrainConfig, train

    model = build_model(ModelSpec("resnet20", 10, 1)).cuda()
    batches = [(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))) for _ in range(3)]
    progress: dict = {}
    train(model, batches, TrainConfig(epochs=1), device="cuda", progress=progress)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert bool(progress["scaler"]) == (not torch.cuda.is_bf16_supported(including_emulation=False))  # fp16 needs the scaler


def test_four_trials_share_one_gpu_train_on_it_are_timed_on_it_and_finalize(tmp_path):
    from autoprune.config import load_config
    from autoprune.deploy.export import export
    from autoprune.deploy.finalize import finalize
    from autoprune.searching.controller import run_search
    from autoprune.searching.results import read_trials

    config = load_config(None, [*TINY, f"base.checkpoint={tmp_path / 'base.pt'}"])
    summary = run_search(config, tmp_path / "run", echo=print)
    rows = [r for r in read_trials(summary.run_dir).to_pylist() if r["status"] == "ok"]
    assert summary.finished == 4 and {r["device"] for r in rows} == {"cuda"}
    metrics = export(tmp_path / "run", out=tmp_path / "export")  # re-evaluated within export's 0.1 point
    assert metrics["latency_ms"] > 0
    final = finalize(tmp_path / "run", pick="knee", epochs=1, out=tmp_path / "final", echo=print)
    assert final["finetune"]["device"] == "cuda" and final["latency"]["device"] == "cuda"
