import pytest
import torch

from autoprune import AutopruneError, Policy, discover, prune
from autoprune.data import DataSpec
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import checkpoint

SHAPE = (1, 28, 28)
PRE = {"mean": [0.5], "std": [0.25]}


def pruned_resnet():
    spec = ModelSpec("resnet20", 10, 1)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    groups = discover(model, torch.zeros(1, *SHAPE))
    policy = Policy({g.name: 0.5 if i % 2 else 0.25 for i, g in enumerate(groups)}, "l1")
    return spec, prune(model, policy, torch.zeros(1, *SHAPE)).eval()


def test_pruned_checkpoint_reloads_with_weights_only_and_identical_outputs(tmp_path):
    spec, model = pruned_resnet()
    path = tmp_path / "pruned.pt"
    checkpoint.save(checkpoint.from_model(model, spec, DataSpec(), SHAPE, PRE, {"val_accuracy": 0.5}), path)
    raw = torch.load(path, weights_only=True)  # plain tensors and primitives only
    assert raw["prune_record"]["kept"]["conv1"] == model.autoprune_record.kept["conv1"]
    ckpt = checkpoint.load(path)
    rebuilt = ckpt.build(path)
    x = torch.randn(4, *SHAPE)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert ckpt.metrics == {"val_accuracy": 0.5} and ckpt.preprocess == PRE
    assert ckpt.input_shape == SHAPE


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(AutopruneError, match="nothing.pt' does not exist"):
        checkpoint.load(tmp_path / "nothing.pt")


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    spec, model = pruned_resnet()
    path = tmp_path / "c.pt"
    checkpoint.save(checkpoint.from_model(model, spec, DataSpec(), SHAPE, PRE), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AutopruneError, match="c.pt' is corrupt or truncated"):
        checkpoint.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(AutopruneError, match="corrupt or truncated"):
        checkpoint.load(path)


def test_foreign_file_is_not_an_autoprune_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(build_model(ModelSpec("resnet20")).state_dict(), path)
    with pytest.raises(AutopruneError, match="is not an autoprune checkpoint"):
        checkpoint.load(path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    spec = ModelSpec("resnet20", 10, 1)
    model = build_model(spec)
    path = tmp_path / "b.pt"
    ckpt = checkpoint.from_model(model, spec, DataSpec(), SHAPE, PRE)
    ckpt.model_spec = ModelSpec("resnet32", 10, 1)  # weights of resnet20 claimed for resnet32
    checkpoint.save(ckpt, path)
    with pytest.raises(AutopruneError, match="b.pt' does not fit architecture 'resnet32'"):
        checkpoint.load(path).build(path)


@pytest.mark.parametrize("fails", ["writing", "renaming"])
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch, fails):
    import os

    import torch

    spec, model = pruned_resnet()
    path = tmp_path / "sub" / "p.pt"
    checkpoint.save(checkpoint.from_model(model, spec, DataSpec(), SHAPE, PRE), path)
    before = checkpoint.load(path).state_dict
    for p in model.parameters():  # the next save would write other weights
        p.data.add_(1.0)
    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise OSError("disk full")

    if fails == "writing":
        monkeypatch.setattr(checkpoint.torch, "save", half_written)
    else:
        monkeypatch.setattr(checkpoint.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(checkpoint.from_model(model, spec, DataSpec(), SHAPE, PRE), path)
    monkeypatch.undo()
    after = checkpoint.load(path).state_dict
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert [p.name for p in path.parent.iterdir()] == ["p.pt"]
    assert os.stat(path).st_size > 0


def test_the_record_of_what_ranked_each_group_survives_a_checkpoint(tmp_path):
    import torch

    from autoprune import Policy, discover, prune
    from autoprune.data import DataSpec
    from autoprune.models import ModelSpec, build_model
    from autoprune.pruning import checkpoint

    spec = ModelSpec("resnet20", 10, 1)
    model = build_model(spec).eval()
    x = torch.zeros(1, 1, 28, 28)
    pruned = prune(model, Policy.uniform(discover(model, x), 0.5, criterion="l2"), x)
    checkpoint.save(checkpoint.from_model(pruned, spec, DataSpec(), (1, 28, 28), {"mean": [0.0], "std": [1.0]}),
                    tmp_path / "p.pt")
    record = checkpoint.load(tmp_path / "p.pt").record
    assert record is not None and record.criterion_used == pruned.autoprune_record.criterion_used
    assert set(record.criterion_used.values()) == {"l2"}
