"""Reading the packed token files: fixed-length blocks for causal-LM pre-training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class PackedBlocks(torch.utils.data.Dataset):
    """Non-overlapping blocks of `block_size` tokens from `<corpus>/<split>.bin` (documents run on across
    block boundaries, separated by EOS, as in GPT-style pre-training). Items are `{"input_ids": LongTensor}`;
    the causal-LM collator or the model derives labels from them. `max_tokens` caps the tokens used."""

    def __init__(self, corpus_dir: str | Path, split: str, block_size: int, max_tokens: int | None = None):
        path = Path(corpus_dir) / f"{split}.bin"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the corpus first with `hf-plugins corpus build`")
        if block_size < 2:
            raise ValueError(f"`block_size` must be >= 2, got {block_size}")
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r")
        n = len(self.tokens) if max_tokens is None else min(len(self.tokens), max_tokens)
        self.block_size = block_size
        self.num_blocks = n // block_size
        if self.num_blocks == 0:
            raise ValueError(f"{path} holds {len(self.tokens)} tokens, fewer than one block of {block_size}")

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_blocks:
            raise IndexError(i)
        block = self.tokens[i * self.block_size : (i + 1) * self.block_size]
        return {"input_ids": torch.from_numpy(block.astype(np.int64))}


def read_manifest(corpus_dir: str | Path) -> dict:
    path = Path(corpus_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the corpus first with `hf-plugins corpus build`")
    return json.loads(path.read_text())
