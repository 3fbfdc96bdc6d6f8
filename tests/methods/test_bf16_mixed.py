"""``precision=bf16-mixed`` on the CPU through every loss path of this package: a training step of
stablerep, stablerep_pp and synclr under Lightning's own bf16 autocast, on a batch of the real
loader, gives a finite loss, and each of our losses gives, on the very
embeddings the bf16 step fed it, the float32 value within bf16's precision."""

import importlib

import pytest
import torch
from helpers import labelled_synthetic_data, requires_solo, tiny_synthetic_run_cfg

pytestmark = requires_solo

# bf16 keeps 8 significant bits (7 stored + the implicit one): unit roundoff u = 2^-8
BF16_UNIT_ROUNDOFF = 2.0**-8

# our losses, as the method modules call them, and the scale s of their logits (logits = s *
# cosine: 1 / temperature, or StableRep++'s logit scale)
MULTI_POSITIVE = ("stablerep", "multi_positive_contrastive_loss", lambda args, kw: 1 / args[2])
IMAGE_TEXT = ("stablerep_pp", "image_text_contrastive_loss", lambda args, kw: args[4].item())
MOMENTUM = ("synclr", "momentum_multi_positive_loss", lambda args, kw: 1 / kw["temperature"])
LOSS_PATHS = {
    "stablerep": [MULTI_POSITIVE],
    "stablerep_pp": [MULTI_POSITIVE, IMAGE_TEXT],
    "synclr": [MOMENTUM],
}


def float32(value):
    is_float = isinstance(value, torch.Tensor) and value.is_floating_point()
    return value.detach().float() if is_float else value


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return labelled_synthetic_data(tmp_path_factory.mktemp("labelled"))


@pytest.mark.parametrize("method", list(LOSS_PATHS))
def test_bf16_mixed_step_is_finite_and_each_loss_is_float32s_within_bf16(
    method, labelled, tmp_path, monkeypatch
):
    from lightning.pytorch.plugins.precision import MixedPrecision
    from solo.methods import METHODS

    from solo_stablerep.pretrain import parse_pretrain_cfg, prepare_train_data

    torch.manual_seed(0)  # the model's initial weights and the loader's order
    data, val = labelled
    cfg = parse_pretrain_cfg(tiny_synthetic_run_cfg(method, data, val, tmp_path))
    model = METHODS[method](cfg)
    model.log = model.log_dict = lambda *args, **kwargs: None  # no Trainer here
    batch = next(iter(prepare_train_data(cfg)))

    calls = []
    for module_name, name, logit_scale in LOSS_PATHS[method]:
        module = importlib.import_module(f"solo_stablerep.methods.{module_name}")

        loss_fn = getattr(module, name)

        def recording(*args, _loss=loss_fn, _scale=logit_scale, **kwargs):
            calls.append((_loss, _scale, args, kwargs, _loss(*args, **kwargs)))
            return calls[-1][-1]

        monkeypatch.setattr(module, name, recording)
    with MixedPrecision("bf16-mixed", "cpu").forward_context():  # what Trainer(precision=...) runs
        loss = model.training_step(batch, 0)
    # no check of the gradients: PyTorch 2.14's bf16 backward on a CPU is not deterministic and
    # left a non-finite backbone convolution-weight gradient in about 1 of 10 identical passes
    # (docs/pretraining.md), outside our losses
    assert torch.isfinite(loss)
    assert len(calls) == len(LOSS_PATHS[method])
    for loss_fn, logit_scale, args, kwargs, bf16_loss in calls:
        reference = loss_fn(*map(float32, args), **{k: float32(v) for k, v in kwargs.items()})
        # Our losses normalise in float32; autocast then runs the logits' matmul in bf16: both
        # unit-norm operands rounded (relative u each: |d cosine| <= (2u + u^2) by
        # Cauchy-Schwarz), the product rounded (u * |cosine| <= u), times the scale s. The
        # positives' term stays float32, and a logsumexp moves at most as far as its largest
        # input: |d loss| <= (3u + u^2) s < 4 u s.
        tolerance = 4 * BF16_UNIT_ROUNDOFF * logit_scale(args, kwargs)
        assert abs(bf16_loss.item() - reference.item()) <= tolerance, (bf16_loss, reference)
