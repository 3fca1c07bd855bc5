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
    assert len(data.train) == 6 and len(data.val) == 6 and len(data.test) == 12


def test_unknown_dataset_and_bad_fraction():
    with pytest.raises(AutopruneError, match="unknown dataset 'svhn'"):
        load_data(DataSpec("svhn"))
    with pytest.raises(AutopruneError, match="val_fraction"):
        load_data(DataSpec(val_fraction=1.5))
