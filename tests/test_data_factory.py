"""The user's own Datasets by import path (``data.factory``): read lazily, pickled as their path, errors named."""
import pickle
from pathlib import Path

import pytest
import torch
import toy_data
from conftest import AUTOPRUNE, run_ok

from autoprune.config import load_config
from autoprune.data import DataSpec, FactoryData, load_data
from autoprune.errors import AutopruneError
from autoprune.searching.controller import data_spec
from autoprune.tasks.classification import ClassificationTask, Recipe


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    toy_data.write_images(root / "train", 90, seed=0)
    toy_data.write_images(root / "val", 15, seed=1)
    toy_data.write_images(root / "test", 30, seed=2)
    return root


def spec(root, factory="toy_data:image_files", **kwargs):
    return DataSpec("factory", factory=factory, factory_args={"root": str(root), **kwargs.pop("args", {})}, **kwargs)


def test_splits_shapes_and_classes_come_from_the_users_datasets(root):
    data = load_data(spec(root))
    assert isinstance(data, FactoryData)
    assert (data.samples("train"), data.samples("val"), data.samples("test")) == (81, 9, 30)  # 10 % of 90 held out
    assert data.num_classes == 3 and data.input_shape == (1, 12, 12) and data.preprocess() == {}
    inputs, labels = next(iter(data.loader("train", 32, shuffle=True, seed=0)))
    assert inputs.shape == (32, 1, 12, 12) and labels.dtype == torch.int64
    assert sum(len(x) for x, _ in data.loader("val", 4, limit=5)) == 5
    again = [y.tolist() for _, y in load_data(spec(root)).loader("train", 32, shuffle=True, seed=0)]
    assert again == [y.tolist() for _, y in data.loader("train", 32, shuffle=True, seed=0)]  # seeded
    own_val = load_data(spec(root, args={"with_val": True}, max_train_samples=40))
    assert (own_val.samples("train"), own_val.samples("val")) == (40, 15)
    assert load_data(spec(root, factory="toy_data:counted")).num_classes == 3


def test_held_out_validation_is_disjoint_from_training(root):
    data = load_data(spec(root, val_fraction=0.2))
    train, val = data.splits.train, data.splits.val
    assert set(train.indices).isdisjoint(val.indices) and len(train.indices) + len(val.indices) == 90


def test_subsets_of_data_sorted_by_class_draw_every_class():
    data = load_data(DataSpec("factory", factory="toy_data:sorted_by_class", max_train_samples=12))
    assert {int(y) for _, ys in data.loader("val") for y in ys} == {0, 1, 2}  # the held-out 10 %
    assert {int(y) for _, ys in data.loader("val", limit=4) for y in ys} != {0}  # the proxy subset
    assert {int(y) for _, ys in data.loader("train") for y in ys} == {0, 1, 2} and data.samples("train") == 12


def test_data_travels_as_its_spec_and_is_read_where_it_is_used(root):
    data = load_data(spec(root))
    first = next(iter(data.loader("test", 8)))[1].tolist()
    payload = pickle.dumps(ClassificationTask(data, Recipe()))
    assert len(payload) < 2000 and b"toy_data:image_files" in payload and b"vertical" not in payload
    made = toy_data.MADE["count"]
    task = pickle.loads(payload)
    assert task.data._splits is None
    assert next(iter(task.data.loader("test", 8)))[1].tolist() == first
    assert toy_data.MADE["count"] == made + 1  # the factory ran again where the task was unpickled


def test_batches_come_through_dataloader_workers(root):
    data = load_data(spec(root, workers=2))
    assert data.loader("train", 16).loader.num_workers == 2
    assert sum(len(y) for _, y in data.loader("train", 16)) == 81


@pytest.mark.parametrize("factory, needle", [
    ("toy_data.image_files", "is not 'package.module:name'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("toy_data:missing", "'missing' not found in module 'toy_data'"),
    ("toy_data:NOT_CALLABLE", "is not callable"),
    ("toy_data:as_list", "must return a mapping with 'train' and 'test'"),
    ("toy_data:without_test", "must return a mapping with 'train' and 'test'"),
    ("toy_data:a_number", "'train' from toy_data:a_number is int, not a map-style Dataset"),
    ("toy_data:no_classes", "must return 'num_classes'"),
    ("toy_data:raising", "toy_data:raising raised ValueError: no bucket at"),
])
def test_a_bad_factory_is_named(root, factory, needle):
    with pytest.raises(AutopruneError, match=needle):
        load_data(spec(root, factory=factory)).num_classes  # noqa: B018


def test_bad_factory_arguments_are_named(root):
    with pytest.raises(AutopruneError, match="'data.factory_args': toy_data:image_files does not take them"):
        load_data(spec(root, args={"colour": "red"})).num_classes  # noqa: B018


@pytest.mark.parametrize("overrides, needle", [
    (["data.dataset=cifar10"], "give it or data.dataset \\('cifar10'\\), not both"),
    (["task=toy_tasks:DenoisingTask"], "a task of your own \\('task'\\) loads its own data"),
    (["data.workers=-1"], "'data.workers' must be >= 0"),
])
def test_config_conflicts_are_named(overrides, needle):
    with pytest.raises(AutopruneError, match=needle):
        load_config(None, ["data.factory=toy_data:image_files", *overrides])


def test_the_config_names_the_factory_and_its_arguments(root, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_DATA", "/somewhere/else")  # a factory's arguments say where its data is
    config = load_config(None, ["data.factory=toy_data:image_files", f"data.factory_args.root={root}",
                                "data.workers=1"])
    assert config["data.dataset"] == "factory"
    assert data_spec(config) == spec(root, workers=1)
    with pytest.raises(AutopruneError, match="dataset 'factory' needs data.factory"):
        load_config(None, ["data.dataset=factory"])
    with pytest.raises(AutopruneError, match="dataset 'factory' needs data.factory"):
        load_data(DataSpec("factory"))


def test_each_factory_and_arguments_get_their_own_base_and_a_base_of_other_data_is_refused(root, tmp_path):
    from autoprune.searching.controller import build_task, default_base_path, ensure_base

    sets = ["data.factory=toy_data:image_files", f"data.factory_args.root={root}"]
    config = load_config(None, sets)
    other = load_config(None, [*sets, "data.factory_args.with_val=true"])
    assert default_base_path(config) != default_base_path(other) != default_base_path(load_config(None, []))
    assert "toy_data_image_files" in default_base_path(config).name
    embedded = load_config(None, [f"base.checkpoint={tmp_path / 'base.pt'}", "base.epochs=0.05",
                                  "data.max_train_samples=64"])
    data = load_data(data_spec(embedded))
    ensure_base(embedded, data, build_task(embedded, data), lambda m: None)  # trains and saves it
    mine = load_config(None, [*sets, f"base.checkpoint={tmp_path / 'base.pt'}"])
    data = load_data(data_spec(mine))
    with pytest.raises(AutopruneError, match="'base.checkpoint'.*was trained on 'embedded', the config's data is "
                                             "'toy_data:image_files'"):
        ensure_base(mine, data, build_task(mine, data), lambda m: None)


def test_a_search_on_your_own_datasets_through_the_cli(root, tmp_path):
    """Base trained on the factory's Datasets, searched (DataLoader workers in the trials), knee exported: the
    export's re-evaluated test accuracy is the search's."""
    (tmp_path / "own.yaml").write_text(f"""
model: resnet20
data: {{factory: "toy_data:image_files", factory_args: {{root: "{root}"}}, workers: 1}}
base: {{checkpoint: {tmp_path / 'base.pt'}, epochs: 2}}
space: {{ratio: {{high: 0.5}}, criteria: [l1]}}
finetune: {{epochs: 1}}
searcher: {{name: random, warm_start: 2}}
trials: 2
concurrency: 2
latency: {{repeats: 20, reference_repeats: 40}}
""")
    tests = (Path(__file__).parent,)
    searched = run_ok([*AUTOPRUNE, "search", tmp_path / "own.yaml", "--out", tmp_path / "run"], tmp_path, tests)
    assert "2 trials finished" in searched
    run_ok([*AUTOPRUNE, "export", tmp_path / "run", "--pick", "knee", "--out", tmp_path / "x", "--no-onnx"], tmp_path,
           tests)  # the ONNX files: tests/test_deploy.py
    assert (tmp_path / "x" / "model.pt").is_file()
