import pytest
import torch
from torch import nn

from autoprune import AutopruneError
from autoprune.models import BUILTIN, ModelSpec, build_model


@pytest.mark.parametrize("arch", sorted(BUILTIN))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_builtin_models_fit_grey_and_colour_images(arch, shape):
    model = build_model(ModelSpec(arch, num_classes=7, in_channels=shape[0])).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_cifar_resnets_have_three_stages_of_16_32_64_and_6n_plus_2_layers():
    for depth in (20, 32, 56):
        model = build_model(ModelSpec(f"resnet{depth}"))
        convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
        assert len(convs) + 1 == depth  # + the classifier
        assert {m.out_channels for m in convs} == {16, 32, 64}


@pytest.mark.parametrize("arch", ["torchvision:mobilenet_v2", "torchvision:resnet18"])
def test_torchvision_models_by_name(arch):
    model = build_model(ModelSpec(arch, num_classes=10, in_channels=1)).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_user_factory_by_import_path():
    model = build_model(ModelSpec("toy_models:branchy", num_classes=4, in_channels=1))
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4)


@pytest.mark.parametrize("arch, needle", [
    ("resnet21", "unknown model 'resnet21'"),
    ("torchvision:nonet", "unknown torchvision classification model 'nonet'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("toy_models:missing", "'missing' not found in module 'toy_models'"),
    ("toy_models:not_a_model", "not a torch.nn.Module"),
])
def test_bad_model_names_are_clear_errors(arch, needle):
    with pytest.raises(AutopruneError, match=needle):
        build_model(ModelSpec(arch))


def test_spec_round_trip():
    spec = ModelSpec("vgg16_bn", 100, 1, {})
    assert ModelSpec.from_dict(spec.to_dict()) == spec
