"""Multi-view synthetic dataset (PyTorch and DALI-on-CPU loaders), its cfg, and its error
messages."""

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("solo", reason="the synthetic dataset builds on solo-learn's augmentations")

from helpers import (  # noqa: E402
    SYNTHETIC_CPU_OVERRIDES,
    colour,
    compose_parsed_cfg,
    copy_configs,
    make_manifest_dataset,
    nearest_colour,
    solid_image,
    view_colour,
)

from solo_stablerep.data.loaders import prepare_synthetic_train_data  # noqa: E402
from solo_stablerep.data.manifest import ManifestError  # noqa: E402
from solo_stablerep.errors import SyntheticDataError  # noqa: E402

MULTICROP_AUGS = """\
- {rrc: {enabled: True, crop_min_scale: 0.5, crop_max_scale: 1.0}, color_jitter: {prob: 0.0},
   grayscale: {prob: 0.0}, gaussian_blur: {prob: 0.0}, solarization: {prob: 0.0},
   equalization: {prob: 0.0}, horizontal_flip: {prob: 0.5}, crop_size: 16, num_crops: 1}
- {rrc: {enabled: True, crop_min_scale: 0.1, crop_max_scale: 0.5}, color_jitter: {prob: 0.0},
   grayscale: {prob: 0.0}, gaussian_blur: {prob: 0.0}, solarization: {prob: 0.0},
   equalization: {prob: 0.0}, horizontal_flip: {prob: 0.5}, crop_size: 8, num_crops: 2}
"""


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    path = copy_configs(tmp_path_factory.mktemp("cfg") / "synthetic")
    (path / "augmentations" / "multicrop.yaml").write_text(MULTICROP_AUGS)
    return path


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    colours = make_manifest_dataset(root, num_captions=8, images_per_caption=5)
    return root, colours


def _cfg(config_dir, root, *overrides, name="stablerep.yaml"):
    return compose_parsed_cfg(
        config_dir, name, [f"data.train_path={root}", *SYNTHETIC_CPU_OVERRIDES, *overrides]
    )


def build_synthetic_dataset(cfg):
    """The PyTorch loader's stream, whose ``item(i)`` is caption i's row."""
    return prepare_synthetic_train_data(cfg).dataset


def _fit(data, max_epochs: int, ckpt_path=None, **options):
    """Fits, on CPU, a module that learns nothing but records each epoch's caption indexes
    (``seen``) on ``data``, a loader or a datamodule; ``options``: the Trainer's."""
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.seen = {}

        def training_step(self, batch, _):
            self.seen.setdefault(self.current_epoch, []).append(batch[0].tolist())
            return (batch[1][0].mean() * self.weight) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )
    if isinstance(data, pl.LightningDataModule):
        trainer.fit(probe, datamodule=data, ckpt_path=ckpt_path)
    else:
        trainer.fit(probe, data, ckpt_path=ckpt_path)
    return probe


def _loaders(cfg):
    """Both loaders of one cfg: the PyTorch DataLoader and the DALI (CPU) iterator."""
    torch_loader = prepare_synthetic_train_data(cfg)
    cfg.data.format = "dali"
    dali_loader = prepare_synthetic_train_data(cfg).build_loader()
    return {"torch": torch_loader, "dali": dali_loader}


def test_item_format_shapes_and_distinct_images(config_dir, dataset_dir):
    root, colours = dataset_dir
    cfg = _cfg(config_dir, root, "data.synthetic.n_img=3")
    assert (cfg.data.num_large_crops, cfg.data.num_small_crops) == (3, 0)
    assert cfg.data.num_classes == 1 and cfg.data.no_labels

    index, views, target = build_synthetic_dataset(cfg).item(5)
    assert index == 5 and target == -1
    assert len(views) == 3 and all(v.shape == (3, 16, 16) for v in views)

    for name, loader in _loaders(cfg).items():
        indexes, views, targets = next(iter(loader))
        assert len(views) == 3, name
        assert all(v.shape == (4, 3, 16, 16) and v.dtype == torch.float32 for v in views), name
        assert targets.tolist() == [-1] * 4, name
        for row, i in enumerate(indexes.tolist()):
            own = colours[f"cap{i:04d}"]
            got = [nearest_colour(view_colour(v[row]), own) for v in views]
            assert len(set(got)) == 3, f"{name}: views of caption {i} repeat an image: {got}"


def test_views_are_large_of_every_image_then_small(config_dir, dataset_dir):
    root, colours = dataset_dir
    cfg = _cfg(config_dir, root, "data.synthetic.n_img=2", "augmentations=multicrop.yaml")
    # per image: 1 large + 2 small crops
    assert (cfg.data.num_large_crops, cfg.data.num_small_crops) == (2, 4)
    for name, loader in _loaders(cfg).items():
        indexes, views, _ = next(iter(loader))
        assert [v.shape[-1] for v in views] == [16, 16, 8, 8, 8, 8], name
        own = colours[f"cap{indexes[0].item():04d}"]
        image_of = [nearest_colour(view_colour(v[0]), own) for v in views]
        large, small = image_of[:2], image_of[2:]
        assert large[0] != large[1]
        # small crops are image-major, in the same image order as the large ones
        assert small == [large[0], large[0], large[1], large[1]], name


def test_images_are_redrawn_at_every_access(config_dir, dataset_dir):
    root, colours = dataset_dir
    cfg = _cfg(config_dir, root, "data.synthetic.n_img=2")
    dataset = build_synthetic_dataset(cfg)
    torch.manual_seed(0)
    drawn = Counter(frozenset(view_colour(v) for v in dataset.item(3)[1]) for _ in range(40))
    # 10 pairs of 5 images; a dataset that fixed its pair would give one
    assert len(drawn) >= 6
    assert set().union(*drawn) == set(colours["cap0003"])

    # the DALI source too, across epochs
    cfg.data.format = "dali"
    loader = prepare_synthetic_train_data(cfg).build_loader()
    pairs = set()
    for _ in range(5):
        for indexes, views, _ in loader:
            for row, i in enumerate(indexes.tolist()):
                if i == 3:
                    own = colours["cap0003"]
                    pairs.add(frozenset(nearest_colour(view_colour(v[row]), own) for v in views))
    assert len(pairs) >= 2


def _noise_dataset(root, num_captions=4, size=32):
    make_manifest_dataset(root, num_captions, 4, size=size)
    rng = np.random.default_rng(0)
    from PIL import Image

    for path in root.rglob("*.png"):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _smooth(view):
    # a downsampled-to-8px-and-back noise image has small neighbour differences; raw noise has large
    return (view[:, :, 1:] - view[:, :, :-1]).abs().mean().item() < 0.5


@pytest.mark.parametrize("backend", ["torch", "dali"])
@pytest.mark.parametrize("prob", [0.0, 0.3])
def test_downsample_rate(config_dir, tmp_path, backend, prob):
    _noise_dataset(tmp_path)
    cfg = _cfg(
        config_dir,
        tmp_path,
        "data.synthetic.n_img=2",
        "augmentations.0.rrc.enabled=False",
        "augmentations.0.crop_size=32",
        f"data.synthetic.downsample.prob={prob}",
        "data.synthetic.downsample.sizes=[8]",
        "+seed=3",
    )
    torch.manual_seed(3)
    if backend == "torch":
        dataset = build_synthetic_dataset(cfg)
        views = [
            v for _ in range(100) for i in range(len(dataset.reader)) for v in dataset.item(i)[1]
        ]
    else:
        cfg.data.format = "dali"
        loader = prepare_synthetic_train_data(cfg).build_loader()
        views = [
            v[row] for _ in range(100) for _, vs, _ in loader for v in vs for row in range(len(v))
        ]
    assert len(views) == 800
    rate = sum(map(_smooth, views)) / len(views)
    # binomial sd at p=0.3 over 800 views is 0.016
    assert abs(rate - prob) < 0.07, f"downsampled {rate:.3f} of views, configured {prob}"


def _authors_layout(tmp_path, rows, num_roots=3, header=False):
    for r in range(num_roots):
        for c, (rel, _) in enumerate(rows):
            if rel.endswith(".png"):
                solid_image(tmp_path / f"seed{r}" / rel, colour(c * num_roots + r))
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(["path", "caption"])
        writer.writerows(rows)
    return [
        "data.synthetic.layout=authors",
        "data.synthetic.csv=captions.csv",
        f"data.synthetic.roots=[{','.join(f'seed{r}' for r in range(num_roots))}]",
        f"data.synthetic.csv_header={header}",
    ]


@pytest.mark.parametrize("header", [False, True])
def test_authors_layout(config_dir, tmp_path, header):
    rows = [(f"sub/{c:03d}.png", f"caption, with comma\nand newline {c}") for c in range(6)]
    overrides = _authors_layout(tmp_path, rows, header=header)
    cfg = _cfg(config_dir, tmp_path, "data.synthetic.n_img=3", *overrides)
    dataset = build_synthetic_dataset(cfg)
    assert len(dataset.reader) == 6 and cfg.data.num_classes == 1
    # caption id = the row's position in the CSV, header counted (not its line: captions span two)
    assert list(dataset.reader.index.caption_ids) == [str(c + 1 + header) for c in range(6)]
    for c in range(6):
        index, views, target = dataset.item(c)
        assert target == -1
        # image k of caption c is seed{k}/sub/c.png: all 3 roots, each once
        assert sorted(view_colour(v) for v in views) == sorted(colour(c * 3 + r) for r in range(3))


def test_labelled_manifest_sets_num_classes_and_targets(config_dir, tmp_path):
    make_manifest_dataset(tmp_path / "ds", 6, 2, class_names=["cat", "dog", "eel"])
    cfg = _cfg(config_dir, tmp_path / "ds", "data.synthetic.n_img=2")
    assert cfg.data.num_classes == 3 and not cfg.data.no_labels
    dataset = build_synthetic_dataset(cfg)
    assert [dataset.item(i)[2] for i in range(6)] == [0, 1, 2, 0, 1, 2]

    # online validation on an ImageFolder whose sorted classes are the manifest's
    for name in ["cat", "dog", "eel"]:
        solid_image(tmp_path / "val" / name / "0.png", (1, 2, 3))
    cfg = _cfg(
        config_dir, tmp_path / "ds", "data.synthetic.n_img=2", f"data.val_path={tmp_path / 'val'}"
    )
    assert cfg.data.val_path == str(tmp_path / "val")
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(SyntheticDataError, match=r"data.val_path=.*class folders"):
        _cfg(
            config_dir,
            tmp_path / "ds",
            "data.synthetic.n_img=2",
            f"data.val_path={tmp_path / 'val'}",
        )


def test_unlabelled_refuses_online_validation_and_supcon(config_dir, dataset_dir, tmp_path):
    root, _ = dataset_dir
    with pytest.raises(SyntheticDataError, match=r"data.val_path is set but .* no class labels"):
        _cfg(config_dir, root, "data.synthetic.n_img=2", f"data.val_path={tmp_path}")
    with pytest.raises(SyntheticDataError, match=r"method=supcon needs class labels"):
        _cfg(config_dir, root, "data.synthetic.n_img=2", name="supcon.yaml")


# ---- bad input: one-line errors naming the culprit ----


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_missing_or_unknown_manifest(config_dir, tmp_path, dataset_dir):
    with pytest.raises(ManifestError, match="manifest not found") as e:
        _cfg(config_dir, tmp_path)
    _one_line(e)
    root, _ = dataset_dir
    text = (root / "manifest.jsonl").read_text().replace('"version": 1', '"version": 9', 1)
    (tmp_path / "manifest.jsonl").write_text(text)
    with pytest.raises(ManifestError, match="unknown version 9"):
        _cfg(config_dir, tmp_path)


def test_missing_image_names_file_and_caption(config_dir, tmp_path):
    make_manifest_dataset(tmp_path, 4, 2)
    missing = tmp_path / "images" / "ca" / "p0" / "cap0002_01.png"
    missing.unlink()
    cfg = _cfg(config_dir, tmp_path, "data.synthetic.n_img=2")
    dataset = build_synthetic_dataset(cfg)
    with pytest.raises(
        SyntheticDataError, match=rf"{missing} \(caption cap0002\): image file missing"
    ) as e:
        dataset.item(2)
    _one_line(e)
    cfg.data.format = "dali"
    with pytest.raises(
        SyntheticDataError, match=rf"{missing} \(caption cap0002\): image file missing"
    ):
        for _ in prepare_synthetic_train_data(cfg).build_loader():
            pass


def test_corrupt_image_raises_or_is_skipped_and_counted(config_dir, tmp_path):
    make_manifest_dataset(tmp_path, 4, 3)
    corrupt = tmp_path / "images" / "ca" / "p0" / "cap0001_02.png"
    corrupt.write_bytes(b"not an image at all")
    cfg = _cfg(config_dir, tmp_path, "data.synthetic.n_img=2")
    dataset = build_synthetic_dataset(cfg)
    torch.manual_seed(0)
    with pytest.raises(
        SyntheticDataError, match=rf"{corrupt} \(caption cap0001\): corrupt image"
    ) as e:
        for _ in range(20):  # draws 2 of 3 images: the corrupt one comes up quickly
            dataset.item(1)
    _one_line(e)
    cfg.data.format = "dali"
    with pytest.raises(SyntheticDataError, match=rf"{corrupt} \(caption cap0001\): corrupt image"):
        loader = prepare_synthetic_train_data(cfg).build_loader()
        for _ in range(20):
            for _ in loader:
                pass

    cfg = _cfg(config_dir, tmp_path, "data.synthetic.n_img=2", "data.synthetic.skip_corrupt=True")
    dataset = build_synthetic_dataset(cfg)
    good = {colour(3), colour(4)}  # images 0 and 1 of caption 1
    for _ in range(20):
        assert {view_colour(v) for v in dataset.item(1)[1]} == good
    assert dataset.skipped.value > 0

    # too few readable images: an error without skip_corrupt, else the item is skipped and counted
    cfg = _cfg(config_dir, tmp_path, "data.synthetic.n_img=3")
    with pytest.raises(SyntheticDataError, match=rf"{corrupt} \(caption cap0001\): corrupt image"):
        build_synthetic_dataset(cfg).item(1)
    cfg = _cfg(config_dir, tmp_path, "data.synthetic.n_img=3", "data.synthetic.skip_corrupt=True")
    dataset = build_synthetic_dataset(cfg)
    assert dataset.item(1) is None and dataset.skipped.value == 2  # the image, then the item


def test_too_few_images_empty_and_small_datasets(config_dir, tmp_path):
    make_manifest_dataset(tmp_path / "a", 4, 2)
    match = r"caption cap0000 has 2 images, fewer than data.synthetic.n_img=3"
    with pytest.raises(SyntheticDataError, match=match):
        _cfg(config_dir, tmp_path / "a", "data.synthetic.n_img=3")
    make_manifest_dataset(tmp_path / "b", 0, 2)
    with pytest.raises(SyntheticDataError, match="has no captions"):
        _cfg(config_dir, tmp_path / "b", "data.synthetic.n_img=2")
    cfg = _cfg(config_dir, tmp_path / "a", "data.synthetic.n_img=2", "optimizer.batch_size=8")
    with pytest.raises(SyntheticDataError, match=r"4 captions, fewer than optimizer.batch_size=8"):
        prepare_synthetic_train_data(cfg)


@pytest.mark.parametrize(
    "rel, match",
    [
        ("sub/000.txt", r"captions.csv:1: 'sub/000.txt' is not an image path"),
        ("/abs/000.png", r"captions.csv:1.*absolute"),
        ("../000.png", r"captions.csv:1.*escapes the root"),
    ],
)
def test_bad_csv_rows(config_dir, tmp_path, rel, match):
    overrides = _authors_layout(tmp_path, [(rel, "a caption"), ("sub/001.png", "another")])
    with pytest.raises(ManifestError, match=match):
        _cfg(config_dir, tmp_path, "data.synthetic.n_img=2", *overrides)


@pytest.mark.parametrize(
    "override, match",
    [
        ("data.synthetic.n_img=0", "data.synthetic.n_img=0"),
        ("data.synthetic.layout=folders", "data.synthetic.layout=folders"),
        ("data.synthetic.layout=authors", "needs data.synthetic.csv"),
        ("data.synthetic.downsample.prob=1.5", "data.synthetic.downsample.prob=1.5"),
        ("data.synthetic.downsample.sizes=[]", "data.synthetic.downsample.sizes"),
        ("data.format=h5", "data.format=h5"),
    ],
)
def test_bad_cfg_names_the_key(config_dir, dataset_dir, override, match):
    root, _ = dataset_dir
    with pytest.raises(SyntheticDataError, match=match):
        _cfg(config_dir, root, override)


def test_the_four_configs_parse_and_share_data_backbone_optimizer(config_dir, tmp_path):
    make_manifest_dataset(tmp_path, 8, 6, class_names=["a", "b"])
    cfgs = {
        name: _cfg(config_dir, tmp_path, name=f"{name}.yaml")
        for name in ("stablerep", "simclr", "byol", "supcon")
    }
    views = {
        name: (cfg.data.synthetic.n_img, cfg.data.num_large_crops) for name, cfg in cfgs.items()
    }
    assert views == {"stablerep": (6, 6), "simclr": (1, 2), "byol": (1, 2), "supcon": (2, 2)}
    for name, cfg in cfgs.items():
        assert cfg.method == name and cfg.data.num_classes == 2
        for section in ("backbone", "optimizer", "scheduler"):
            assert cfg[section] == cfgs["stablerep"][section], (name, section)
        data = dict(cfg.data, synthetic={**cfg.data.synthetic, "n_img": 6}, num_large_crops=6)
        reference = dict(cfgs["stablerep"].data)
        assert data == reference, name


def test_worker_errors_stay_one_line(config_dir, tmp_path):
    make_manifest_dataset(tmp_path, 4, 2)
    missing = tmp_path / "images" / "ca" / "p0" / "cap0002_01.png"
    missing.unlink()
    cfg = _cfg(config_dir, tmp_path, "data.synthetic.n_img=2", "data.num_workers=1")
    loader = prepare_synthetic_train_data(cfg)
    assert loader.num_workers == 1
    with pytest.raises(
        SyntheticDataError,
        match=rf"^{missing} \(caption cap0002\): image file missing; set "
        r"data.synthetic.skip_corrupt=True to skip such items \(in DataLoader worker process 0\)$",
    ) as e:
        for _ in loader:
            pass
    _one_line(e)


def test_skipped_images_are_counted_over_workers_and_logged_per_epoch(config_dir, tmp_path):
    import lightning.pytorch as pl

    from solo_stablerep.data.loaders import synthetic_callbacks

    make_manifest_dataset(tmp_path, 4, 3)
    (tmp_path / "images" / "ca" / "p0" / "cap0001_02.png").write_bytes(b"not an image at all")
    cfg = _cfg(
        config_dir,
        tmp_path,
        "data.synthetic.n_img=2",
        "data.synthetic.skip_corrupt=True",
        "data.num_workers=2",
    )
    loader = prepare_synthetic_train_data(cfg)
    callbacks = synthetic_callbacks(cfg, loader)
    assert len(callbacks) == 1

    torch.manual_seed(0)
    logger = pl.loggers.CSVLogger(tmp_path / "logs", name="probe")
    with pytest.warns(UserWarning, match=r"epoch \d+: skipped \d+ corrupt images"):
        _fit(loader, 8, logger=logger, enable_checkpointing=False, callbacks=callbacks)
    total = loader.dataset.skipped.value  # the workers' counts, seen by the training process
    # caption 1 is drawn once per epoch; its corrupt image is skipped when drawn among the first two
    assert 1 <= total <= 8
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        logged = [
            float(row["skipped_corrupt_images"])
            for row in csv.DictReader(f)
            if row.get("skipped_corrupt_images")
        ]
    assert len(logged) == 8 and sum(logged) == total  # one value per epoch, adding up


def test_downsample_is_the_authors_bilinear_resize():
    from PIL import Image
    from torchvision import transforms

    from solo_stablerep.data.transforms import RandomDownsample

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    ours = RandomDownsample(prob=1.0, sizes=[64])(img)
    # the authors' DownSampleAndUpsample: transforms.Resize(res) then transforms.Resize(256)
    authors = transforms.Resize(256)(transforms.Resize(64)(img))
    assert np.array_equal(np.asarray(ours), np.asarray(authors))


@pytest.mark.parametrize("data_format", ["image_folder", "dali"])
def test_a_resumed_fit_reads_the_items_of_the_epochs_it_resumes(
    config_dir, dataset_dir, tmp_path, data_format
):
    """Lightning restores its epoch after the datamodule's ``setup`` and before asking for the
    train loader: a run resumed after epoch 0 reads epochs 1 and 2 as an uninterrupted run does
    (the DALI source, which counts epochs itself, once started at 0 again)."""
    import lightning.pytorch as pl

    if data_format == "dali":
        pytest.importorskip("nvidia.dali", reason="data.format=dali needs nvidia-dali")
    root, _ = dataset_dir
    cfg = _cfg(config_dir, root, "data.synthetic.n_img=2", f"data.format={data_format}")

    def fit(ckpt_path=None) -> dict:
        checkpoints = pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1)
        data = prepare_synthetic_train_data(cfg)
        return _fit(data, 3, ckpt_path, logger=False, callbacks=[checkpoints]).seen

    uninterrupted = fit()
    assert uninterrupted[0] != uninterrupted[1]
    (first_epoch,) = (tmp_path / "ckpt").glob("epoch=0-*.ckpt")
    resumed = fit(first_epoch)
    assert sorted(resumed) == [1, 2]
    assert resumed == {e: uninterrupted[e] for e in (1, 2)}
