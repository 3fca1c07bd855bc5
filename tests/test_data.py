import numpy as np
import pytest
import torch

from autoprune import AutopruneError
from autoprune.data import DataSpec, load_data
from autoprune.data.datasets import EMBEDDED_FILE
from autoprune.data.make_embedded import main as make_embedded


def test_embedded_default_is_a_balanced_fashion_mnist_subset(embedded):
    assert EMBEDDED_FILE.stat().st_size <= 6 * 1024 * 1024
    assert embedded.input_shape == (1, 28, 28) and embedded.num_classes == 10
    assert len(embedded.train) + len(embedded.val) == 6000 and len(embedded.test) == 1000
    assert embedded.test.labels.bincount().tolist() == [100] * 10
    assert embedded.val.labels.bincount().tolist() == [60] * 10  # stratified 10 %
    assert embedded.train.images.dtype == torch.uint8


def test_validation_split_is_disjoint_from_train_and_seeded(embedded):
    train = {bytes(i.numpy()) for i in embedded.train.images}
    assert not any(bytes(i.numpy()) in train for i in embedded.val.images)
    other = load_data(DataSpec(seed=1))
    assert not torch.equal(other.val.labels, embedded.val.labels) or not torch.equal(other.val.images, embedded.val.images)
    again = load_data(DataSpec())
    assert torch.equal(again.val.images, embedded.val.images)


def test_loader_normalises_batches_and_augments_only_when_asked(embedded):
    plain = embedded.loader("val", 100)
    x, y = next(iter(plain))
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(plain) == 6
    allx = torch.cat([b for b, _ in embedded.loader("train", 1000)])
    assert abs(allx.mean().item()) < 0.01 and abs(allx.std().item() - 1) < 0.01
    a1 = torch.cat([b for b, _ in embedded.loader("train", 512, shuffle=True, augment=True, seed=4)])
    a2 = torch.cat([b for b, _ in embedded.loader("train", 512, shuffle=True, augment=True, seed=4)])
    torch.testing.assert_close(a1, a2)
    assert not torch.equal(a1, allx)


def test_real_fashion_mnist_and_mnist_load_from_the_data_root(data_root):
    for name in ("fashionmnist", "mnist"):
        data = load_data(DataSpec(name, str(data_root)))
        assert len(data.train) + len(data.val) == 60000 and len(data.test) == 10000
        assert data.input_shape == (1, 28, 28) and data.num_classes == 10


def test_make_embedded_reproduces_the_committed_file(data_root, tmp_path):
    out = tmp_path / "subset.npz"
    make_embedded(["--root", str(data_root), "--out", str(out)])
    with np.load(out) as fresh, np.load(EMBEDDED_FILE) as shipped:
        for key in shipped.files:
            np.testing.assert_array_equal(fresh[key], shipped[key])


@pytest.mark.parametrize("name, expected", [
    ("fashionmnist", "FashionMNIST/raw/"),
    ("mnist", "MNIST/raw/"),
    ("cifar10", "cifar-10-batches-py/"),
    ("imagefolder", "train/<class>/"),
])
def test_missing_data_root_names_root_and_expected_files(tmp_path, name, expected):
    root = tmp_path / "nodata"
    with pytest.raises(AutopruneError) as e:
        load_data(DataSpec(name, str(root)))
    msg = str(e.value)
    assert str(root) in msg and expected in msg and "\n" not in msg


def test_imagefolder_is_read_and_resized(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls, colour in (("cat", 40), ("dog", 200)):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (20, 24), (colour, i * 10, 0)).save(d / f"{i}.png")
    data = load_data(DataSpec("imagefolder", str(tmp_path), val_fraction=0.5, image_size=16))
    assert data.input_shape == (3, 16, 16) and data.num_classes == 2
    assert [data.samples(s) for s in ("train", "val", "test")] == [6, 6, 12]
    x, y = next(iter(data.loader("val", 4)))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1}


def test_imagefolder_is_read_lazily_by_dataloader_workers_and_travels_as_file_lists(tmp_path):
    import pickle

    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(10):
                Image.new("RGB", (12, 12), (i * 20, 50, 100)).save(d / f"{i}.png")
    data = load_data(DataSpec("imagefolder", str(tmp_path), val_fraction=0.2, image_size=8, workers=2))
    assert [data.samples(s) for s in ("train", "val", "test")] == [24, 6, 30]  # 2 of every class held out
    assert len(pickle.dumps(data)) < 4096  # file lists and statistics, no pixels
    for split, n in (("train", 24), ("val", 6)):
        loader = data.loader(split, 5, shuffle=True, augment=split == "train", seed=3)
        assert loader.loader.num_workers == 2  # decoded in worker processes
        batches = list(loader)
        assert sum(len(y) for _, y in batches) == n and batches[0][0].shape[1:] == (3, 8, 8)
    first = [y.tolist() for _, y in data.loader("train", 5, shuffle=True, seed=3)]
    again = [y.tolist() for _, y in pickle.loads(pickle.dumps(data)).loader("train", 5, shuffle=True, seed=3)]
    assert first == again  # the same seed draws the same order wherever the data is unpickled


def test_unknown_dataset_and_bad_fraction():
    with pytest.raises(AutopruneError, match="unknown dataset 'svhn'"):
        load_data(DataSpec("svhn"))
    with pytest.raises(AutopruneError, match="val_fraction"):
        load_data(DataSpec(val_fraction=1.5))


def test_in_memory_splits_travel_as_out_of_band_buffers(embedded):
    """Ray's object store hands protocol-5 buffers to every process of a node without copying: concurrent trials
    share one copy of the data instead of unpickling their own."""
    import pickle

    buffers: list = []
    payload = pickle.dumps(embedded.train, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2 and len(payload) < 1024  # images and labels out of band, nothing copied in
    back = pickle.loads(payload, buffers=buffers)
    assert torch.equal(back.images, embedded.train.images) and torch.equal(back.labels, embedded.train.labels)


def test_trials_of_a_node_map_one_copy_of_the_data(embedded, ray_local):
    import ray

    ref = ray.put(embedded)
    first, second = ray.get(ref), ray.get(ref)
    assert first.train.images.data_ptr() == second.train.images.data_ptr()  # both views of the object store
    assert first.train.images.data_ptr() != embedded.train.images.data_ptr()
    assert torch.equal(first.train.images[:5], embedded.train.images[:5])


def test_imagefolder_from_a_relative_root_is_found_from_any_directory_and_checks_its_listing(tmp_path, monkeypatch):
    import pickle

    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    data = load_data(DataSpec("imagefolder", "imgs", val_fraction=0.25, image_size=8))
    travelled = pickle.dumps(data)
    monkeypatch.chdir(tmp_path / "imgs" / "train")  # trials run from the run directory, or on another node
    assert sum(len(y) for _, y in pickle.loads(travelled).loader("train", 4)) == 6
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "train" / "a" / "extra.png")  # this node's copy differs
    with pytest.raises(AutopruneError, match="lists other files than where the search started"):
        list(pickle.loads(travelled).loader("train", 4))


@pytest.mark.parametrize("field, value, needle", [("workers", -1, "'data.workers' must be >= 0, got -1"),
                                                  ("max_train_samples", 0, "'data.max_train_samples' must be >= 1")])
def test_a_data_spec_refuses_bad_counts_whatever_loads_it(field, value, needle):
    with pytest.raises(AutopruneError, match=needle):
        DataSpec(**{field: value})
