"""A checkpoint's backbone as a ``.safetensors`` file that timm (and torchvision, for ResNets) load.

solo-learn builds its ResNets with torchvision and its ViT, Swin and ConvNeXt backbones with timm's
own constructors (``num_classes=0``), so the rebuilt backbone's ``state_dict`` already carries the
ecosystem's names; the file holds it as is, with the timm model name and the checkpoint in its
metadata. Load it with::

    timm.create_model(TIMM_NAME, pretrained=True, num_classes=0,
                      pretrained_cfg_overlay={"file": "OUT.safetensors"})

or, for a ResNet, ``torchvision.models.resnet50()`` with ``fc = nn.Identity()`` and
``load_state_dict(safetensors.torch.load_file("OUT.safetensors"))``.
"""

from __future__ import annotations

import json
from pathlib import Path

from solo_stablerep.errors import EvalError
from solo_stablerep.eval.backbone import BackboneSpec, load_backbone
from solo_stablerep.storage import atomic_output

# solo-learn backbone -> the timm model its constructor builds
TIMM_NAMES = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "swin_small": "swin_small_patch4_window7_224",
    "swin_base": "swin_base_patch4_window7_224",
    "swin_large": "swin_large_patch4_window7_224",
    "convnext_tiny": "convnext_tiny",
    "convnext_small": "convnext_small",
    "convnext_base": "convnext_base",
    "convnext_large": "convnext_large",
}


def export_backbone(spec: BackboneSpec, output: Path) -> str:
    """Writes ``spec``'s backbone weights to ``output`` (atomically); returns its timm name."""
    from safetensors.torch import save

    timm_name = TIMM_NAMES.get(spec.backbone_name)
    if timm_name is None:
        raise EvalError(
            f"{spec.spec}: {spec.backbone_name} has no timm or torchvision counterpart to export "
            f"(exportable: {', '.join(TIMM_NAMES)})"
        )
    if spec.cifar_stem:
        raise EvalError(
            f"{spec.spec}: pretrained on {spec.pretrain_dataset} with solo-learn's CIFAR stem "
            f"(3x3 conv1, no max-pool), which timm's and torchvision's {timm_name} do not have"
        )
    backbone = load_backbone(spec)
    tensors = {name: value.detach().contiguous() for name, value in backbone.state_dict().items()}
    metadata = {
        "format": "pt",
        "timm_name": timm_name,
        "solo_backbone": spec.backbone_name,
        "backbone_kwargs": json.dumps(spec.backbone_kwargs),
        "method": str(spec.method),
        "source": str(spec.checkpoint),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output) as f:
        f.write(save(tensors, metadata=metadata))
    return timm_name
