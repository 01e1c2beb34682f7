"""The setup shared by the walkthrough notebooks (imported from the notebooks' folder, like `_scale_up.py`).

Importing it keeps the Hugging Face libraries offline (nothing in the notebooks downloads), registers every
hf_plugins method with PEFT, the Auto classes and the CLI, runs torch on one thread (tiny models: fastest, and robust
on a busy machine) and seeds it with 0. `text_batches` gives the tiny Llama's training batches, `train` is a plain
training loop over them, `trainable` counts trainable values and `elapsed` the seconds since the import.
"""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the Hugging Face imports

import time  # noqa: E402

import torch  # noqa: E402
from transformers import DataCollatorForLanguageModeling  # noqa: E402

import hf_plugins  # noqa: E402, F401 (registers every hf_plugins method)
from hf_plugins.testing import tiny_text_dataset  # noqa: E402


torch.set_num_threads(1)
torch.manual_seed(0)
_START = time.perf_counter()


def elapsed() -> float:
    """Seconds since this module was imported (the notebook's first cell)."""
    return time.perf_counter() - _START


def text_batches(tok, data=None, size: int = 16) -> list[dict]:
    """Causal-LM batches (`DataCollatorForLanguageModeling(mlm=False)`) of `size` consecutive examples of `data`,
    by default 64 plain-text arithmetic problems of at most 48 tokens (`tiny_text_dataset`)."""
    collate = DataCollatorForLanguageModeling(tok, mlm=False)
    data = tiny_text_dataset(tok, n=64, max_length=48) if data is None else data
    return [collate([data[i] for i in range(j, j + size)]) for j in range(0, len(data), size)]


def train(model, batches: list[dict], lr: float, steps: int = 60, before=None, after=None) -> list[float]:
    """A plain PyTorch loop (what Trainer does, minus the bookkeeping): AdamW without weight decay, one batch of
    `batches` per step in turn; `before(step)` runs before the forward, `after(step, optimizer)` after the update.
    Returns the training losses."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        if after is not None:
            after(step, opt)
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
