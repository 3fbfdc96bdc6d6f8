"""CLIP's byte-pair-encoding tokenizer, offline: open_clip's ``SimpleTokenizer`` reads the BPE
vocabulary shipped inside the open_clip package (``bpe_simple_vocab_16e6.txt.gz``), never the
hub."""

import torch

# CLIP's vocabulary (the text tower's embedding rows): 49,152 BPE merges + 256 bytes (x2 with
# the end-of-word form) + <sot>, <eot>
CLIP_VOCAB_SIZE = 49408
# CLIP's text context: 77 token slots
DEFAULT_CONTEXT_LENGTH = 77


class CaptionTokenizer:
    """Caption(s) -> CLIP token ids, ``<sot> ... <eot>`` zero-padded to ``context_length``.

    Captions longer than ``context_length`` are truncated (their last kept token becomes
    ``<eot>``, which the text tower pools), never an error. Picklable, so DataLoader workers
    can use it; the BPE tables are built on first use in each process.

    Args:
        context_length (int): number of token slots, ``<sot>`` and ``<eot>`` included, so at
            least 2 (CLIP: 77; StableRep++ checks its ``method_kwargs.context_length``).
    """

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.context_length = context_length
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """(context_length,) ids for one caption, (len(texts), context_length) for a list."""
        tokens = self.tokenizer(texts, context_length=self.context_length)
        return tokens[0] if isinstance(texts, str) else tokens

    def __getstate__(self):
        return {"context_length": self.context_length, "_tokenizer": None}

    def __repr__(self) -> str:
        return f"CaptionTokenizer(context_length={self.context_length})"
