"""The multi-positive contrastive loss against an independent float64 reference."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from solo_stablerep.losses import multi_positive_contrastive_loss


def reference_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """The formula of solo_stablerep/losses/multi_positive.py's docstring (docs/architecture.md,
    "The loss") written row by row, in float64, no shortcuts."""
    z = z.double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z.shape[0]
    row_losses = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        a = torch.stack([z[i] @ z[j] / temperature for j in others])
        log_denominator = torch.log(torch.exp(a).sum())
        log_p = {j: a[k] - log_denominator for k, j in enumerate(others)}
        row_losses.append(-sum(log_p[j] for j in positives) / len(positives))
    return float(torch.stack(row_losses).mean())


def unequal_groups(generator: torch.Generator) -> torch.Tensor:
    # caption 0: 4 views, caption 1: 1 view (no positive), caption 2: 2, caption 3: 3
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3, 3, 3])
    return labels[torch.randperm(len(labels), generator=generator)]


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_float64_reference_with_unequal_groups(temperature):
    g = torch.Generator().manual_seed(0)
    labels = unequal_groups(g)
    z = torch.randn(len(labels), 16, generator=g)
    loss = multi_positive_contrastive_loss(z, labels, temperature)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_loss(z, labels, temperature), rel=1e-5)


def test_rows_without_positive_are_left_out_of_the_mean():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    with_singletons = multi_positive_contrastive_loss(z, labels)
    # The same four rows with positives, and the singletons' columns still as negatives:
    # the value is the mean of exactly those four rows.
    assert with_singletons.item() == pytest.approx(reference_loss(z, labels, 0.1), rel=1e-5)
    z.requires_grad_(True)
    only_singletons = multi_positive_contrastive_loss(z, torch.arange(6))
    only_singletons.backward()
    assert only_singletons.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_far_from_the_simclr_inside_the_log_form():
    # With more than one positive per row, -log(sum_pos e^a / sum_all e^a) is a different
    # quantity; a loss that accidentally implements it must fail this check.
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    z = torch.randn(6, 8, generator=g)
    ours = multi_positive_contrastive_loss(z, labels, 0.1).item()
    zn = torch.nn.functional.normalize(z.double(), dim=1)
    sim = torch.exp(zn @ zn.T / 0.1)
    sim.fill_diagonal_(0)
    pos = labels[:, None] == labels[None, :]
    inside_log = -torch.log((sim * pos).sum(1) / sim.sum(1)).mean().item()
    assert abs(ours - inside_log) > 1e-2


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    labels = unequal_groups(g)
    z = torch.randn(len(labels), 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: multi_positive_contrastive_loss(x, labels, 0.2), (z,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(64).repeat(4)
    z = (torch.randn(256, 32, generator=g) * 50).to(dtype)
    loss = multi_positive_contrastive_loss(z, labels, 0.05)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference_loss(z.float(), labels, 0.05), rel=1e-4)


def test_large_logits_stay_finite():
    # Identical embeddings within a caption give logits of 1/tau = 1000: exp() overflows
    # float32 without the row-max subtraction.
    labels = torch.tensor([0, 0, 1, 1])
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    loss = multi_positive_contrastive_loss(z, labels, temperature=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "z_shape, labels_shape, temperature, match",
    [
        ((4,), (4,), 0.1, "z must be"),
        ((4, 3), (5,), 0.1, "labels must be"),
        ((4, 3), (4,), 0.0, "temperature"),
    ],
)
def test_bad_input_is_named(z_shape, labels_shape, temperature, match):
    with pytest.raises(ValueError, match=match):
        multi_positive_contrastive_loss(
            torch.randn(*z_shape), torch.zeros(labels_shape, dtype=torch.long), temperature
        )


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device to detect host syncs"
)
def test_no_host_sync_on_cuda():
    # Every step waiting for the device (an .item(), a boolean-mask index, torch.unique) would
    # stall the training loop: CUDA's sync debug mode turns any such wait into an error.
    from solo_stablerep.losses import image_text_contrastive_loss

    g = torch.Generator().manual_seed(7)
    labels = unequal_groups(g).cuda()
    z = torch.randn(len(labels), 16, generator=g).cuda().requires_grad_(True)
    texts = torch.randn(4, 16, generator=g).cuda().requires_grad_(True)
    text_labels = torch.tensor([2, 0, 3, 1]).cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = multi_positive_contrastive_loss(z, labels) + image_text_contrastive_loss(
            z, labels, texts, text_labels, 10.0
        )
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item() and z.grad.abs().sum().item() > 0


# ---------------------------------------------------------------- torch.distributed (gloo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world_size, port, z_global, labels_global, splits, results, max_rows=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        start = sum(splits[:rank])
        z = z_global[start : start + splits[rank]].clone().requires_grad_(True)
        labels = labels_global[start : start + splits[rank]]
        loss = multi_positive_contrastive_loss(z, labels, 0.1, max_rows_per_rank=max_rows)
        loss.backward()
        results[rank] = (loss.detach(), z.grad.detach())
    finally:
        dist.destroy_process_group()


# max_rows None: the ranks exchange their row counts; 8: every rank pads to it (no host sync)
@pytest.mark.parametrize("max_rows", [None, 8], ids=["counts-exchanged", "padded-to-8"])
@pytest.mark.parametrize("splits", [(6, 6), (7, 5)], ids=["equal", "uneven"])
def test_two_gloo_ranks_equal_one_process(splits, max_rows):
    g = torch.Generator().manual_seed(5)
    # Same-caption views land on both ranks, so cross-rank positives are exercised.
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 2])
    z = torch.randn(len(labels), 8, generator=g, dtype=torch.float64)

    z_single = z.clone().requires_grad_(True)
    single_loss = multi_positive_contrastive_loss(z_single, labels, 0.1)
    single_loss.backward()

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(
            _rank_worker,
            args=(2, _free_port(), z, labels, list(splits), results, max_rows),
            nprocs=2,
            join=True,
        )
        results = dict(results)

    # DDP averages over ranks: the mean of the per-rank losses is the global loss, and
    # each rank's gradient, averaged (divided by the world size), is its slice of the
    # single-process gradient.
    mean_loss = (results[0][0] + results[1][0]) / 2
    assert mean_loss.item() == pytest.approx(single_loss.item(), rel=1e-10)
    rank_grads = torch.cat([results[0][1], results[1][1]]) / 2
    torch.testing.assert_close(rank_grads, z_single.grad, rtol=1e-9, atol=1e-12)


def test_two_gloo_ranks_compare_large_labels_exactly():
    # Labels travel as raw bytes inside the rows' float32 buffer: ids beyond float precision
    # (2**62 + k) and ids whose bytes read as a float NaN or -inf must arrive unchanged, or
    # positives would merge or vanish and the loss would differ from one process's.
    big, nan_bits, minus_inf_bits = 2**62, 0x7FC00001, 0xFF800000
    ids = [big + 1, big + 2, nan_bits, nan_bits << 32, minus_inf_bits, 7]
    labels = torch.tensor(ids + ids[::-1])
    z = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(6))

    z_single = z.clone().requires_grad_(True)
    single_loss = multi_positive_contrastive_loss(z_single, labels, 0.1)
    single_loss.backward()

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(
            _rank_worker, args=(2, _free_port(), z, labels, [7, 5], results), nprocs=2, join=True
        )
        results = dict(results)

    mean_loss = (results[0][0] + results[1][0]) / 2
    assert mean_loss.item() == pytest.approx(single_loss.item(), rel=1e-5)
    rank_grads = torch.cat([results[0][1], results[1][1]]) / 2
    torch.testing.assert_close(rank_grads, z_single.grad, rtol=1e-4, atol=1e-6)
