"""A checkpoint's backbone rebuilt from its args.json and weights (strict, weights_only), the
random floor, the export to timm/torchvision, and one-line errors for what is not a checkpoint."""

import json

import pytest
import torch
from conftest import write_checkpoint
from helpers import requires_solo

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.backbone import load_backbone, read_spec
from solo_stablerep.eval.export import export_backbone

pytestmark = requires_solo


def test_backbone_carries_the_checkpoints_weights(checkpoint):
    spec = read_spec(str(checkpoint))
    assert (spec.backbone_name, spec.method, spec.crop_size, spec.label) == (
        "resnet18",
        "simclr",
        32,
        "simclr-handmade",
    )
    backbone = load_backbone(spec)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, saved[f"backbone.{name}"])
    assert not backbone.training
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_identity_is_the_checkpoints_content(checkpoint):
    before = read_spec(str(checkpoint)).identity
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["backbone.conv1.weight"] += 1
    torch.save(state, checkpoint)
    assert read_spec(str(checkpoint)).identity != before


def test_cifar_pretraining_gives_the_cifar_stem(tmp_path):
    from torch import nn

    from solo_stablerep._solo import _quiet_imports

    with _quiet_imports():
        from solo.methods.base import BaseMethod
    model = BaseMethod._BACKBONES["resnet18"]("simclr")
    model.fc = nn.Identity()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    model.maxpool = nn.Identity()
    path = tmp_path / "run" / "c-ep=0.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    args = {"method": "simclr", "backbone": {"name": "resnet18"}, "data": {"dataset": "cifar10"}}
    (path.parent / "args.json").write_text(json.dumps(args))
    spec = read_spec(str(path))
    assert spec.cifar_stem and spec.mean == (0.4914, 0.4822, 0.4465)
    assert load_backbone(spec).conv1.kernel_size == (3, 3)
    with pytest.raises(EvalError, match="CIFAR stem"):
        export_backbone(spec, tmp_path / "out.safetensors")


def test_random_backbone_is_seeded():
    spec = read_spec("random:resnet18")
    assert spec.label == "random:resnet18" and spec.checkpoint is None
    first, second = load_backbone(spec), load_backbone(spec)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_export_resnet_loads_in_timm_and_torchvision(checkpoint, tmp_path):
    import timm
    import torchvision
    from safetensors.torch import load_file

    spec = read_spec(str(checkpoint))
    out = tmp_path / "exported" / "resnet18.safetensors"
    assert export_backbone(spec, out) == "resnet18"
    ours = load_backbone(spec)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ours(images)
        model = timm.create_model(
            "resnet18", pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(out)}
        )
        torch.testing.assert_close(model.eval()(images), expected)
        resnet = torchvision.models.resnet18()
        resnet.fc = torch.nn.Identity()
        state = load_file(out)
        resnet.load_state_dict(state, strict=True)  # no missing, no unexpected key
        torch.testing.assert_close(resnet.eval()(images), expected)


def test_export_vit_loads_in_timm(tmp_path):
    import timm
    from safetensors.torch import load_file

    path = write_checkpoint(
        tmp_path / "run", backbone="vit_tiny", kwargs={"img_size": 32}, method="stablerep"
    )
    spec = read_spec(str(path))
    out = tmp_path / "vit.safetensors"
    assert export_backbone(spec, out) == "vit_tiny_patch16_224"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=True,
            num_classes=0,
            img_size=32,
            pretrained_cfg_overlay={"file": str(out)},
        )
        torch.testing.assert_close(model.eval()(images), load_backbone(spec)(images))
        bare = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
        assert bare.load_state_dict(load_file(out), strict=True)  # no missing, no unexpected key


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.write_bytes(b"not a checkpoint"), "not a checkpoint torch can read safely"),
        (lambda p: torch.save({"weights": 1}, p), "no state_dict in it"),
        (
            lambda p: torch.save({"state_dict": {"encoder.x": torch.ones(1)}}, p),
            "no backbone.\\* weights",
        ),
        (
            lambda p: torch.save({"state_dict": {"backbone.conv1.weight": torch.ones(1)}}, p),
            "do not fit resnet18",
        ),
    ],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, setup, message):
    path = tmp_path / "x.ckpt"
    setup(path)
    (tmp_path / "args.json").write_text(
        json.dumps({"method": "simclr", "backbone": {"name": "resnet18"}})
    )
    with pytest.raises(EvalError, match=message) as error:
        load_backbone(read_spec(str(path)))
    assert "\n" not in str(error.value)


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    (tmp_path / "args.json").write_text(
        json.dumps({"method": "simclr", "backbone": {"name": "resnet18"}})
    )
    with pytest.raises(EvalError, match="not a checkpoint torch can read safely"):
        load_backbone(read_spec(str(path)))


def test_bad_specs_are_one_line_errors(tmp_path):
    with pytest.raises(EvalError, match="no such checkpoint file"):
        read_spec(str(tmp_path / "missing.ckpt"))
    (tmp_path / "a.ckpt").write_bytes(b"")
    with pytest.raises(EvalError, match="no args.json beside it"):
        read_spec(str(tmp_path / "a.ckpt"))
    (tmp_path / "args.json").write_text(json.dumps({"backbone": {"name": "resnet9"}}))
    with pytest.raises(
        EvalError, match="unknown backbone 'resnet9'; solo-learn's are resnet18, resnet50"
    ):
        read_spec(str(tmp_path / "a.ckpt"))
    with pytest.raises(EvalError, match="unknown backbone 'alexnet'"):
        read_spec("random:alexnet")
