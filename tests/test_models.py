import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bdsel.forward import autocast_for
from bdsel.models import create_model, list_models
from bdsel.step import candidate_forward

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


def test_channels_last_layout_gives_the_nchw_outputs():
    torch.manual_seed(0)
    model = create_model("small_cnn", n_classes=10, in_channels=3).double().eval()
    assert model.body[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert torch.allclose(model(x)[0], nchw(x)[0], atol=1e-10)


def test_bf16_candidate_forward_keeps_the_top_of_the_ranking():
    """A bf16 candidate forward: the selected top-32 of 320 by loss barely moves."""
    torch.manual_seed(0)
    model = create_model("small_cnn", n_classes=10, in_channels=1)
    bf16 = autocast_for(torch.device("cpu"), "bf16")
    overlaps = []
    for _ in range(5):
        x, y = torch.randn(320, 1, 28, 28), torch.randint(0, 10, (320,))
        full = candidate_forward(model, x, autocast_for(torch.device("cpu"), "fp32"))
        low = candidate_forward(model, x, bf16)
        assert low.logits.dtype == torch.float32 and not torch.equal(low.logits, full.logits)
        top = [
            set(F.cross_entropy(o.logits, y, reduction="none").topk(32).indices.tolist())
            for o in (full, low)
        ]
        overlaps.append(len(top[0] & top[1]) / 32)
    assert sum(overlaps) / len(overlaps) >= 0.95


@pytest.mark.parametrize("native", [True, False])
def test_auto_candidate_precision_is_bf16_only_where_the_cpu_computes_it(native, monkeypatch):
    """A run's candidate precision (auto): bf16 on a CPU with native bf16, fp32 on one without
    (where emulated bf16 convolutions cost far more than they save)."""
    import bdsel.forward as forward

    monkeypatch.setattr(forward, "native_bf16", lambda device: native)
    model = create_model("small_cnn", n_classes=10, in_channels=1)
    x = torch.randn(8, 1, 28, 28)
    with forward.candidate_autocast(torch.device("cpu"), "auto")():
        logits, _ = model(x)
    assert logits.dtype == (torch.bfloat16 if native else torch.float32)
    with forward.scoring(model):  # the library's context reads the same choice
        logits, _ = model(x)
    assert logits.dtype == (torch.bfloat16 if native else torch.float32)
    for forced, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with forward.candidate_autocast(torch.device("cpu"), forced)():
            assert model(x)[0].dtype == dtype
