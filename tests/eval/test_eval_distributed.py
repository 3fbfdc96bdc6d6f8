"""Feature extraction by several processes (``torchrun``'s environment, gloo on the CPU): the
ranks fill one cache entry that holds the same features as one process extracts; a rank that dies
leaves no valid entry. (NCCL on GPUs runs the same code with each rank on ``cuda:LOCAL_RANK``; not
tested here: no GPU.)"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from solo_stablerep.eval.cache import FeatureCache, cache_key
from solo_stablerep.eval.datasets import Split, image_transform
from solo_stablerep.eval.distributed import Ranks
from solo_stablerep.eval.features import ExtractionSettings, split_features

IDENTITY = {"model": {"test": "tiny-conv"}, "dataset": {"name": "random-8px"}, "split": "train"}
# One process and two see different batch boundaries: a convolution's float32 sums may round
# differently per batch size (measured: equal to the last bit here; bound kept loose).
TOLERANCE = 1e-5

RANK_SCRIPT = """
import os, sys
import torch
from solo_stablerep.eval.cache import FeatureCache
from solo_stablerep.eval.distributed import join, leave
from solo_stablerep.eval.features import ExtractionSettings
sys.path.insert(0, {tests!r})
from test_eval_distributed import IDENTITY, extract

ranks = join("cpu")
die_at = int(os.environ.get("DIE_ON_RANK", "-1"))
completed = False
try:
    extract(FeatureCache(sys.argv[1]), ExtractionSettings(8, 0, "cpu", False, ranks),
            die=ranks.rank == die_at)
    completed = True
finally:
    leave(completed)
"""


def tiny_backbone(die=False):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 6)
    ).eval()
    if die:  # killed at its first batch, as by the OOM killer: no exception, no cleanup
        net.register_forward_pre_hook(
            lambda module, args: os._exit(3) if len(args[0]) > 1 else None
        )
    return net


def small_split(num_items=101):
    """Random 8 x 8 images of 3 classes (an odd count: the ranks' shares differ in size)."""
    pixels = np.random.default_rng(0).integers(0, 256, (num_items, 8, 8, 3), dtype=np.uint8)
    return Split(np.arange(num_items) % 3, lambda i: Image.fromarray(pixels[i]), str)


def extract(cache, settings, die=False):
    split = small_split()
    transform = image_transform(12, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return split_features(
        cache, IDENTITY, split, transform, lambda: tiny_backbone(die), settings, "random train"
    )


def run_ranks(cache_dir, world_size=2, **env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = RANK_SCRIPT.format(tests=os.path.dirname(__file__))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(cache_dir)],
            env={
                **os.environ,
                **env,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "WORLD_SIZE": str(world_size),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "OMP_NUM_THREADS": "1",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world_size)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    return [p.returncode for p in processes], outputs


def test_two_ranks_fill_one_entry_with_the_features_of_one_process(tmp_path):
    alone = extract(FeatureCache(tmp_path / "alone"), ExtractionSettings(8, 0, "cpu", False))
    codes, outputs = run_ranks(tmp_path / "shared")
    assert codes == [0, 0], outputs
    cache = FeatureCache(tmp_path / "shared")
    entry = cache.load(cache_key(IDENTITY))
    assert entry is not None  # committed: a valid entry
    features, labels = entry
    assert features.shape == alone[0].shape == (101, 6)
    np.testing.assert_allclose(features, alone[0], rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_array_equal(labels, alone[1])
    # features, labels, JSON and the entry's lock (held by rank 0 while writing): nothing else
    assert sorted(p.suffix for p in (tmp_path / "shared").iterdir()) == [
        ".json",
        ".lock",
        ".npy",
        ".npy",
    ]


def test_a_rank_that_dies_leaves_no_valid_entry(tmp_path):
    codes, outputs = run_ranks(tmp_path, DIE_ON_RANK="1")
    assert codes[1] == 3 and codes[0] != 0, outputs
    assert FeatureCache(tmp_path).load(cache_key(IDENTITY)) is None
    # rank 0 removed the pending features: the entry's lock is all that is left
    assert [p.suffix for p in tmp_path.iterdir()] == [".lock"]


@pytest.mark.parametrize("num_items", [0, 1, 5, 898])
def test_shares_cover_the_split_once(num_items):
    shares = [Ranks(rank, 3).share(num_items) for rank in range(3)]
    assert [i for share in shares for i in share] == list(range(num_items))
