"""solo-learn's optimisation switches with every method through the entry point (the feature table
of docs/pretraining.md): LARS with ``exclude_bias_n_norm`` and ``clip_lr`` and gradient
accumulation, switched on together in one short run per method. (``sync_batchnorm`` needs CUDA
under DDP: bench/gpu_smoke.py's ``paper_ddp``.)"""

import pytest
import torch
from helpers import FEATURE_METHODS, labelled_synthetic_data, requires_solo, tiny_synthetic_run_cfg

pytestmark = [pytest.mark.slow, requires_solo]

OPTIMISATION_SWITCHES = [
    "optimizer.name=lars",
    "~optimizer.kwargs",  # the configs' AdamW betas: LARS takes other keywords
    "+optimizer.kwargs.momentum=0.9",
    "+optimizer.kwargs.eta=0.02",
    "+optimizer.kwargs.clip_lr=True",
    "+optimizer.kwargs.exclude_bias_n_norm=True",
    "+accumulate_grad_batches=2",
    "optimizer.batch_size=2",  # 8 captions: 4 batches an epoch
    "limit_train_batches=4",
]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return labelled_synthetic_data(tmp_path_factory.mktemp("labelled"))


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_lars_and_gradient_accumulation_train(method, labelled, tmp_path, monkeypatch):
    from solo.utils.lars import LARS

    from solo_stablerep.pretrain import run_pretrain

    monkeypatch.chdir(tmp_path)
    data, val = labelled
    cfg = tiny_synthetic_run_cfg(method, data, val, tmp_path, *OPTIMISATION_SWITCHES)
    trainer = run_pretrain(cfg)
    model = trainer.lightning_module

    assert trainer.global_step == 2  # 4 batches, 2 per optimiser step
    assert isinstance(trainer.optimizers[0], LARS)
    # exclude_bias_n_norm: LARS leaves 1-d parameters (biases, norms) to plain SGD
    assert all(group.get("exclude_bias_n_norm") for group in trainer.optimizers[0].param_groups)
    # LARS stepped: the parameters that had a gradient hold its momentum buffer
    assert all("momentum_buffer" in state for state in trainer.optimizers[0].state.values())
    assert len(trainer.optimizers[0].state) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
