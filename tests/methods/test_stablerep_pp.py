"""StableRep++ (method stablerep_pp) and the CLIP baseline config, with the real solo-learn."""

import copy
import math
import pickle
import socket

import pytest
import torch
from helpers import (
    PRETRAIN_CONFIGS,
    SMOKE_OVERRIDES,
    compose_parsed_cfg,
    compose_raw_cfg,
    make_manifest_dataset,
    requires_solo,
    run_pretrain_command,
)

pytestmark = requires_solo

SYNTHETIC = PRETRAIN_CONFIGS / "synthetic"
SOT, EOT = 49406, 49407
# tiny towers for CPU: the shipped configs use CLIP ViT-B/16's text tower
TINY_TEXT = [
    "method_kwargs.embed_dim=16",
    "method_kwargs.text_width=32",
    "method_kwargs.text_layers=1",
    "method_kwargs.text_heads=2",
    "method_kwargs.context_length=12",
]
LONG_CAPTION = "a very long caption " * 20  # far more than 12 tokens


# ------------------------------------------------------------------------------ tokenizer


def test_tokenizer_runs_with_no_network(monkeypatch):
    from solo_stablerep.text import CaptionTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tokens = CaptionTokenizer(10)("a photo of a cat")  # builds the BPE tables now
    # CLIP's own ids for these words: the vocabulary is CLIP's, read from the package
    assert tokens.tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT, 0, 0, 0]


def test_long_captions_are_truncated_not_refused():
    from solo_stablerep.text import CaptionTokenizer

    full = CaptionTokenizer(200)(LONG_CAPTION)
    assert (full != 0).sum() > 12
    tokens = CaptionTokenizer(12)(LONG_CAPTION)
    assert tokens.shape == (12,)
    assert tokens[-1] == EOT  # the tower pools at <eot>: it must survive truncation
    assert torch.equal(tokens[:11], full[:11])
    batch = CaptionTokenizer(12)(["a cat", LONG_CAPTION])
    assert batch.shape == (2, 12) and torch.equal(batch[1], tokens)


def test_tokenizer_pickles_for_dataloader_workers():
    from solo_stablerep.text import CaptionTokenizer

    tokenizer = CaptionTokenizer(8)
    tokenizer("warm up")  # the BPE tables are not pickled, but rebuilt
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert torch.equal(clone("a dog"), tokenizer("a dog"))


# --------------------------------------------------------------------------------- captions


def tiny_caption(c: int) -> str:
    """Caption c of the tiny manifest: caption 3 is longer than the context length."""
    return LONG_CAPTION if c == 3 else f"a photo of thing number {c}"


def write_tiny_manifest(root, num_captions=8, images_per_caption=2):
    """A labelled manifest data set of 32 px images captioned by :func:`tiny_caption`; returns
    its captions."""
    make_manifest_dataset(
        root,
        num_captions,
        images_per_caption,
        class_names=["class0", "class1"],
        size=32,
        caption=tiny_caption,
        caption_id="cap{:03d}".format,
    )
    return [tiny_caption(c) for c in range(num_captions)]


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    write_tiny_manifest(root)
    return root


# ----------------------------------------------------------------------------------- method


def pp_cfg(train_path, *extra, config="stablerep_pp.yaml", n_img=2):
    overrides = (
        SMOKE_OVERRIDES
        + TINY_TEXT
        + [
            "augmentations.0.crop_size=32",
            f"data.train_path={train_path}",
            f"data.synthetic.n_img={n_img}",
            "checkpoint.enabled=False",
            *extra,
        ]
    )
    return compose_parsed_cfg(SYNTHETIC, config, overrides)


def quiet(model):
    logged = {}
    model.log = lambda k, v, **_: logged.__setitem__(k, v)
    model.log_dict = lambda d, **_: logged.update(d)
    return logged


def fake_batch(model, batch_size=4, num_views=None):
    from solo_stablerep.text import CaptionTokenizer

    num_views = model.num_crops if num_views is None else num_views
    views = [torch.randn(batch_size, 3, 32, 32) for _ in range(num_views)]
    captions = [f"caption {i}" for i in range(batch_size - 1)] + [LONG_CAPTION]
    tokens = CaptionTokenizer(model.tokenizer.context_length)(captions)
    return [torch.arange(batch_size), views, torch.full((batch_size,), -1), tokens]


def test_shipped_configs_use_the_papers_settings(manifest_root):
    composed = {
        name: compose_raw_cfg(SYNTHETIC, f"{name}.yaml", [f"data.train_path={manifest_root}"])
        for name in ("stablerep_pp", "clip", "stablerep")
    }
    pp, clip, shared = composed["stablerep_pp"], composed["clip"], composed["stablerep"]
    assert pp.method == clip.method == "stablerep_pp"
    assert (pp.method_kwargs.w1, pp.method_kwargs.w2) == (1.0, 1.0)
    assert (clip.method_kwargs.w1, clip.method_kwargs.w2) == (0.0, 1.0)
    assert clip.data.synthetic.n_img == 1
    for key in ("optimizer", "scheduler", "backbone"):
        assert pp[key] == shared[key] == clip[key], key


def test_model_builds_towers_and_parameter_groups(manifest_root):
    from solo.methods import METHODS

    cfg = pp_cfg(manifest_root)
    assert cfg.data.num_large_crops == 2
    model = METHODS["stablerep_pp"](cfg)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    tower = model.text_tower
    assert tower.token_embedding.weight.shape == (49408, 32)
    assert tower.positional_embedding.shape == (12, 32)
    assert len(tower.transformer.resblocks) == 1
    assert tower.transformer.resblocks[0].attn.num_heads == 2
    assert tower.text_projection.shape == (32, 16)
    assert model.image_projection.weight.shape == (16, 512)
    groups = {g["name"]: g for g in model.learnable_params}
    expected = {
        "backbone",
        "classifier",
        "projector",
        "text_tower",
        "image_projection",
        "logit_scale",
    }
    assert expected <= set(groups)
    assert groups["logit_scale"]["weight_decay"] == 0
    assert "weight_decay" not in groups["text_tower"]  # decayed like the backbone
    # every parameter is trained exactly once
    grouped = [p for g in model.learnable_params for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_text_tower_and_image_projection_follow_the_authors_code(manifest_root):
    # the authors' StableRepMM: CLIP's QuickGELU in the text MLPs, and an image projection
    # drawn from N(0, width^-0.5) (nn.Linear's default would give std (3 width)^-0.5)
    from open_clip.transformer import QuickGELU
    from solo.methods import METHODS

    model = METHODS["stablerep_pp"](pp_cfg(manifest_root))
    for block in model.text_tower.transformer.resblocks:
        assert isinstance(block.mlp.gelu, QuickGELU)
    weight = model.image_projection.weight  # (embed_dim, features_dim) = (16, 512)
    assert weight.std().item() == pytest.approx(512**-0.5, rel=0.05)
    assert abs(weight.mean().item()) < 0.05 * 512**-0.5
    # Gaussian, not uniform: a uniform of this std never exceeds sqrt(3) std
    assert weight.abs().max().item() > 2.5 * 512**-0.5


def test_gradients_reach_the_text_tower_and_the_logit_scale(manifest_root):
    from solo.methods import METHODS

    model = METHODS["stablerep_pp"](pp_cfg(manifest_root))
    logged = quiet(model)
    loss = model.training_step(fake_batch(model), 0)
    loss.backward()
    for name in ("token_embedding.weight", "positional_embedding", "text_projection"):
        grad = dict(model.text_tower.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.logit_scale.grad is not None and model.logit_scale.grad != 0
    assert model.image_projection.weight.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0
    # DDP runs with find_unused_parameters=False: every parameter must be in the graph
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    for key in ("train_stablerep_loss", "train_image_text_loss", "train_logit_scale"):
        assert torch.isfinite(torch.as_tensor(logged[key])), key
    # w1 = w2 = 1 and no labels (classifier loss 0): the total is the sum of both terms
    assert loss.item() == pytest.approx(
        (logged["train_stablerep_loss"] + logged["train_image_text_loss"]).item(), rel=1e-5
    )


def test_clip_config_skips_the_image_image_loss(manifest_root, monkeypatch):
    from solo.methods import METHODS

    import solo_stablerep.methods.stablerep as stablerep_module

    cfg = pp_cfg(manifest_root, config="clip.yaml", n_img=1)
    assert cfg.data.num_large_crops == 1 and cfg.method_kwargs.w1 == 0
    model = METHODS["stablerep_pp"](cfg)
    assert not list(model.projector.parameters())
    assert "projector" not in {g["name"] for g in model.learnable_params}

    def must_not_run(*args, **kwargs):
        raise AssertionError("image-image loss computed with w1 = 0")

    monkeypatch.setattr(stablerep_module, "multi_positive_contrastive_loss", must_not_run)
    logged = quiet(model)
    loss = model.training_step(fake_batch(model), 0)
    assert "train_stablerep_loss" not in logged
    assert loss.item() == pytest.approx(logged["train_image_text_loss"].item(), rel=1e-6)
    loss.backward()
    assert model.logit_scale.grad != 0
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # DDP-safe


def test_logit_scale_is_clamped_at_log_100_after_a_step(manifest_root):
    from solo.methods import METHODS

    model = METHODS["stablerep_pp"](pp_cfg(manifest_root))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.on_train_batch_end(None, None, 0)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    model.on_train_batch_end(None, None, 0)
    assert model.logit_scale.item() == 3.0


def test_zero_shot_accuracy_uses_one_prompt_per_class_in_label_order(manifest_root):
    from solo.methods import METHODS

    from solo_stablerep.text import CaptionTokenizer

    cfg = pp_cfg(manifest_root, "method_kwargs.class_names=[dog,cat]")
    model = METHODS["stablerep_pp"](cfg).eval()
    logged = quiet(model)
    X = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        prompts = CaptionTokenizer(12)(["a photo of a dog", "a photo of a cat"])
        text = torch.nn.functional.normalize(model.text_tower(prompts), dim=1)
        image = torch.nn.functional.normalize(model.image_projection(model.backbone(X)), dim=1)
        predicted = (image @ text.T).argmax(dim=1)
        targets = torch.cat([predicted[:4], 1 - predicted[4:]])  # 4 of 6 right
        model.on_validation_epoch_start()
        model.validation_step([X[:3], targets[:3]], 0)
        model.validation_step([X[3:], targets[3:]], 1)
    model.on_validation_epoch_end()
    assert logged["val_zero_shot_acc1"].item() == pytest.approx(100 * 4 / 6)


def test_no_class_names_no_zero_shot(manifest_root):
    from solo.methods import METHODS

    model = METHODS["stablerep_pp"](pp_cfg(manifest_root)).eval()  # no data.val_path
    assert model.class_names is None
    logged = quiet(model)
    model.on_validation_epoch_start()
    with torch.no_grad():
        model.validation_step([torch.randn(2, 3, 32, 32), torch.tensor([0, 1])], 0)
    model.on_validation_epoch_end()
    assert "val_zero_shot_acc1" not in logged and "val_acc1" in logged


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["+method_kwargs.text_widht=64"],
            "unknown method_kwargs.text_widht for method stablerep_pp",
        ),
        (["method_kwargs.w2=0"], "method_kwargs.w2 must be > 0"),
        (["method_kwargs.w1=-1"], "method_kwargs.w1 must be >= 0"),
        (
            ["method_kwargs.text_heads=3"],
            "text_width \\(32\\) must be divisible by method_kwargs.text_heads",
        ),
        (["method_kwargs.context_length=???"], "method_kwargs.context_length is missing"),
        (["method_kwargs.temperature=0"], "method_kwargs.temperature must be > 0"),
        (["method_kwargs.zero_shot_template=photo"], "zero_shot_template must contain"),
        (
            ["method_kwargs.class_names=[a,b,c]"],
            "class_names has 3 names but data.num_classes is 2",
        ),
    ],
)
def test_bad_method_kwargs_are_named(manifest_root, overrides, message):
    from solo.methods import METHODS

    cfg = pp_cfg(manifest_root, *overrides)
    with pytest.raises(ValueError, match=message):
        METHODS["stablerep_pp"](cfg)


def test_one_view_needs_w1_zero(manifest_root):
    from solo.methods import METHODS

    with pytest.raises(ValueError, match="at least 2 views"):
        METHODS["stablerep_pp"](pp_cfg(manifest_root, n_img=1))


def test_training_data_without_captions_is_refused_in_one_line(manifest_root):
    from solo_stablerep.pretrain import prepare_train_data

    cfg = pp_cfg(manifest_root)
    cfg.data.dataset = "custom"
    with pytest.raises(ValueError, match="set data.dataset=synthetic") as error:
        prepare_train_data(cfg)
    assert "\n" not in str(error.value)


def test_dali_loader_batches_get_their_captions_tokens(manifest_root):
    pytest.importorskip("nvidia.dali")
    from solo_stablerep.data.index import CaptionIndex
    from solo_stablerep.pretrain import prepare_train_data
    from solo_stablerep.text import CaptionTokenizer

    cfg = pp_cfg(manifest_root, "data.format=dali", "dali.device=cpu")
    module = prepare_train_data(cfg)
    loader = module.build_loader()  # what train_dataloader() does under a Trainer
    assert len(loader) == 2
    captions = CaptionIndex.from_manifest(manifest_root).captions
    seen = []
    for indexes, views, _, tokens in loader:
        assert len(views) == 2 and views[0].shape[0] == 4
        assert torch.equal(tokens, CaptionTokenizer(12)([captions[i] for i in indexes.tolist()]))
        seen += indexes.tolist()
    assert sorted(seen) == list(range(8))


def test_train_loader_yields_views_and_caption_tokens(manifest_root):
    from solo_stablerep.data.index import CaptionIndex
    from solo_stablerep.pretrain import prepare_train_data
    from solo_stablerep.text import CaptionTokenizer

    cfg = pp_cfg(manifest_root)
    indexes, views, targets, tokens = next(iter(prepare_train_data(cfg)))
    assert len(views) == 2 and views[0].shape == (4, 3, 32, 32)
    captions = CaptionIndex.from_manifest(manifest_root).captions
    expected = CaptionTokenizer(12)([captions[i] for i in indexes.tolist()])
    assert torch.equal(tokens, expected)
    assert torch.equal(targets, indexes % 2)  # the manifest's labels travel too


# ------------------------------------------------------------------------ entry point (slow)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, n_img, data_format",
    [
        ("stablerep_pp.yaml", 2, "image_folder"),
        ("clip.yaml", 1, "image_folder"),
        ("stablerep_pp.yaml", 2, "dali"),
    ],
)
def test_fit_through_the_entry_point(
    manifest_root, image_folder, tmp_path, monkeypatch, config, n_img, data_format
):
    import solo_stablerep.pretrain as pretrain

    if data_format == "dali":
        pytest.importorskip("nvidia.dali")

    monkeypatch.chdir(tmp_path)
    cfg = compose_raw_cfg(
        SYNTHETIC,
        config,
        SMOKE_OVERRIDES
        + TINY_TEXT
        + [
            "augmentations.0.crop_size=32",
            f"data.train_path={manifest_root}",
            f"data.val_path={image_folder}",
            f"data.synthetic.n_img={n_img}",
            f"data.format={data_format}",
            "dali.device=cpu",
            "checkpoint.enabled=False",
            "+limit_val_batches=1",
            "+num_sanity_val_steps=0",
            "+log_every_n_steps=1",
        ],
    )
    built = {}
    build_trainer = pretrain.build_trainer

    def spy(cfg, model, *args):
        built["text"] = copy.deepcopy(model.text_tower.state_dict())
        return build_trainer(cfg, model, *args)

    monkeypatch.setattr(pretrain, "build_trainer", spy)
    trainer = pretrain.run_pretrain(cfg)

    assert trainer.global_step == 2  # 8 captions, 4 per batch, one epoch
    model = trainer.lightning_module
    assert any(
        not torch.equal(built["text"][k], v) for k, v in model.text_tower.state_dict().items()
    )
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train_image_text_loss"]) and metrics["train_image_text_loss"] > 0
    assert ("train_stablerep_loss" in metrics) == (config == "stablerep_pp.yaml")
    # zero-shot classes come from the manifest's class_names (= the val folders)
    assert model.class_names == ["class0", "class1"]
    assert 0.0 <= metrics["val_zero_shot_acc1"].item() <= 100.0
    assert model.logit_scale.item() <= math.log(100)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_through_the_command_line(manifest_root, tmp_path):
    # Lightning's DDP fails on any parameter without a gradient, and the image-text loss
    # gathers texts and images across both ranks.
    import sys

    result = run_pretrain_command(
        [sys.executable, "-m", "solo_stablerep.pretrain"],
        SYNTHETIC,
        "stablerep_pp.yaml",
        tmp_path,
        *TINY_TEXT,
        "augmentations.0.crop_size=32",
        f"data.train_path={manifest_root}",
        "data.synthetic.n_img=2",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
        "devices=2",
        "strategy=ddp",
        "+max_steps=2",
        "max_epochs=2",  # 8 captions, 4 per rank: one step per epoch
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "ckpt" / "stablerep_pp").rglob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert "logit_scale" in state["state_dict"]
