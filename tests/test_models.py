from pathlib import Path

import pytest
import torch

from bdsel.models import create_model, list_models

SIZES = {"vit_b16": 32, "resnet18": 32, "resnet18_cifar": 32, "small_cnn": 28}


@pytest.mark.parametrize("name", list_models())
def test_every_model_returns_logits_and_features(name: str):
    torch.manual_seed(0)
    model = create_model(name, n_classes=7, in_channels=1 if name == "small_cnn" else 3).eval()
    size = SIZES[name]
    x = torch.randn(2, model_in(name), size, size)
    with torch.no_grad():
        logits, features = model(x)
    assert logits.shape == (2, 7)
    assert features.shape == (2, model.n_features)
    assert model.last_layer.out_features == 7
    torch.testing.assert_close(logits, model.last_layer(features))


def model_in(name: str) -> int:
    return 1 if name == "small_cnn" else 3


def test_cifar_stem_keeps_resolution_and_7x7_halves_it():
    cifar = create_model("resnet18_cifar", n_classes=10)
    imagenet = create_model("resnet18", n_classes=10)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in cifar.modules())
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in imagenet.modules())


def test_backbone_weights_load_from_local_file(tmp_path: Path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(weights=None, num_classes=1000)
    path = tmp_path / "r18.pt"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", n_classes=5, weights=str(path))
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.last_layer.out_features == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("resnet18", n_classes=5, weights=str(tmp_path / "nope.pt"))
    torch.save({"unrelated.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the model"):
        create_model("resnet18", n_classes=5, weights=str(tmp_path / "bad.pt"))


def test_unknown_model_lists_valid():
    with pytest.raises(ValueError, match="valid: .*resnet18_cifar"):
        create_model("resnet50", n_classes=3)
