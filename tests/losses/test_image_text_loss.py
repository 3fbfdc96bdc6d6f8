"""StableRep++'s image-text loss against an independent float64 reference, and under gloo."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from solo_stablerep.losses import image_text_contrastive_loss


def _direction_reference(rows, row_labels, cols, col_labels, scale):
    row_losses = []
    for i in range(rows.shape[0]):
        positives = [k for k in range(cols.shape[0]) if col_labels[k] == row_labels[i]]
        if not positives:
            continue
        a = [scale * (rows[i] @ cols[k]) for k in range(cols.shape[0])]
        log_denominator = torch.log(sum(torch.exp(x) for x in a))
        row_losses.append(-sum(a[k] - log_denominator for k in positives) / len(positives))
    return sum(row_losses) / len(row_losses)


def reference_loss(image_z, image_labels, text_z, text_labels, scale) -> float:
    """StableRep++'s image-text term (README), row by row in float64: image->text targets uniform
    over the texts of the image's caption, text->image over that caption's images, averaged."""
    u = image_z.double() / image_z.double().norm(dim=1, keepdim=True)
    v = text_z.double() / text_z.double().norm(dim=1, keepdim=True)
    i2t = _direction_reference(u, image_labels, v, text_labels, scale)
    t2i = _direction_reference(v, text_labels, u, image_labels, scale)
    return float((i2t + t2i) / 2)


def unequal_batch(generator, dim=16, dtype=torch.float32):
    # caption 0: 4 images, 1: 1 image, 2: 2 images, 3: 3 images; one text per caption
    image_labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3, 3, 3])
    image_labels = image_labels[torch.randperm(len(image_labels), generator=generator)]
    text_labels = torch.tensor([2, 0, 3, 1])
    image_z = torch.randn(len(image_labels), dim, generator=generator, dtype=dtype)
    text_z = torch.randn(len(text_labels), dim, generator=generator, dtype=dtype)
    return image_z, image_labels, text_z, text_labels


@pytest.mark.parametrize("scale", [1 / 0.07, 3.0])
def test_matches_float64_reference_with_unequal_images_per_caption(scale):
    image_z, image_labels, text_z, text_labels = unequal_batch(torch.Generator().manual_seed(0))
    loss = image_text_contrastive_loss(image_z, image_labels, text_z, text_labels, scale)
    assert loss.dtype == torch.float32
    expected = reference_loss(image_z, image_labels, text_z, text_labels, scale)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_several_texts_per_caption_and_captions_missing_on_one_side():
    # caption 5 has a text but no image, caption 4 an image but no text: those rows have no
    # positive and are left out of their direction's mean (still negatives for the others)
    g = torch.Generator().manual_seed(1)
    image_labels = torch.tensor([0, 0, 1, 4, 1, 0])
    text_labels = torch.tensor([0, 1, 0, 5])
    image_z, text_z = torch.randn(6, 8, generator=g), torch.randn(4, 8, generator=g)
    loss = image_text_contrastive_loss(image_z, image_labels, text_z, text_labels, 10.0)
    expected = reference_loss(image_z, image_labels, text_z, text_labels, 10.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_one_image_per_caption_is_clips_symmetric_infonce():
    g = torch.Generator().manual_seed(2)
    image_z, text_z = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    labels = torch.tensor([7, 3, 9, 1, 4])
    loss = image_text_contrastive_loss(image_z, labels, text_z, labels, 5.0)
    logits = 5.0 * F.normalize(image_z, dim=1) @ F.normalize(text_z, dim=1).T
    target = torch.arange(5)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert loss.item() == pytest.approx(clip.item(), rel=1e-5)


def test_text_to_image_target_is_uniform_over_the_captions_images():
    # A multi-positive target differs from taking only one of the caption's images (or the
    # "sum inside the log" form): an implementation doing either must fail here.
    g = torch.Generator().manual_seed(3)
    image_z, image_labels, text_z, text_labels = unequal_batch(g, dtype=torch.float64)
    ours = image_text_contrastive_loss(image_z, image_labels, text_z, text_labels, 10.0).item()
    u, v = F.normalize(image_z, dim=1), F.normalize(text_z, dim=1)
    log_p = F.log_softmax(10.0 * v @ u.T, dim=1)
    pos = text_labels[:, None] == image_labels[None, :]
    inside_log = -torch.logsumexp(log_p.masked_fill(~pos, -math.inf), dim=1).mean()
    i2t = -F.log_softmax(10.0 * u @ v.T, dim=1)[pos.T].mean()
    assert abs(ours - ((i2t + inside_log) / 2).item()) > 1e-2


def test_gradcheck_float64_including_the_logit_scale():
    g = torch.Generator().manual_seed(4)
    image_labels, text_labels = torch.tensor([0, 2, 0, 1, 2]), torch.tensor([1, 0, 2])
    image_z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    text_z = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, t: image_text_contrastive_loss(a, image_labels, b, text_labels, t.exp()),
        (image_z, text_z, log_scale),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    image_z, image_labels, text_z, text_labels = unequal_batch(torch.Generator().manual_seed(5))
    loss = image_text_contrastive_loss(
        image_z.to(dtype),
        image_labels,
        text_z.to(dtype),
        text_labels,
        torch.tensor(100.0, dtype=dtype),
    )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected = reference_loss(image_z.to(dtype), image_labels, text_z.to(dtype), text_labels, 100.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "image_shape, text_shape, image_labels_shape, match",
    [
        ((4, 8), (2, 6), (4,), "image_z and text_z"),
        ((4,), (2, 8), (4,), "image_z and text_z"),
        ((4, 8), (2, 8), (3,), "image_labels must be"),
    ],
)
def test_bad_input_is_named(image_shape, text_shape, image_labels_shape, match):
    with pytest.raises(ValueError, match=match):
        image_text_contrastive_loss(
            torch.randn(image_shape),
            torch.zeros(image_labels_shape, dtype=torch.long),
            torch.randn(text_shape),
            torch.zeros(text_shape[0], dtype=torch.long),
            1.0,
        )


# ---------------------------------------------------------------- torch.distributed (gloo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPLITS = {"equal": ((6, 6), (3, 3)), "uneven": ((8, 4), (2, 4))}
# None: the ranks exchange their row counts; a bound: every rank pads to it (no host sync)
MAX_ROWS = {"counts exchanged": None, "padded to a bound": (9, 5)}


def _rank_worker(rank, world_size, port, data, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        image_z, image_labels, text_z, text_labels, log_scale = data
        # one process group for every split (spawning is the slow part of this test)
        for name, (image_splits, text_splits) in SPLITS.items():
            for gather, max_rows in MAX_ROWS.items():
                i0, t0 = sum(image_splits[:rank]), sum(text_splits[:rank])
                i1, t1 = i0 + image_splits[rank], t0 + text_splits[rank]
                u = image_z[i0:i1].clone().requires_grad_(True)
                v = text_z[t0:t1].clone().requires_grad_(True)
                t = log_scale.clone().requires_grad_(True)
                loss = image_text_contrastive_loss(
                    u,
                    image_labels[i0:i1],
                    v,
                    text_labels[t0:t1],
                    t.exp(),
                    max_rows_per_rank=max_rows,
                )
                loss.backward()
                results[(name, gather, rank)] = (loss.detach(), u.grad, v.grad, t.grad)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_with_equal_and_uneven_splits():
    g = torch.Generator().manual_seed(6)
    # captions 0..5, two images each; a caption's images and its text sit on different ranks
    image_labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0])
    text_labels = torch.tensor([3, 5, 0, 1, 4, 2])
    image_z = torch.randn(12, 8, generator=g, dtype=torch.float64)
    text_z = torch.randn(6, 8, generator=g, dtype=torch.float64)
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)

    u = image_z.clone().requires_grad_(True)
    v = text_z.clone().requires_grad_(True)
    t = log_scale.clone().requires_grad_(True)
    single = image_text_contrastive_loss(u, image_labels, v, text_labels, t.exp())
    single.backward()

    data = (image_z, image_labels, text_z, text_labels, log_scale)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_worker, args=(2, _free_port(), data, results), nprocs=2, join=True)
        results = dict(results)

    for name in [(split, gather) for split in SPLITS for gather in MAX_ROWS]:
        r0, r1 = results[(*name, 0)], results[(*name, 1)]
        # DDP averages gradients over ranks: the rank mean is the one-process value
        assert ((r0[0] + r1[0]) / 2).item() == pytest.approx(single.item(), rel=1e-10), name
        torch.testing.assert_close(torch.cat([r0[1], r1[1]]) / 2, u.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(torch.cat([r0[2], r1[2]]) / 2, v.grad, rtol=1e-9, atol=1e-12)
        # the logit scale is a replicated parameter: DDP averages its gradients
        torch.testing.assert_close((r0[3] + r1[3]) / 2, t.grad, rtol=1e-9, atol=1e-12)
