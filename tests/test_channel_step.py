"""``space.round_to: auto``: the channel step a runtime runs fast, measured once per run and kept with it."""
import json

import pytest

from autoprune import AutopruneError
from autoprune.config import load_config
from autoprune.measure.steps import MULTIPLES, StepReport, finest_paying_step, probe_step
from autoprune.searching.channel_step import resolve_for_run, resolve_of_run
from autoprune.searching.results import MARKER
from autoprune.searching.space import SearchSpace
from autoprune.searching.storage import RunDir


def curve(latency_of):
    return {c: latency_of(c) for c in range(1, 33)}


def test_a_runtime_proportional_in_channels_gets_a_fine_step():
    # a fixed cost plus 0.1 ms per channel: every finer multiple's counts run faster than rounding up
    assert finest_paying_step(curve(lambda c: 1.0 + 0.1 * c))[0] == 1


def test_counts_between_blocks_of_16_that_run_as_slow_as_the_next_block_give_16():
    # onnxruntime on an AVX-512 CPU (bench/README.md): up to 16 channels proportional, 17..31 at the full block's
    # latency or slower (multiples of 4 at 1.00, others up to 1.38)
    def ort(c):
        return 0.5 + 0.01 * c if c <= 16 else (1.0 if c % 4 == 0 else 1.0 + 0.02 * (c - 16))

    step, tried = finest_paying_step(curve(ort))
    assert step == 16 and tried[8] == pytest.approx(1.0)  # 24 runs as slow as 32: the multiples of 8 buy nothing


def test_counts_below_the_step_are_measured_the_same_way():
    # onnxruntime on an AVX-512 CPU: small counts run in proportion, so multiples of 4 below 16 pay; int8 there runs
    # small counts no faster than 16 (1 channel: 1.1x the full block), so none below 16 does
    def ort(c):
        return 0.5 + 0.02 * c if c <= 16 else (1.0 if c % 4 == 0 else 1.0 + 0.02 * (c - 16))

    def int8(c):
        return 0.87 if c == 16 else (1.0 if c % 4 == 0 else 1.2)

    below = {c: v for c, v in curve(ort).items() if c <= 16}
    assert finest_paying_step(below, 16)[0] == 1
    assert finest_paying_step({c: v for c, v in curve(int8).items() if c <= 16}, 16) == (16, {8: pytest.approx(0.87)})


def test_a_blocked_runtime_gets_its_block():
    # latency set by ceil(c / 8) blocks: within a block nothing is gained, between blocks 20 %
    step, tried = finest_paying_step(curve(lambda c: 1.0 + 0.2 * -(-c // 8)))
    assert step == 8 and tried == {8: pytest.approx(1.8 / 1.6), 4: pytest.approx(1.0)}


def test_the_probe_times_each_level_and_reports_what_it_tried():
    report = probe_step("torch", 1, batch=2, width=16, pixels=4, rounds=5)
    assert isinstance(report, StepReport) and report.runtime == "torch" and 8 in report.tried
    # it went one level past the step it took (or to the finest), and below it only where the step is above 1
    assert report.step in MULTIPLES and (report.step == 1 or report.step // 2 in report.tried)
    assert report.line().startswith(f"channel step in torch: {report.step}, below it ")
    assert "(a 16-channel block at 4 px; " in report.line()
    assert report.small_step is None or report.step % report.small_step == 0 < report.step - report.small_step


def fake_probe(step, calls, small=None):
    def probe(runtime, threads, batch, target):
        calls.append((runtime, threads, batch, target))
        return StepReport(runtime, step, {8: 1.0}, 32, 14, small, {8: 1.1, 4: 1.0} if small else {8: 0.9})

    return probe


def test_auto_is_measured_once_on_the_latency_node_and_kept_in_the_run_directory(tmp_path):
    config = load_config(None, ["space.round_to=auto", "latency.runtime=onnxruntime", "latency.threads=1"])
    run, marker, calls, said = RunDir(tmp_path), {"format": "autoprune-run"}, [], []
    resolved = resolve_for_run(config, run, marker, said.append, probe=fake_probe(16, calls, small=8))
    assert resolved["space.round_to"] == 16 and resolved["space.small_step"] == 8 and config["space.round_to"] == "auto"
    assert calls == [("onnxruntime", 1, 1, None)] and said[0].startswith("space.round_to auto: channel step in onnxrun")
    saved = json.loads((tmp_path / MARKER).read_text())
    assert saved["round_to"] == 16 and saved["small_step"] == 8 and saved["format"] == "autoprune-run"
    # a resumed search and finalize take the run's step, measured again never
    again = resolve_for_run(config, run, json.loads((tmp_path / MARKER).read_text()), said.append,
                            resume=True, probe=fake_probe(8, calls))
    assert again["space.round_to"] == 16 and again["space.small_step"] == 8 and len(calls) == 1
    assert "measured when the run started" in said[-1]
    of_run = resolve_of_run(config, json.loads((tmp_path / MARKER).read_text()))
    assert (of_run["space.round_to"], of_run["space.small_step"]) == (16, 8)
    assert SearchSpace.from_config(of_run, []).small_step == 8
    # a resumed run keeps its steps: another multiple is refused, and a run not searched with auto is not measured
    with pytest.raises(AutopruneError, match=r"searched with the measured steps 16 \(below it 8\), not 1 \(below it "
                                             r"None\); resume it with space.round_to: auto"):
        resolve_for_run(load_config(None, ["space.round_to=1"]), run, saved, said.append, resume=True,
                        probe=fake_probe(8, calls))
    with pytest.raises(AutopruneError, match="was not searched with auto"):
        resolve_for_run(config, run, {"format": "autoprune-run"}, said.append, resume=True, probe=fake_probe(8, calls))
    assert len(calls) == 1
    # a given multiple is kept as it is
    eight = load_config(None, ["space.round_to=8"])
    other = RunDir(tmp_path / "other")
    assert resolve_for_run(eight, other, {}, said.append, probe=fake_probe(16, calls)) is eight and len(calls) == 1


def test_auto_errors_are_one_line(tmp_path):
    with pytest.raises(AutopruneError, match="config key 'space.round_to' must be int, got 'often'"):
        load_config(None, ["space.round_to=often"])
    on_gpu = load_config(None, ["space.round_to=auto", "latency.device=cuda"])
    with pytest.raises(AutopruneError, match="auto measures the channel step of a CPU runtime, but candidates are "
                                             "timed on cuda: give the multiple"):
        resolve_for_run(on_gpu, RunDir(tmp_path), {}, print, probe=fake_probe(16, []))
    with pytest.raises(AutopruneError, match="holds no measured step: the search never started"):
        resolve_of_run(load_config(None, ["space.round_to=auto"]), {})
    with pytest.raises(AutopruneError, match="config key 'space.small_step' must be a divisor of space.round_to"):
        load_config(None, ["space.round_to=16", "space.small_step=6"])
    with pytest.raises(AutopruneError, match="round_to auto measures both"):
        load_config(None, ["space.round_to=auto", "space.small_step=4"])
    with pytest.raises(AutopruneError, match="auto is measured when a search starts"):
        SearchSpace.from_config(load_config(None, ["space.round_to=auto"]), [])


@pytest.mark.slow
def test_a_search_in_onnxruntime_prunes_to_the_measured_step_and_finalize_keeps_it(tmp_path, capsys):
    import torch

    import autoprune
    from autoprune.cli import main

    run = tmp_path / "run"
    sets = ["latency.runtime=onnxruntime", "space.round_to=auto", "searcher.proxy_trials=8", "trials=1",
            "finetune.epochs=0.1", "latency.calibration=2", "constraints=[]"]  # a 0.1-epoch fine-tune meets none
    assert main(["search", "search_spaces/resnet20_fashionmnist.yaml", *(a for s in sets for a in ("--set", s)),
                 "--out", str(run)]) == 0
    assert "space.round_to auto: channel step in onnxruntime: " in capsys.readouterr().out
    saved = json.loads((run / MARKER).read_text())
    step, small = saved["round_to"], saved["small_step"] or saved["round_to"]
    out = tmp_path / "final"
    assert main(["finalize", str(run), "--pick", "best", "--epochs", "0", "--no-kd", "--no-int8", "--out",
                 str(out)]) == 0
    widths = [m.out_channels for m in autoprune.load(out).modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % step == 0 or (w < step and w % small == 0) for w in widths), (step, small, widths)
