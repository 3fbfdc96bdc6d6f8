"""One training step of each method, on fixed weights and a fixed batch: the filled-in settings,
the parameter names and shapes, the loss, every logged value and every parameter's gradient.

A refactor of ``solo_stablerep/methods`` must leave all of it identical: save it from the tree
before and the tree after, then compare::

    PYTHONPATH=/tree/before python tests/methods/step_fingerprint.py save before.pt
    PYTHONPATH=/tree/after python tests/methods/step_fingerprint.py save after.pt
    python tests/methods/step_fingerprint.py compare before.pt after.pt

The weights are drawn per parameter name (not by the model's own init, whose draws may move), so
the two trees compare the same function.
"""

import sys
import tempfile
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py

from helpers import (  # noqa: E402
    PRETRAIN_CONFIGS,
    SMOKE_OVERRIDES,
    compose_parsed_cfg,
    make_manifest_dataset,
    write_image_folder,
)

TINY_TEXT = [
    "method_kwargs.embed_dim=16",
    "method_kwargs.text_width=32",
    "method_kwargs.text_layers=1",
    "method_kwargs.text_heads=2",
    "method_kwargs.context_length=12",
]
SYNCLR = [
    "augmentations.0.crop_size=32",
    "augmentations.1.crop_size=16",
    "checkpoint.enabled=False",
    "method_kwargs.ibot_weight=0",
    "+method_kwargs.pred_hidden_dim=32",
]
VIT_IBOT = [
    "backbone.name=vit_tiny",
    "+backbone.kwargs.img_size=32",
    "method_kwargs.ibot_weight=1.0",
    "+method_kwargs.ibot_num_prototypes=64",
    "+method_kwargs.ibot_head_hidden_dim=32",
    "+method_kwargs.ibot_head_bottleneck_dim=16",
]


def cases(images: Path, five_classes: Path, manifest: Path) -> dict:
    """name -> (config folder, config name, overrides, views as (count, size), with tokens)."""
    custom, synthetic = PRETRAIN_CONFIGS / "custom", PRETRAIN_CONFIGS / "synthetic"
    stablerep = [
        "augmentations.0.crop_size=32",
        f"data.train_path={images}",
        "augmentations.0.num_crops=4",
        "checkpoint.enabled=False",
    ]
    pp = TINY_TEXT + ["augmentations.0.crop_size=32", f"data.train_path={manifest}"]
    synclr = SYNCLR + [f"data.train_path={images}"]
    global_local = [(2, 32), (8, 16)]
    return {
        "stablerep": (custom, "stablerep.yaml", stablerep, [(4, 32)], False),
        "stablerep-group2": (
            custom,
            "stablerep.yaml",
            stablerep + ["++method_kwargs.views_per_backbone_call=2"],
            [(4, 32)],
            False,
        ),
        "stablerep_pp": (
            synthetic,
            "stablerep_pp.yaml",
            pp + ["data.synthetic.n_img=2"],
            [(2, 32)],
            True,
        ),
        "clip": (synthetic, "clip.yaml", pp + ["data.synthetic.n_img=1"], [(1, 32)], True),
        "synclr": (custom, "synclr.yaml", synclr, global_local, False),
        "synclr-bn-queue": (
            custom,
            "synclr.yaml",
            synclr + ["+method_kwargs.head_norm=bn", "method_kwargs.queue_size=8"],
            global_local,
            False,
        ),
        "synclr-momentum-classifier": (
            custom,
            "synclr.yaml",
            # solo-learn's momentum classifier takes the top-5 accuracy: 5 classes
            synclr + ["++momentum.classifier=True", f"data.train_path={five_classes}"],
            global_local,
            False,
        ),
        "synclr-vit-ibot": (custom, "synclr.yaml", synclr + VIT_IBOT, global_local, False),
        "synclr-vit-ibot-group2": (
            custom,
            "synclr.yaml",
            synclr + VIT_IBOT + ["++method_kwargs.views_per_backbone_call=2"],
            global_local,
            False,
        ),
    }


def fixed_weights(model: torch.nn.Module) -> None:
    """Every parameter (not buffer) drawn from a generator seeded by its name."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 0:
                continue  # the logit scale: its init is a constant
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise * p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.01 * noise)


def batch(views, tokens_of, items=4, labelled=True):
    g = torch.Generator().manual_seed(7)
    X = [
        torch.randn(items, 3, size, size, generator=g)
        for count, size in views
        for _ in range(count)
    ]
    targets = torch.arange(items) % 2 if labelled else torch.full((items,), -1)
    out = [torch.arange(items), X, targets]
    if tokens_of is not None:
        out.append(tokens_of([f"caption {i}" for i in range(items)]))
    return out


def fingerprint(config_dir, config_name, overrides, views, with_tokens) -> dict:
    from omegaconf import OmegaConf
    from solo.methods import METHODS

    cfg = compose_parsed_cfg(config_dir, config_name, SMOKE_OVERRIDES + overrides)
    torch.manual_seed(0)
    model = METHODS[cfg.method](cfg)
    fixed_weights(model)
    logged = {}
    model.log = lambda k, v, **_: logged.__setitem__(k, torch.as_tensor(v).detach().clone())
    model.log_dict = lambda d, **_: logged.update(
        {k: torch.as_tensor(v).detach().clone() for k, v in d.items()}
    )
    tokens_of = None
    if with_tokens:
        from solo_stablerep.text import CaptionTokenizer

        tokens_of = CaptionTokenizer(model.tokenizer.context_length)
    result = {
        "method_kwargs": OmegaConf.to_container(model.cfg.method_kwargs),
        "momentum": OmegaConf.to_container(model.cfg.get("momentum") or OmegaConf.create()),
        "backbone_kwargs": OmegaConf.to_container(model.cfg.backbone.kwargs),
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        "groups": [g["name"] for g in model.learnable_params],
    }
    for step, labelled in enumerate((True, False)):  # a second step: the queue is read
        torch.manual_seed(1 + step)  # iBOT's masks
        model.zero_grad()
        loss = model.training_step(batch(views, tokens_of, labelled=labelled), step)
        loss.backward()
        result[f"loss{step}"] = loss.detach().clone()
        result[f"grads{step}"] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
    result["logged"] = logged
    return result


def save(out: str) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        images = write_image_folder(Path(tmp) / "images")
        five_classes = write_image_folder(Path(tmp) / "five", num_classes=5, per_class=1)
        manifest = Path(tmp) / "manifest"
        make_manifest_dataset(manifest, 8, 2, class_names=["a", "b"], size=32)
        results = {
            name: fingerprint(*case) for name, case in cases(images, five_classes, manifest).items()
        }
    torch.save(results, out)


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    return a == b


def compare(before: str, after: str) -> int:
    a, b = torch.load(before), torch.load(after)
    failures = 0
    for name in a:
        for key in a[name]:
            ok = name in b and key in b[name] and same(a[name][key], b[name][key])
            failures += not ok
            print(f"{name:28} {key:16} {'identical' if ok else 'DIFFERENT'}")
    print(f"{failures} differences")
    return int(failures > 0)


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    sys.exit(save(*paths) if command == "save" else compare(*paths))
