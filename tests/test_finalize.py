"""``autoprune finalize``: a chosen trial's policy pruned again from the base, fine-tuned fully, exported."""
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from test_search import search

import autoprune
from autoprune import AutopruneError
from autoprune.cli import main
from autoprune.data import load_data
from autoprune.deploy.artefacts import DeployOptions
from autoprune.deploy.export import (
    EXPORT_FILES,
    check_test_metric,
    export_trial,
    pick_trial,
    run_config,
    verify_manifest,
)
from autoprune.measure.runtimes import OrtModel
from autoprune.pruning import checkpoint
from autoprune.searching.controller import base_checkpoint_path
from autoprune.searching.results import MARKER, read_trials
from autoprune.searching.storage import as_run_dir
from autoprune.tasks.training import evaluate

# the run's config (tests/test_search.TINY) leaves the ONNX files out; finalized below writes them
TORCH_FILES = sorted(f for f in EXPORT_FILES if not f.endswith(".onnx"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finalize")
    # candidates timed in int8 (latency.runtime): the search's latency actor, and finalize's meter, export each
    summary, lines = search(tmp, tmp / "base.pt", "searcher.name=uniform", "searcher.grid=2", "trials=2",
                            "latency.runtime=int8")
    assert any(line.startswith("latency: ") and "1 thread(s), int8)" in line for line in lines), lines
    return Path(summary.run_dir.path)


@pytest.fixture(scope="module")
def finalized(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("final") / "knee"
    lines = []
    metrics = autoprune.finalize(run, pick="knee", epochs=1, out=out, deploy=DeployOptions(), echo=lines.append)
    return out, metrics, lines


def conv_widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_finalize_writes_a_verified_export_of_the_trials_policy(run, finalized):
    out, metrics, lines = finalized
    row = pick_trial(run, "knee")
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FILES)
    verify_manifest(out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    # the trial's policy, pruned again: the same structure as the trial's own checkpoint
    policy = json.loads((out / "policy.json").read_text())
    assert policy["criterion"] == row["criterion"]
    assert policy["ratios"] == {k.split(":", 1)[1]: v for k, v in row.items() if k.startswith("ratio:")}
    model = autoprune.load(out)
    trial_model = checkpoint.load(run / row["checkpoint"]).build()
    assert conv_widths(model) == conv_widths(trial_model)
    assert sum(p.numel() for p in model.parameters()) == row["params"] == saved["final"]["params"]
    # search-time figures next to the final ones, and how it was fine-tuned
    search, final = saved["search"], saved["final"]
    assert saved["trial_id"] == search["trial_id"] == row["trial_id"]
    for key in ("accuracy", "test_accuracy", "latency_ms", "size_bytes", "macs"):
        assert search[key] == row[key]
    assert final["test_accuracy"] == saved["test_accuracy"] and final["latency_ms"] == saved["latency_ms"] > 0
    assert final["speedup"] == pytest.approx(saved["base"]["latency_ms"] / final["latency_ms"])
    assert saved["finetune"]["finetune_epochs"] == 1 and saved["finetune"]["kd"] is True
    assert search["finetune_epochs"] == 0.5 and saved["pick"] == "knee"
    assert saved["input_shape"] == ["batch", 1, 28, 28]
    assert saved["latency"]["runtime"] == "int8" == json.loads((run / "latency.json").read_text())["spec"]["runtime"]
    # the written model gives the recorded test accuracy (within the stated tolerance)
    data = load_data(checkpoint.load(out / "model.pt").data_spec)
    assert evaluate(model, data.loader("test", 256)) == pytest.approx(final["test_accuracy"], abs=0.001)
    program = torch.export.load(str(out / "model.pt2")).module()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5)
    card = (out / "README.md").read_text()
    assert f"trial {row['trial_id']}, finalized" in card and "| search (0.5 epochs) | final (1 epoch) |" in card
    assert any("fine-tune epoch 1" in line for line in lines)
    # model.onnx runs in onnxruntime as the model does, at any batch size; int8 and the runtimes are reported
    assert saved["onnx"]["max_abs_diff"] <= 1e-4
    for batch in (1, 3):
        x = torch.randn(batch, 1, 28, 28)
        torch.testing.assert_close(OrtModel(out / "model.onnx")(x), model(x).detach(), rtol=0, atol=1e-4)
    assert OrtModel(out / "model.int8.onnx")(x).shape == (3, 10)
    runtimes = saved["runtimes"]
    assert runtimes["torch"]["test_accuracy"] == final["test_accuracy"]
    assert runtimes["onnxruntime"]["test_accuracy"] == pytest.approx(final["test_accuracy"], abs=0.001)
    assert runtimes["int8"]["test_accuracy"] == saved["int8"]["test_accuracy"]
    # the int8 figure is the written file's, and that file computes what the model does (the fixture's base is
    # barely trained, so accuracies alone would not tell a broken quantization from a working one)
    assert runtimes["int8"]["test_accuracy"] == evaluate(OrtModel(out / "model.int8.onnx"), data.loader("test", 256))
    images = next(iter(data.loader("test", 256)))[0]
    assert relative_distance(OrtModel(out / "model.int8.onnx")(images), model(images).detach()) <= 0.15  # 0.04 here
    assert runtimes["int8"]["size_bytes"] == (out / "model.int8.onnx").stat().st_size
    assert "| onnxruntime | model.onnx |" in card and "| int8 | model.int8.onnx |" in card


def test_finalize_cli_trial_without_kd(run, tmp_path, capsys):
    trial = read_trials(run).to_pylist()[1]["trial_id"]
    out = tmp_path / "final"
    assert main(["finalize", str(run), "--pick", f"trial:{trial}", "--epochs", "0", "--no-kd", "--out", str(out),
                 "--onnx", "--no-int8", "--share-bits", "4", "--against", "uniform"]) == 0
    printed = capsys.readouterr().out
    assert f"finalized trial {trial} (trial:{trial})" in printed and "speedup" in printed
    assert "shared 4-bit weights: test_accuracy" in printed and "onnxruntime " in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["search"]["trial_id"] == trial and saved["finetune"]["kd"] is False
    assert f"latency in {saved['latency']['runtime']} {saved['final']['latency_ms']:.3f} ms" in printed
    # against uniform: every uniform ratio of the space timed, the one closest to the final latency finalized the
    # same way (no fine-tune here), the difference reported
    uniform, final = saved["against_uniform"], saved["final"]
    timed = {float(r): ms for r, ms in uniform["timed"].items()}
    assert sorted(timed) == [round(0.1 * i, 1) for i in range(8)]  # the space's grid, 0 to 0.7
    assert uniform["ratio"] == min(timed, key=lambda r: abs(timed[r] - final["latency_ms"]))
    assert uniform["criterion"] == saved["search"]["criterion"] and uniform["latency_ms"] == timed[uniform["ratio"]]
    assert uniform["test_accuracy_difference"] == pytest.approx(final["test_accuracy"] - uniform["test_accuracy"])
    assert f"uniform {uniform['ratio']:g}, finalized the same way: test accuracy {uniform['test_accuracy']:.4f}" \
        in printed
    assert f"| uniform {uniform['ratio']:g}, same way |" in (out / "README.md").read_text()
    assert saved["finetune"]["finetune_epochs"] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*TORCH_FILES, "model.onnx", "model.shared.npz"])
    # weight sharing: every convolution keeps at most 16 distinct weights, and the export reloads with them
    shared = autoprune.load(out, shared=True)
    convs = [m for m in shared.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.unique().numel() <= 16 for m in convs)
    assert conv_widths(shared) == conv_widths(autoprune.load(out))
    assert saved["weight_sharing"]["bits"] == 4
    # the shared-weight figure is the reloaded model's, and 16 shared values per layer keep the outputs close
    data = load_data(checkpoint.load(out / "model.pt").data_spec)
    assert saved["weight_sharing"]["test_accuracy"] == evaluate(shared, data.loader("test", 256))
    images = next(iter(data.loader("test", 256)))[0]
    assert relative_distance(shared(images).detach(), autoprune.load(out)(images).detach()) <= 0.6  # 0.32 here


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far outputs ``a`` are from ``b``, relative to ``b``'s norm."""
    return float((a - b).norm() / b.norm())


def copy_run(run, to, *names):
    to.mkdir()
    for name in names:
        shutil.copy(run / name, to / name)
    return to


def test_finalize_errors_are_one_line(run, tmp_path, capsys):
    no_trials = copy_run(run, tmp_path / "no_trials", "config.yaml", MARKER)
    no_base = copy_run(run, tmp_path / "no_base", "config.yaml", MARKER, "trials.parquet")
    config = yaml.safe_load((no_base / "config.yaml").read_text())
    config["base"]["checkpoint"] = str(tmp_path / "gone.pt")
    (no_base / "config.yaml").write_text(yaml.safe_dump(config))
    other_arch = copy_run(run, tmp_path / "other_arch", "config.yaml", MARKER, "trials.parquet")
    config["base"]["checkpoint"], config["model"] = str(base_checkpoint_path(run_config(as_run_dir(run)))), "resnet32"
    (other_arch / "config.yaml").write_text(yaml.safe_dump(config))
    no_group = copy_run(run, tmp_path / "no_group", "config.yaml", MARKER)
    pq.write_table(pq.read_table(run / "trials.parquet").drop(["ratio:layer2.0.conv1"]), no_group / "trials.parquet")
    cases = [([str(run), "--pick", "trial:nope"], "has no trial 'nope'"),
             ([str(other_arch)], "holds 'resnet20', but run"),
             ([str(no_group)], "has no ratio for group 'layer2.0.conv1'"),
             ([str(no_trials)], "trials.parquet does not exist"),
             ([str(no_base)], f"base checkpoint '{tmp_path / 'gone.pt'}'"),
             ([str(tmp_path / "absent")], "does not exist"),
             ([str(run), "--epochs", "-1"], "--epochs must be >= 0")]
    for args, message in cases:
        assert main(["finalize", *args, "--out", str(tmp_path / "out")]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_test_metric_tolerance():
    check_test_metric("accuracy", 0.800, 0.800)
    check_test_metric("accuracy", 0.701, 0.700)  # one test image in 1,000: within 0.1 point, despite float rounding
    check_test_metric("accuracy", 0.8, 0.8009)
    with pytest.raises(AutopruneError, match=r"test accuracy 0\.8000 on CPU, 0\.8011 was recorded"):
        check_test_metric("accuracy", 0.8, 0.8011)
    with pytest.raises(AutopruneError, match="does not match its metrics"):
        check_test_metric("accuracy", 0.9, 0.8)
    check_test_metric("psnr", 30.02, 30.0)  # 0.1 % of the value for metrics above 1
    with pytest.raises(AutopruneError, match=r"test psnr 30\.0400"):
        check_test_metric("psnr", 30.04, 30.0)


def test_public_export(run, tmp_path):
    # importing the submodule must not replace the function of the same name
    import autoprune.deploy.export

    assert callable(autoprune.export) and callable(autoprune.finalize)
    metrics = autoprune.export(run, pick="knee", out=tmp_path / "export")
    row = pick_trial(run, "knee")
    assert metrics["trial_id"] == row["trial_id"] and metrics["test_accuracy"] == row["test_accuracy"]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == TORCH_FILES
    assert sum(p.numel() for p in autoprune.load(tmp_path / "export").parameters()) == row["params"]
    with pytest.raises(AutopruneError, match="has no model.shared.npz"):
        autoprune.load(tmp_path / "export", shared=True)
    # a recorded figure the written model does not reproduce: refused, nothing written
    with pytest.raises(AutopruneError, match="the model does not match its metrics"):
        export_trial(run, {**row, "test_accuracy": row["test_accuracy"] + 0.01}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.tmp").exists()
