"""The latency measurement path: ratio to the base x reference, cache by structure, prediction, feasibility."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune import Policy, discover, prune
from autoprune.config import Constraint
from autoprune.errors import AutopruneError
from autoprune.measure.latency import local_meter
from autoprune.measure.latency_table import LatencyTable, build_table
from autoprune.measure.metrics import Latency
from autoprune.measure.spec import LatencySpec
from autoprune.measure.structure import StructureModel, structure_key
from autoprune.models import ModelSpec, build_model
from autoprune.pruning.structural import RECORD_ATTR
from autoprune.searching.feasibility import check_constraints, corner_policies

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)


class Convs(nn.Module):
    """conv(1->8, 3x3) -> relu -> conv(8->4, 1x1) -> pool -> linear(4->3): MACs countable by hand."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 4, 1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.a(x))).mean((2, 3)))


def fake_timer(times: dict[str, float]):
    """A stand-in for measure_latency: every round of model ``n`` takes ``times[n]`` ms."""
    calls = []

    def measure(models, input_shape, **kw):
        calls.append(sorted(models))
        n = max(kw.get("repeats", 30), 30)
        return {name: Latency(times[name], 0.0, n, kw.get("batch_size", 1), 1, "cpu", (times[name],) * n)
                for name in models}
    return measure, calls


def meter_for(model, monkeypatch, times, table=None):
    import autoprune.measure.latency as lat

    timer, calls = fake_timer(times)
    monkeypatch.setattr(lat, "measure_latency", timer)
    x = torch.zeros(1, *SHAPE)
    groups = discover(model, x)
    return lat.LatencyMeter(model, LatencySpec(SHAPE), StructureModel.from_model(model, x, groups), table), groups, calls


def test_structure_key_ignores_order():
    assert structure_key({"a": 4, "b": 8}) == structure_key({"b": 8, "a": 4}) != structure_key({"a": 4, "b": 7})


def test_candidate_latency_is_its_ratio_to_the_base_times_the_reference(monkeypatch):
    # the base timed alone measures 8 ms; beside the candidate (under load) the base takes 20 ms and the
    # candidate 10 ms: the candidate is half the base, so 4 ms, whatever the load was
    model = Convs()
    meter, groups, calls = meter_for(model, monkeypatch, {"base": 8.0, "candidate": 10.0})
    assert meter.reference().latency_ms == 8.0
    import autoprune.measure.latency as lat

    monkeypatch.setattr(lat, "measure_latency", fake_timer({"base": 20.0, "candidate": 10.0})[0])
    report = meter.measure(model, {"a": 4})
    assert report.ratio == pytest.approx(0.5) and report.latency_ms == pytest.approx(4.0)
    assert report.raw_ms == 10.0 and report.raw_base_ms == 20.0 and report.reference_ms == 8.0 and not report.cached


def test_a_structure_is_timed_once_then_answered_from_the_cache(monkeypatch):
    model = Convs()
    meter, _, calls = meter_for(model, monkeypatch, {"base": 8.0, "candidate": 4.0})
    first = meter.measure(model, {"a": 4})
    again = meter.measure(model, {"a": 4})
    other = meter.measure(model, {"a": 2})
    assert calls == [["base"], ["base", "candidate"], ["base", "candidate"]]  # reference, then two structures
    assert again.cached and not first.cached and not other.cached and again.latency_ms == first.latency_ms
    assert meter.summary()["measured"] == 2 and meter.summary()["cache_hits"] == 1


def test_structure_macs_count_by_hand():
    model = Convs()
    x = torch.zeros(1, *SHAPE)
    s = StructureModel.from_model(model, x, discover(model, x))
    full = 28 * 28 * 8 * 9 + 28 * 28 * 4 * 8 + 4 * 3  # conv a, conv b, fc
    assert s.macs(s.group_channels) == full
    # half of a's 8 channels: a's outputs and b's inputs halve; b's 4 outputs at 1 of 4: b's outputs and fc's inputs
    assert s.macs({"a": 4, "b": 1}) == 28 * 28 * 4 * 9 + 28 * 28 * 1 * 4 + 1 * 3


def test_prediction_starts_proportional_to_macs_before_enough_structures_are_timed(monkeypatch):
    model = Convs()
    meter, _, _ = meter_for(model, monkeypatch, {"base": 8.0, "candidate": 4.0})
    full = meter.structure.macs(meter.structure.group_channels)
    assert meter.predict(meter.structure.group_channels) == pytest.approx(8.0)
    half = {"a": 4}
    assert meter.predict(half) == pytest.approx(8.0 * meter.structure.macs(half) / full)
    report = meter.measure(model, half)
    assert report.predicted_ms == pytest.approx(8.0 * meter.structure.macs(half) / full)
    summary = meter.summary()
    assert summary["prediction_error"] == pytest.approx(abs(report.predicted_ms - 4.0) / 4.0)
    assert summary["predicted"] == 1 and summary["predictor"] == "total MACs (line)"


def test_lookup_table_interpolates_and_predicts_from_per_layer_sums():
    table = LatencyTable([0.5, 1.0], {"a": [[1.0, 2.0], [3.0, 4.0]]})
    assert table.lookup("a", 0.5, 0.5) == 1.0 and table.lookup("a", 1.0, 1.0) == 4.0
    assert table.lookup("a", 0.75, 0.75) == pytest.approx(2.5) and table.lookup("a", 0.1, 2.0) == 2.0
    model = Convs()
    x = torch.zeros(1, *SHAPE)
    structure = StructureModel.from_model(model, x, discover(model, x))
    built = build_table(structure, LatencySpec(SHAPE, batch_size=2, repeats=30), [0.5], repeats=30)
    assert set(built.entries) == {"a", "b", "fc"} and built.fractions == [0.5, 1.0]
    assert all(v > 0 for grid in built.entries.values() for row in grid for v in row)
    total = built.total(structure, structure.group_channels)
    assert total == pytest.approx(sum(built.entries[n][-1][-1] for n in ("a", "b", "fc")))
    roundtrip = LatencyTable(**json.loads(built.to_json()))
    assert roundtrip.lookup("b", 0.7, 0.6) == built.lookup("b", 0.7, 0.6)
    with pytest.raises(AutopruneError, match="no entry for layer"):
        LatencyTable([1.0], {"a": [[1.0]]}).total(structure, structure.group_channels)


def test_missing_or_bad_table_names_the_key(tmp_path):
    with pytest.raises(AutopruneError, match="latency.table.*does not exist"):
        LatencyTable.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(AutopruneError, match="latency.table.*not a latency table"):
        LatencyTable.load(tmp_path / "bad.json")


def test_real_meter_times_a_pruned_resnet_faster_than_its_base():
    base = build_model(ModelSpec("resnet20", 10, 1)).eval()
    x = torch.zeros(1, *SHAPE)
    groups = discover(base, x)
    meter = local_meter(base, x, groups, LatencySpec(SHAPE, batch_size=8, repeats=30, reference_repeats=30))
    pruned = prune(base, Policy.uniform(groups, 0.6), x)
    report = meter.measure(pruned, getattr(pruned, RECORD_ATTR).channels_after())
    assert 0 < report.ratio < 1 and report.latency_ms == pytest.approx(report.ratio * report.reference_ms)


def test_corners_and_unmeetable_constraints_are_named():
    from autoprune.config import load_config
    from autoprune.searching.space import SearchSpace

    base = build_model(ModelSpec("resnet20", 10, 1)).eval()
    groups = discover(base, torch.zeros(1, *SHAPE))
    space = SearchSpace.from_config(load_config(None, ["space.ratio.high=0.5"]), groups)
    corners = corner_policies(space)
    assert set(corners["smallest"].ratios.values()) == {0.5} and set(corners["largest"].ratios.values()) == {0.0}
    rows = [{"model": "base", "macs": 100, "params": 10, "size_bytes": 1000, "latency_ms": 10.0},
            {"model": "smallest", "macs": 20, "params": 2, "size_bytes": 300, "latency_ms": 4.0},
            {"model": "midpoint", "macs": 50, "params": 5, "size_bytes": 600, "latency_ms": 7.0},
            {"model": "largest", "macs": 100, "params": 10, "size_bytes": 1000, "latency_ms": 10.0}]
    check_constraints(rows, [Constraint.parse("latency_ms <= 5", "c"), Constraint.parse("macs <= base * 0.3", "c"),
                             Constraint.parse("accuracy >= base - 0.01", "c")])
    with pytest.raises(AutopruneError, match=r"constraint 'latency_ms <= 3.5' cannot be met.*smallest.*4"):
        check_constraints(rows, [Constraint.parse("latency_ms <= 3.5", "c")])
    with pytest.raises(AutopruneError, match=r"constraint 'size_bytes <= base \* 0.2' cannot be met.*relax it$"):
        check_constraints(rows, [Constraint.parse("size_bytes <= base * 0.2", "c")], "; try X")  # not latency
    with pytest.raises(AutopruneError, match=r"'latency_ms <= 3.5' cannot be met.*relax it; try X$"):
        check_constraints(rows, [Constraint.parse("latency_ms <= 3.5", "c")], "; try X")


def test_space_command_prints_the_corners_and_refuses_an_unmeetable_constraint(tmp_path):
    cli = [sys.executable, "-m", "autoprune.cli", "space", str(ROOT / "search_spaces" / "resnet20_fashionmnist.yaml"),
           "--set", f"base.checkpoint={tmp_path / 'none.pt'}", "--set", "latency.batch_size=4",
           "--set", "latency.repeats=30", "--set", "latency.reference_repeats=30"]
    ok = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    for name in ("base", "smallest", "midpoint", "largest"):
        assert f" {name} " in ok.stdout
    assert "untrained" in ok.stdout  # no checkpoint: the structure is enough, nothing is trained
    bad = subprocess.run([*cli, "--set", "constraints=['macs <= 1000']"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "constraint 'macs <= 1000' cannot be met" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_latency_target_no_node_advertises_is_a_clear_error():
    code = ("import ray; ray.init(address='local', num_cpus=1, include_dashboard=False, resources={'edge_box': 1});"
            "from autoprune.measure.latency import check_target; check_target('edge_box');"
            "from autoprune.errors import AutopruneError\n"
            "try:\n check_target('phone')\nexcept AutopruneError as e:\n print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "latency.target" in out.stdout and "'phone'" in out.stdout, out.stderr[-2000:]


def test_a_resumed_meter_keeps_its_reference_and_cache_and_ignores_other_settings(monkeypatch):
    import autoprune.measure.latency as lat

    model = Convs()
    meter, _, _ = meter_for(model, monkeypatch, {"base": 8.0, "candidate": 4.0})
    first = meter.measure(model, {"a": 4})
    state = json.loads(json.dumps(meter.state()))  # as written to latency.json
    again, _, calls = meter_for(model, monkeypatch, {"base": 99.0, "candidate": 1.0})
    assert again.restore(state)
    assert again.reference().latency_ms == 8.0 and again.measure(model, {"a": 4}).latency_ms == first.latency_ms
    assert calls == []  # nothing timed again
    other = lat.LatencyMeter(model, LatencySpec(SHAPE, batch_size=64), again.structure)
    assert not other.restore(state)


def test_the_reference_is_the_lowest_median_this_target_has_seen(tmp_path, monkeypatch):
    import autoprune.measure.latency as lat

    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path))
    model = Convs()
    x = torch.zeros(1, *SHAPE)
    structure = StructureModel.from_model(model, x, discover(model, x))

    def reference_with(ms):
        monkeypatch.setattr(lat, "measure_latency", fake_timer({"base": ms})[0])
        return lat.LatencyMeter(model, LatencySpec(SHAPE), structure, store=lat.ReferenceStore.when(True)).reference() \
            .latency_ms

    assert reference_with(10.0) == 10.0
    assert reference_with(14.0) == 10.0   # measured under load: the quiet figure stands
    assert reference_with(9.0) == 9.0     # quieter still: it becomes the reference
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
    assert lat.ReferenceStore.when(False) is None
    monkeypatch.setattr(lat, "measure_latency", fake_timer({"base": 12.0})[0])
    unshared = lat.LatencyMeter(model, LatencySpec(SHAPE), structure)
    assert unshared.reference().latency_ms == 12.0


def test_the_base_structure_is_its_reference_and_timing_stops_once_the_ratio_is_precise(monkeypatch):
    model = Convs()
    meter, _, calls = meter_for(model, monkeypatch, {"base": 8.0, "candidate": 4.0})
    same = meter.measure(model, meter.structure.group_channels)
    assert same.latency_ms == 8.0 and same.ratio == 1.0 and calls == [["base"]]  # nothing timed beside it
    meter.measure(model, {"a": 4})
    assert calls == [["base"], ["base", "candidate"]]  # constant timings: one chunk of rounds is precise enough


def noisy_timer(spread: float, seed: int = 0):
    """A stand-in for measure_latency whose candidate rounds scatter by +-``spread`` around 4 ms (the base: 8 ms)."""
    import random

    rng, chunks = random.Random(seed), []

    def measure(models, input_shape, **kw):
        n = kw.get("repeats", 30)
        chunks.append(n)
        samples = {"base": [8.0] * n, "candidate": [4.0 * (1 + rng.uniform(-spread, spread)) for _ in range(n)]}
        return {name: Latency(statistics.median(samples[name]), 0.0, n, 1, 1, "cpu", tuple(samples[name]))
                for name in models}
    return measure, chunks


@pytest.mark.parametrize("spread, rounds", [(0.05, 100), (0.1, 200), (0.6, 600)])
def test_noisy_rounds_are_added_until_the_ratio_is_precise_or_the_limit_is_reached(monkeypatch, spread, rounds):
    """+-1.5 % (95 %) on the median ratio: +-5 % noise is precise after one chunk of 100 rounds (37 needed), +-10 %
    after two (148 needed), +-60 % never (600 rounds, the limit)."""
    import autoprune.measure.latency as lat

    model = Convs()
    x = torch.zeros(1, *SHAPE)
    meter = lat.LatencyMeter(model, LatencySpec(SHAPE, repeats=100, max_rounds=600),
                             StructureModel.from_model(model, x, discover(model, x)))
    timer, chunks = noisy_timer(spread)
    monkeypatch.setattr(lat, "measure_latency", timer)
    report = meter.measure(model, {"a": 4})
    assert sum(chunks[1:]) == rounds  # after the reference's own chunk
    assert abs(report.ratio - 0.5) < 0.5 * spread
