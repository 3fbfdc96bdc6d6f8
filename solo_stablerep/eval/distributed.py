"""The processes of one evaluation: one alone, or several started by ``torchrun``.

Under ``torchrun --nproc_per_node N -m solo_stablerep.eval ...`` (the environment carries
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address) the evaluation joins one
process group: NCCL with each rank on ``cuda:LOCAL_RANK`` when GPUs are used, else gloo on the CPU.
Each rank extracts its share of every split into the one cache entry (:mod:`.features`); rank 0
alone runs the probes and writes the outputs. The group is used for agreement only (a few integers
per split), never to move features: the ranks share them through the cache file, so the cache
folder must be on a file system every rank sees (one machine, or a shared mount).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from solo_stablerep.errors import EvalError, first_line

# How long a rank waits for the others at an agreement point (a rank extracting a large split is
# awaited by the ones done with theirs; a rank that died is awaited this long at most).
AGREEMENT_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """This process's place: ``rank`` of ``world_size``; ``device`` is the one it extracts on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, num_items: int) -> range:
        """The rows of a split of ``num_items`` this rank extracts: a contiguous block, the blocks
        of the ranks in order covering the split (sizes differing by one at most)."""
        return range(
            self.rank * num_items // self.world_size, (self.rank + 1) * num_items // self.world_size
        )

    def all_agree(self, value: int) -> int:
        """The smallest of every rank's ``value`` (a barrier too); ``value`` itself when alone."""
        if self.world_size == 1:
            return value
        device = self.device if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())


def usable_device(device: str | None) -> torch.device:
    """``--device`` as a torch device this process can allocate on (default: CUDA when available,
    else the CPU); a one-line :class:`EvalError` for a name torch does not know or a device that
    is not here (``cuda`` without a GPU, ``cuda:3`` on a machine with one)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise EvalError(
            f"--device {device}: not a device torch knows: give cpu, cuda or cuda:N"
        ) from None
    try:
        torch.empty(1, device=chosen)
    except (RuntimeError, AssertionError) as error:  # no driver, no GPU N, a CPU-only build
        raise EvalError(
            f"--device {device}: not usable here ({first_line(error)}): leave --device out to use "
            "what there is"
        ) from None
    return chosen


def join(device: str | None) -> Ranks:
    """This process's :class:`Ranks`: alone, or, under ``torchrun`` (``WORLD_SIZE`` > 1), a rank of
    the process group it joins here (NCCL on ``cuda:LOCAL_RANK`` unless ``device`` is ``cpu`` or
    there is no GPU; gloo then)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world_size == 1:
        return Ranks(device=usable_device(device))
    if device not in (None, "cpu", "cuda"):
        raise EvalError(
            f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; give cuda or cpu"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise EvalError(
                f"LOCAL_RANK {local_rank} but {torch.cuda.device_count()} GPU(s): start at most "
                "that many processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        ranks_device = torch.device("cuda", local_rank)
    else:
        ranks_device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            timeout=AGREEMENT_TIMEOUT,
            **({"device_id": ranks_device} if use_cuda else {}),
        )
    return Ranks(dist.get_rank(), dist.get_world_size(), ranks_device)


def leave(completed: bool) -> None:
    """Leaves the process group, if this process joined one. After a ``completed`` run a rank
    first waits for every other (a rank that tears its connections down while another still
    uses them can abort that one: gloo's "terminate called without an active exception", seen
    in about 1 of 15 two-rank runs); after a failure it leaves at once, the others may be gone."""
    if dist.is_available() and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()
