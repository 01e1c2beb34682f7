"""Calibration token windows for one-shot pruning.

Wanda and SparseGPT calibrate on 128 random windows of C4 training text of the model's context length, seed 0
(`lib/data.py::get_c4` of github.com/locuslab/wanda; `datautils.py` of github.com/IST-DASLab/sparsegpt). Offline
we draw the same kind of windows from local text: by default the plain text of the embedded arithmetic
problems (`hf_plugins.data.arithmetic`), or any text file. Texts are tokenized one by one and joined with the
tokenizer's EOS token; windows start at seeded random offsets.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..data.arithmetic import ArithmeticConfig, generate_problems


__all__ = ["arithmetic_texts", "calibration_windows", "text_file_texts"]


def arithmetic_texts(num: int = 2000, seed: int = 0) -> list[str]:
    """Plain text ("Question: ... Answer: ...") of `num` training problems of the embedded arithmetic task."""
    problems = generate_problems(ArithmeticConfig(seed=seed, num_train=num, num_test=0), split="train")
    return [p.plain_text() for p in problems]


def text_file_texts(path: str | Path) -> list[str]:
    """Paragraphs (blank-line separated) of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration text file {path} not found")
    paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
    paras = [p for p in paras if p]
    if not paras:
        raise ValueError(f"calibration text file {path} is empty")
    return paras


def calibration_windows(tokenizer, texts: list[str], nsamples: int = 128, seqlen: int = 512, seed: int = 0):
    """A LongTensor (nsamples, seqlen) of token windows drawn at seeded random offsets of the joined texts."""
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"need nsamples >= 1 and seqlen >= 2, got nsamples={nsamples}, seqlen={seqlen}")
    # Tokenize text by text (no "sequence longer than model_max_length" warning) and join with EOS.
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pieces = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tok for piece in pieces for tok in (*piece, *sep)], dtype=torch.long)
    if ids.numel() < seqlen:
        raise ValueError(
            f"the calibration text has {ids.numel()} tokens, fewer than seqlen={seqlen}; give more text or a "
            "smaller seqlen"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seqlen) for _ in range(nsamples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])
