"""SynCLR's momentum multi-positive loss, the key queue and the iBOT patch loss against float64
references written from the equations (SynCLR, CVPR 2024; iBOT, ICLR 2022), one process and two
gloo ranks."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from solo_stablerep.losses import (
    LabelledKeyQueue,
    ibot_patch_loss,
    momentum_multi_positive_loss,
    sinkhorn_knopp,
)

TAU = 0.08
LOCALS = 3  # local crops per image in these tests


def query_loss(q, keys, key_labels, label, excluded, temperature):
    """-(1/|P|) sum_{j in P} log softmax_j over the columns not excluded, in float64."""
    q = q.double() / q.double().norm()
    cols = [j for j in range(len(keys)) if j not in excluded]
    logits = torch.stack(
        [q @ (keys[j].double() / keys[j].double().norm()) / temperature for j in cols]
    )
    log_softmax = logits - torch.log(torch.exp(logits).sum())
    positives = [k for k, j in enumerate(cols) if key_labels[j] == label]
    if not positives:
        return None
    return -sum(log_softmax[k] for k in positives) / len(positives)


def reference_loss(
    queries, keys, labels, local_queries, owners, avoid, extra_keys=(), extra_labels=()
):
    """The module docstring's formula query by query: mean over global queries with a positive
    plus mean over local queries with a positive; columns = keys then the extra (queue) keys."""
    all_keys = list(keys) + list(extra_keys)
    all_labels = list(labels.tolist()) + list(extra_labels)
    global_losses = [
        query_loss(q, all_keys, all_labels, labels[m].item(), {m}, TAU)
        for m, q in enumerate(queries)
    ]
    local_losses = [
        query_loss(q, all_keys, all_labels, labels[o].item(), {o.item()} if avoid else set(), TAU)
        for q, o in zip(local_queries, owners, strict=True)
    ]
    mean = lambda losses: torch.stack([x for x in losses if x is not None]).mean()  # noqa: E731
    return mean(global_losses) + mean(local_losses)


def batch(seed, n_images=12, dim=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # caption 5 has one image (its global query has no positive); 0 has four, on both ranks below
    labels = torch.tensor([0, 1, 2, 0, 3, 1, 2, 0, 3, 4, 5, 0])[:n_images]
    queries = torch.randn(n_images, dim, generator=g, dtype=dtype)
    keys = torch.randn(n_images, dim, generator=g, dtype=dtype)
    local_queries = torch.randn(LOCALS * n_images, dim, generator=g, dtype=dtype)
    # solo-learn's view order: image-major local crops
    owners = torch.arange(n_images).repeat_interleave(LOCALS)
    return queries, keys, labels, local_queries, owners


@pytest.mark.parametrize("avoid", [True, False], ids=["avoid-own-image", "own-image-positive"])
def test_matches_float64_reference(avoid):
    q, k, labels, lq, owners = batch(0)
    loss = momentum_multi_positive_loss(q, k, labels, lq, owners, TAU, avoid)
    expected = reference_loss(q, k, labels, lq, owners, avoid)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_gradcheck_and_no_gradient_into_keys():
    q, k, labels, lq, owners = batch(1, n_images=6, dim=4)
    q.requires_grad_(True)
    lq.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: momentum_multi_positive_loss(a, k, labels, b, owners, TAU),
        (q, lq),
        eps=1e-6,
        atol=1e-6,
    )
    loss = momentum_multi_positive_loss(q, k, labels, lq, owners, TAU)
    assert torch.autograd.grad(loss, (k,), allow_unused=True)[0] is None  # keys are constants


def test_global_queries_only_without_locals():
    q, k, labels, _, _ = batch(2)
    loss = momentum_multi_positive_loss(q, k, labels, temperature=TAU)
    expected = torch.stack(
        [
            x
            for m in range(len(q))
            if (x := query_loss(q[m], list(k), labels.tolist(), labels[m].item(), {m}, TAU))
            is not None
        ]
    ).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_queue_keys_are_columns_and_same_caption_positives():
    q, k, labels, lq, owners = batch(3)
    queue = LabelledKeyQueue(size=24, dim=8).double()
    old_keys = torch.randn(12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    old_labels = torch.tensor([5, 5, 7, 0, 1, 8, 9, 2, 3, 6, 6, 4])  # 5: caption 5 gains positives
    queue.push(torch.nn.functional.normalize(old_keys, dim=1), old_labels)  # as the loss pushes

    loss = momentum_multi_positive_loss(q, k, labels, lq, owners, TAU, queue=queue)
    expected = reference_loss(q, k, labels, lq, owners, True, list(old_keys), old_labels.tolist())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    # this step's keys were pushed after the loss, normalised, behind the old ones
    assert bool(queue.valid.all())
    torch.testing.assert_close(queue.keys[12:], torch.nn.functional.normalize(k, dim=1))
    assert torch.equal(queue.labels[12:], labels)
    # the oldest entries are overwritten next
    queue.push(k[:4], labels[:4])
    torch.testing.assert_close(queue.keys[:4], k[:4])
    assert int(queue.position) == 4


def test_empty_queue_slots_are_no_columns():
    q, k, labels, lq, owners = batch(4)
    with_empty_queue = momentum_multi_positive_loss(
        q, k, labels, lq, owners, TAU, queue=LabelledKeyQueue(36, 8).double()
    )
    assert with_empty_queue.item() == pytest.approx(
        momentum_multi_positive_loss(q, k, labels, lq, owners, TAU).item(), rel=1e-12
    )


def test_bad_input_is_named():
    q, k, labels, lq, owners = batch(5)
    with pytest.raises(ValueError, match="not K per image"):
        momentum_multi_positive_loss(q, k, labels, lq[:-1], owners[:-1])
    with pytest.raises(ValueError, match="go together"):
        momentum_multi_positive_loss(q, k, labels, lq)
    with pytest.raises(ValueError, match="queries and keys"):
        momentum_multi_positive_loss(q, k[:3], labels)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device to detect host syncs"
)
def test_no_host_sync_on_cuda():
    # as StableRep's loss: no step may wait for the device (the queue's position stays a tensor)
    q, k, labels, lq, owners = (x.cuda() for x in batch(8, dtype=torch.float32))
    q.requires_grad_(True)
    queue = LabelledKeyQueue(24, 8).cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = momentum_multi_positive_loss(q, k, labels, lq, owners, TAU, queue=queue)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item() and q.grad.abs().sum().item() > 0


# ------------------------------------------------------------------------------------ iBOT


def reference_sinkhorn(t, temperature, iterations=3):
    q = torch.exp(t.double() / temperature)  # (M, K)
    for _ in range(iterations):
        q = q / q.sum(0, keepdim=True)  # every prototype gets the same mass
        q = q / q.sum(1, keepdim=True)  # every patch is a distribution
    return q


def reference_ibot(s, targets, masks, student_temperature):
    losses, row = [], 0
    for b in range(masks.shape[0]):
        n = int(masks[b].sum())
        if n == 0:
            continue
        log_p = torch.log_softmax(s[row : row + n].double() / student_temperature, dim=1)
        losses.append(-(targets[row : row + n] * log_p).sum(1).mean())
        row += n
    return torch.stack(losses).mean()


def ibot_batch(seed, n_images=6, tokens=16, prototypes=32):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n_images, tokens, dtype=torch.bool)
    for b in range(0, n_images, 2):  # half the images masked, at different ratios
        masks[b, torch.randperm(tokens, generator=g)[: 3 + b]] = True
    m = int(masks.sum())
    s = torch.randn(m, prototypes, generator=g, dtype=torch.float64)
    t = torch.randn(m, prototypes, generator=g, dtype=torch.float64)
    return s, t, masks


def test_sinkhorn_knopp_matches_alternating_normalisation():
    _, t, _ = ibot_batch(0)
    torch.testing.assert_close(
        sinkhorn_knopp(t, 0.07), reference_sinkhorn(t, 0.07), rtol=1e-12, atol=0
    )


def test_ibot_loss_matches_reference():
    s, t, masks = ibot_batch(1)
    targets = sinkhorn_knopp(t, 0.07)
    loss = ibot_patch_loss(s, targets, masks, 0.1)
    assert loss.item() == pytest.approx(reference_ibot(s, targets, masks, 0.1).item(), rel=1e-12)


# ---------------------------------------------------------------- torch.distributed (gloo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world_size, port, data, splits, results, max_rows, use_queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        q, k, labels, lq, owners, s, t, masks = data
        start, n = sum(splits[:rank]), splits[rank]
        q = q[start : start + n].clone().requires_grad_(True)
        lq = lq[LOCALS * start : LOCALS * (start + n)].clone().requires_grad_(True)
        queue = LabelledKeyQueue(24, k.shape[1]).double() if use_queue else None
        args = (k[start : start + n], labels[start : start + n], lq, owners[: LOCALS * n], TAU)
        loss = momentum_multi_positive_loss(q, *args, queue=queue, max_rows_per_rank=max_rows)
        if use_queue:  # a second step: the first step's keys are now queue columns
            loss = loss + momentum_multi_positive_loss(
                q, *args, queue=queue, max_rows_per_rank=max_rows
            )
        # iBOT on the same split of images: rank r holds the masked patches of its images
        patch_start = int(masks[:start].sum())
        n_patches = int(masks[start : start + n].sum())
        s_local = s[patch_start : patch_start + n_patches].clone().requires_grad_(True)
        targets = sinkhorn_knopp(t[patch_start : patch_start + n_patches], 0.07)
        ibot = ibot_patch_loss(s_local, targets, masks[start : start + n], 0.1)
        (loss + ibot).backward()
        results[rank] = (loss.detach(), q.grad, lq.grad, ibot.detach(), s_local.grad)
    finally:
        dist.destroy_process_group()


# max_rows None: the ranks exchange their row counts; 8: every rank pads to it. Each spawn costs
# seconds, so four of the eight combinations, each split and each padding with and without queue.
@pytest.mark.parametrize(
    "splits, max_rows, use_queue",
    [((6, 6), None, False), ((6, 6), 8, True), ((7, 5), None, True), ((7, 5), 8, False)],
    ids=["equal", "equal-padded-queue", "uneven-queue", "uneven-padded"],
)
def test_two_gloo_ranks_equal_one_process(splits, max_rows, use_queue):
    q, k, labels, lq, owners = batch(6)
    s, t, masks = ibot_batch(7, n_images=12)

    q1, lq1 = q.clone().requires_grad_(True), lq.clone().requires_grad_(True)
    queue = LabelledKeyQueue(24, k.shape[1]).double() if use_queue else None
    single = momentum_multi_positive_loss(q1, k, labels, lq1, owners, TAU, queue=queue)
    if use_queue:
        single = single + momentum_multi_positive_loss(q1, k, labels, lq1, owners, TAU, queue=queue)
    s1 = s.clone().requires_grad_(True)
    single_ibot = ibot_patch_loss(s1, sinkhorn_knopp(t, 0.07), masks, 0.1)
    (single + single_ibot).backward()

    owners_local = torch.arange(max(splits)).repeat_interleave(LOCALS)
    data = (q, k, labels, lq, owners_local, s, t, masks)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(
            _rank_worker,
            args=(2, _free_port(), data, list(splits), results, max_rows, use_queue),
            nprocs=2,
            join=True,
        )
        results = dict(results)

    # DDP averages losses and gradients over ranks: that average is the one-process value
    assert ((results[0][0] + results[1][0]) / 2).item() == pytest.approx(single.item(), rel=1e-12)
    torch.testing.assert_close(
        torch.cat([results[0][1], results[1][1]]) / 2, q1.grad, rtol=1e-10, atol=1e-14
    )
    torch.testing.assert_close(
        torch.cat([results[0][2], results[1][2]]) / 2, lq1.grad, rtol=1e-10, atol=1e-14
    )
    assert ((results[0][3] + results[1][3]) / 2).item() == pytest.approx(
        single_ibot.item(), rel=1e-12
    )
    torch.testing.assert_close(
        torch.cat([results[0][4], results[1][4]]) / 2, s1.grad, rtol=1e-10, atol=1e-14
    )
