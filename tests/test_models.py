"""Every architecture builds, with and without a local weights file, with the right head and preprocessing."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch
from torchvision.models import get_model

from core.errors import UserError
from training.config import DEFAULTS
from training.models import build_model, find_head, model_from_checkpoint, weights_preprocess

NAMED = ["resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"]
# the two largest (54 and 118 million parameters, a weights file of up to 470 MB) only in the whole suite
LARGEST = ("efficientnet_v2_m", "efficientnet_v2_l")
SIZED = [pytest.param(a, marks=pytest.mark.slow) if a in LARGEST else a for a in NAMED]
OTHERS = ["vgg11_bn", "densenet121", "mobilenet_v3_small", "convnext_tiny", "regnet_y_400mf"]


def model_cfg(**kw) -> dict:
    return {**DEFAULTS["model"], **kw}


@pytest.mark.parametrize("arch", SIZED)
def test_named_archs_build_with_and_without_a_local_weights_file(arch, tmp_path):
    torch.manual_seed(0)
    imagenet_shaped = get_model(arch, weights=None)
    weights = tmp_path / f"{arch}.pth"
    torch.save(imagenet_shaped.state_dict(), weights)

    model, preprocess, head = build_model(model_cfg(arch=arch, pretrained=str(weights)), num_classes=7)
    assert model.get_submodule(head).out_features == 7
    loaded = dict(model.named_parameters())
    for name, param in imagenet_shaped.named_parameters():
        if not name.startswith(head):
            assert torch.equal(loaded[name], param), name  # the body comes from the file
    assert preprocess == weights_preprocess(arch)

    fresh, _, _ = build_model(model_cfg(arch=arch), num_classes=3)
    with torch.no_grad():
        assert fresh.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("arch", OTHERS)
def test_other_torchvision_classifiers_work_by_name(arch):
    model, _, head = build_model(model_cfg(arch=arch), num_classes=5)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_preprocessing_comes_from_the_weights():
    v2l = weights_preprocess("efficientnet_v2_l")
    assert v2l == {
        "resize_size": 480,
        "crop_size": 480,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    assert weights_preprocess("resnet50")["resize_size"] == 232  # IMAGENET1K_V2 evaluates at 232 -> 224
    assert weights_preprocess("resnet50", "IMAGENET1K_V1")["resize_size"] == 256
    _, pre, _ = build_model(model_cfg(arch="efficientnet_v2_s"), 10, {"crop_size": 224, "resize_size": 224})
    assert (pre["crop_size"], pre["resize_size"], pre["interpolation"]) == (224, 224, "bilinear")


def test_dropout_and_stochastic_depth():
    model, _, head = build_model(model_cfg(arch="efficientnet_v2_s", dropout=0.4, stochastic_depth_prob=0.3), 10)
    assert model.classifier[0].p == 0.4 and head == "classifier.1"
    assert max(m.p for m in model.modules() if type(m).__name__ == "StochasticDepth") == pytest.approx(0.3, abs=0.01)
    resnet, _, head = build_model(model_cfg(arch="resnet18", dropout=0.2), 10)
    assert isinstance(resnet.fc[0], torch.nn.Dropout) and resnet.fc[1].out_features == 10
    with pytest.raises(UserError, match="resnet18 has no stochastic depth"):
        build_model(model_cfg(arch="resnet18", stochastic_depth_prob=0.1), 10)


def test_our_checkpoint_as_pretrained_weights_and_rebuild(tmp_path):
    model, pre, head = build_model(model_cfg(arch="resnet18", dropout=0.2), 10, {"crop_size": 32, "resize_size": 32})
    checkpoint = {
        "arch": "resnet18",
        "num_classes": 10,
        "labels": list("abcdefghij"),
        "preprocess": pre,
        "config": {"model": model_cfg(arch="resnet18", dropout=0.2)},
        "model": model.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "c.pt")
    again = model_from_checkpoint(checkpoint)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), again(x))
    transfer, pre2, _ = build_model(model_cfg(arch="resnet18", pretrained=str(tmp_path / "c.pt")), 4)
    assert pre2["crop_size"] == 32 and transfer.fc.out_features == 4
    assert torch.equal(transfer.conv1.weight, model.conv1.weight)


def test_unknown_arch_and_mismatched_weights(tmp_path):
    # the nearest names, not torchvision's ~80
    with pytest.raises(
        UserError, match=r"^unknown model.arch 'resnet19': did you mean resnet18 or resnet152 or \S+\?$"
    ):
        build_model(model_cfg(arch="resnet19"), 10)
    with pytest.raises(UserError, match=r"^unknown model.arch 'vit': did you mean vit_b_16 or vit_b_32 or "):
        build_model(model_cfg(arch="vit"), 10)
    with pytest.raises(
        UserError, match=r"^unknown model.arch 'qqq': torchvision has no model of that name or near it \("
    ):
        build_model(model_cfg(arch="qqq"), 10)
    torch.save(get_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match="do not fit ResNet: missing"):
        build_model(model_cfg(arch="resnet34", pretrained=str(tmp_path / "r18.pth")), 10)
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read weights file"):
        build_model(model_cfg(arch="resnet18", pretrained=str(tmp_path / "junk.pth")), 10)


def test_find_head():
    assert find_head(get_model("resnet18")) == "fc"
    assert find_head(get_model("efficientnet_v2_s")) == "classifier.1"
    assert find_head(get_model("convnext_tiny")) == "classifier.2"


def closed_port() -> int:
    """A local TCP port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imagenet_download_failure_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    """torchvision's real download, through a proxy that refuses: the same failure with or without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache, so the download is attempted
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed_port()}")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen reads the proxy variables again
    with pytest.raises(UserError) as e:
        build_model(model_cfg(arch="resnet18", pretrained="imagenet"), 10)
    message = str(e.value)
    assert "could not download ResNet18_Weights.IMAGENET1K_V1 from https://download.pytorch.org/" in message
    assert "Connection refused" in message  # the reason is the download's own
    assert "model.pretrained=/path/to/resnet18-" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-") in message  # where torch's cache would pick it up
