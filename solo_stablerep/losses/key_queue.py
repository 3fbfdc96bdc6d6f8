"""A first-in-first-out queue of teacher keys with their caption labels (MoCo's queue, labelled).

Its state is buffers (checkpointed and moved with the module). Every rank pushes the same
all-gathered keys, so the queues of all ranks stay equal without a collective of their own.
"""

import torch
import torch.nn as nn


class LabelledKeyQueue(nn.Module):
    """The last ``size`` keys pushed, with their labels; slots never filled are invalid.

    Args:
        size: number of keys held.
        dim: dimension of a key.

    Examples:
        >>> queue = LabelledKeyQueue(size=8, dim=4)
        >>> queue.push(torch.randn(4, 4), torch.arange(4))
        >>> int(queue.valid.sum())
        4
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.int64))
        self.register_buffer("valid", torch.zeros(size, dtype=torch.bool))
        # a tensor, not an int: pushing never waits for the device to read it
        self.register_buffer("position", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def push(
        self, keys: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """Writes ``keys`` (n, dim) and their ``labels`` over the oldest entries; rows with
        ``valid`` False (padding of an all-gather) are stored as invalid. Keys are stored as
        given (the losses push them L2-normalised and read them as such)."""

        n = keys.shape[0]
        if n > self.size:
            raise ValueError(f"cannot push {n} keys into a queue of {self.size}")
        slots = (self.position + torch.arange(n, device=keys.device)) % self.size
        self.keys.index_copy_(0, slots, keys.detach().to(self.keys.dtype))
        self.labels.index_copy_(0, slots, labels.to(torch.int64))
        flags = torch.ones(n, dtype=torch.bool, device=keys.device) if valid is None else valid
        self.valid.index_copy_(0, slots, flags)
        self.position.copy_((self.position + n) % self.size)
