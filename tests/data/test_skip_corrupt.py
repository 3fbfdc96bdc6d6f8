"""``data.synthetic.skip_corrupt`` behaves alike in every layout (manifest, authors' CSV, tar
shards) and loader (PyTorch, DALI on CPU): an item left with fewer than ``n_img`` readable (or, in
the manifest and CSV layouts, present) images is a one-line error without it; with it, the item is
skipped, named in a warning and counted, the other items fill each epoch, and training stops with
one line only when no item is usable."""

import logging
import shutil

import pytest

pytest.importorskip("solo", reason="the loaders build on solo-learn's augmentations")

from helpers import (  # noqa: E402
    SYNTHETIC_CPU_OVERRIDES,
    compose_parsed_cfg,
    copy_configs,
    make_manifest_dataset,
)

from data_gen.convert import convert  # noqa: E402
from solo_stablerep.errors import InputError  # noqa: E402

NUM_CAPTIONS, IMAGES, BATCH = 8, 3, 4
LAYOUTS = ["manifest", "authors", "webdataset"]
LOADERS = ["image_folder", "dali"]


def make_layout(root, layout, corrupt_images):
    """8 captions x 3 images in ``layout``, with ``corrupt_images(caption, k)`` images garbled;
    returns the cfg overrides that read it."""
    make_manifest_dataset(root / "ds", NUM_CAPTIONS, IMAGES)
    images = {
        (c, k): next((root / "ds" / "images").rglob(f"cap{c:04d}_{k:02d}.png"))
        for c in range(NUM_CAPTIONS)
        for k in range(IMAGES)
    }
    for (c, k), path in images.items():
        if corrupt_images(c, k):
            path.write_bytes(b"not a png" * 10)
    if layout == "manifest":
        return [f"data.train_path={root / 'ds'}"]
    if layout == "webdataset":
        convert(root / "ds", root / "shards", shard_bytes=3000, progress=False)
        return [f"data.train_path={root / 'shards'}", "data.synthetic.shuffle_buffer=1"]
    # authors: image k of the caption on row c is seed{k}/c.png
    for (c, k), path in images.items():
        (root / f"seed{k}").mkdir(exist_ok=True)
        shutil.copy(path, root / f"seed{k}" / f"{c}.png")
    rows = [f"{c}.png,caption {c}" for c in range(NUM_CAPTIONS)]
    (root / "rows.csv").write_text("\n".join(rows) + "\n")
    roots = ",".join(f"seed{k}" for k in range(IMAGES))
    return [
        f"data.train_path={root}",
        "data.synthetic.csv=rows.csv",
        f"data.synthetic.roots=[{roots}]",
    ]


def loader_for(root, layout, data_format, overrides, *extra):
    from solo_stablerep.data.loaders import prepare_synthetic_train_data

    config_dir = root / "cfg"
    if not config_dir.exists():
        copy_configs(config_dir)
    cfg = compose_parsed_cfg(
        config_dir,
        "stablerep.yaml",
        [
            *SYNTHETIC_CPU_OVERRIDES,
            f"data.synthetic.layout={layout}",
            f"data.format={data_format}",
            "data.synthetic.n_img=2",
            f"optimizer.batch_size={BATCH}",
            "data.num_workers=0",
            *overrides,
            *extra,
        ],
    )
    data = prepare_synthetic_train_data(cfg)
    return data, (data.build_loader() if data_format == "dali" else data)


@pytest.mark.parametrize("data_format", LOADERS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_item_with_too_few_readable_images_is_skipped_or_one_line(
    tmp_path, layout, data_format, caplog
):
    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    # caption 2 keeps one readable image of 3: any 2 drawn of them include a corrupt one
    overrides = make_layout(tmp_path, layout, lambda c, k: c == 2 and k > 0)
    with pytest.raises(InputError, match="corrupt image.*data.synthetic.skip_corrupt=True") as e:
        _, loader = loader_for(tmp_path, layout, data_format, overrides)  # DALI prefetches
        for _ in range(2):  # every epoch visits caption 2
            for _ in loader:
                pass
    assert "\n" not in str(e.value)

    data, loader = loader_for(
        tmp_path, layout, data_format, overrides, "data.synthetic.skip_corrupt=True"
    )
    with caplog.at_level(logging.WARNING, logger="solo_stablerep.data.readers"):
        for _ in range(3):  # the other captions fill each epoch, caption 2 never in a batch
            batches = [batch[0].tolist() for batch in loader]
            assert len(batches) == len(loader) == NUM_CAPTIONS // BATCH
            assert all(2 not in indexes for indexes in batches)
    assert "only 1 readable images, fewer than data.synthetic.n_img=2: skipped" in caplog.text
    assert data.skipped.value >= 2  # the corrupt image, then the item


@pytest.mark.parametrize("data_format", LOADERS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nothing_usable_with_skip_corrupt_is_one_line_not_a_hang(tmp_path, layout, data_format):
    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    overrides = make_layout(tmp_path, layout, lambda c, k: k > 0)  # one readable image each
    skip = "data.synthetic.skip_corrupt=True"
    with pytest.raises(InputError, match="no usable (caption|sample).*training cannot go on") as e:
        for _ in loader_for(tmp_path, layout, data_format, overrides, skip)[1]:
            pass
    assert "\n" not in str(e.value)


def remove_images(root, layout, images):
    """Deletes ``images`` ((caption, k) pairs) of a layout :func:`make_layout` wrote."""
    for c, k in images:
        if layout == "manifest":
            next((root / "ds" / "images").rglob(f"cap{c:04d}_{k:02d}.png")).unlink()
        else:
            (root / f"seed{k}" / f"{c}.png").unlink()


@pytest.mark.parametrize("data_format", LOADERS)
@pytest.mark.parametrize("layout", ["manifest", "authors"])
def test_a_missing_image_is_skipped_like_a_corrupt_one_or_one_line(
    tmp_path, layout, data_format, caplog
):
    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    overrides = make_layout(tmp_path, layout, lambda c, k: False)
    remove_images(tmp_path, layout, [(2, 1), (2, 2)])  # caption 2 keeps one image of 3
    with pytest.raises(InputError, match="image file missing; set data.synthetic.skip_corrupt"):
        _, loader = loader_for(tmp_path, layout, data_format, overrides)
        for _ in range(2):  # every epoch visits caption 2
            for _ in loader:
                pass

    data, loader = loader_for(
        tmp_path, layout, data_format, overrides, "data.synthetic.skip_corrupt=True"
    )
    with caplog.at_level(logging.WARNING, logger="solo_stablerep.data.readers"):
        for _ in range(3):
            batches = [batch[0].tolist() for batch in loader]
            assert len(batches) == NUM_CAPTIONS // BATCH
            assert all(2 not in indexes for indexes in batches)
    caption_id = "cap0002" if layout == "manifest" else "3"  # the authors': the CSV row number
    assert f"(caption {caption_id}): image file missing: skipped" in caplog.text
    assert data.skipped.value >= 2


@pytest.mark.parametrize("layout", ["manifest", "authors"])
def test_the_first_captions_image_missing_is_one_line_even_when_skipping(tmp_path, layout):
    """A wrong root (or a manifest copied without its images) would otherwise be a warning for
    every image of the data set before the last one says nothing is usable."""
    overrides = make_layout(tmp_path, layout, lambda c, k: False)
    remove_images(tmp_path, layout, [(0, 1)])
    skip = "data.synthetic.skip_corrupt=True"
    with pytest.raises(InputError, match="image file missing, the first caption's") as e:
        loader_for(tmp_path, layout, "image_folder", overrides, skip)
    assert "\n" not in str(e.value) and "data.synthetic.roots" in str(e.value)
