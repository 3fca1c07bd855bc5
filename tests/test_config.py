import pytest

from autoprune import AutopruneError
from autoprune.config import DEFAULTS, Constraint, load_config, violations
from autoprune.searching.searchers import SEARCHERS

SPACES = ["resnet20_fashionmnist", "resnet56_cifar10", "vgg16_cifar10", "mobilenetv2_cifar10"]


@pytest.mark.parametrize("name", SPACES)
def test_shipped_search_spaces_load(name):
    c = load_config(f"search_spaces/{name}.yaml")
    assert c["name"] == name and c["searcher.name"] in SEARCHERS


def test_defaults_and_overrides(tmp_path):
    c = load_config(None, ["trials=5", "searcher.name=tpe", "space.groups.layer3.0.conv2.high=0.6",
                           "constraints=['latency_ms <= 2.0']", "finetune.kd=false"])
    assert c["trials"] == 5 and c["searcher.name"] == "tpe" and c["finetune.kd"] is False
    assert c["space.groups"] == {"layer3.0.conv2": {"high": 0.6}}
    assert c["concurrency"] == DEFAULTS["concurrency"]
    assert [x.metric for x in c.constraints] == ["latency_ms"]


@pytest.mark.parametrize("doc, needle", [
    ("trials: 4\ncolour: red\n", "unknown config key 'colour'"),
    ("finetune:\n  epochz: 1\n", "unknown config key 'finetune.epochz'"),
    ("trials: many\n", "config key 'trials' must be int"),
    ("finetune: 3\n", "config key 'finetune' must be a mapping"),
    ("space:\n  criteria: [l1, l7]\n", "unknown criterion 'l7'"),
    ("searcher: {name: cmaes}\n", "unknown searcher 'cmaes'"),
    ("space:\n  ratio: {low: 0.5, high: 0.2}\n", "config key 'space.ratio'"),
    ("constraints: ['latency_ms < = 2']\n", "constraints[0]"),
    ("constraints: ['test_accuracy >= 0.5']\n", "unknown metric 'test_accuracy'"),
    ("concurrency: 0\n", "config key 'concurrency' must be >= 1"),
    ("finetune: {precision: fp8}\n", "config key 'finetune.precision' must be one of auto, fp32, bf16, fp16"),
    ("time_budget_s: 0\n", "config key 'time_budget_s' must be > 0 seconds or null"),
    ("time_budget_s: soon\n", "config key 'time_budget_s' must be float"),
    ("searcher: {seed_from: fastnas}\n", "config key 'searcher.seed_from' must be uniform or sensitivity"),
    ("objectives: [accuracy]\n", "config key 'objectives' must name two or three objectives"),
    ("objectives: [accuracy, size_bytes, latency_ms, macs]\n", "config key 'objectives' must name two or three"),
    ("objectives: [accuracy, accuracy]\n", "config key 'objectives' names an objective twice"),
    ("objectives: [accuracy, flops]\n", "config key 'objectives': unknown objective 'flops'"),
    ("scheduler: hyperband\n", "config key 'scheduler'"),
    ("metric: {name: psnr, mode: up}\n", "metric 'psnr': mode must be 'max' or 'min', got 'up'"),
    ("metric: {name: top-1}\n", "metric name 'top-1' must be an identifier"),
    ("metric: {name: latency_ms, mode: min}\n", "metric name 'latency_ms' is a cost autoprune measures itself"),
    ("metric: {name: psnr}\nobjectives: [accuracy, macs]\n", "unknown objective 'accuracy', use two or three of psnr"),
    ("metric: {name: psnr}\nconstraints: ['accuracy >= 0.5']\n", "unknown metric 'accuracy' in constraint"),
    ("metric: {name: error, mode: min}\n", "metric name 'error' is taken by the results"),
    ("trials: [1,\n", "is not valid YAML at line"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_configs_name_the_key(tmp_path, doc, needle):
    p = tmp_path / "c.yaml"
    p.write_text(doc)
    with pytest.raises(AutopruneError) as e:
        load_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(AutopruneError, match="unknown config key 'trails'"):
        load_config(None, ["trails=3"])
    with pytest.raises(AutopruneError, match="--set expects key=value"):
        load_config(None, ["trials"])
    with pytest.raises(AutopruneError, match="nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_constraints_relative_to_base():
    base = {"accuracy": 0.9, "latency_ms": 10.0}
    c = Constraint.parse("accuracy >= base - 0.01", "k")
    assert c.violation({"accuracy": 0.895}, base) == pytest.approx(-0.005)
    assert c.violation({"accuracy": 0.85}, base) == pytest.approx(0.04)
    half = Constraint.parse("latency_ms <= base * 0.5", "k")
    assert half.violation({"latency_ms": 4.0}, base) == pytest.approx(-1.0)
    assert violations([c, half], {"accuracy": 0.95, "latency_ms": 6.0, "base_accuracy": 0.9,
                                  "base_latency_ms": 10.0}) == {c.text: pytest.approx(-0.06),
                                                                half.text: pytest.approx(1.0)}


def test_objectives_are_configurable():
    assert [o.name for o in load_config(None).objectives] == ["accuracy", "size_bytes", "latency_ms"]
    c = load_config(None, ["objectives=[macs, accuracy]"])
    assert [(o.name, o.direction) for o in c.objectives] == [("macs", "minimize"), ("accuracy", "maximize")]


def test_the_metric_names_the_first_objective_and_may_be_constrained():
    c = load_config(None, ["metric={name: wer, mode: min}", "constraints=['wer <= base + 0.02']"])
    assert [(o.name, o.direction) for o in c.objectives] == [("wer", "minimize"), ("size_bytes", "minimize"),
                                                             ("latency_ms", "minimize")]
    (limit,) = c.constraints
    assert violations([limit], {"wer": 0.13, "base_wer": 0.10}) == {limit.text: pytest.approx(0.01)}
    psnr = load_config(None, ["metric.name=psnr", "objectives=[psnr, macs]"])
    assert [(o.name, o.direction) for o in psnr.objectives] == [("psnr", "maximize"), ("macs", "minimize")]
