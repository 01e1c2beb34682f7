"""`DataCollatorForMEAP`: Mask-Enhanced Autoregressive Prediction (arXiv 2502.07490) as a wrapping data collator."""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import torch
from transformers.data.data_collator import DataCollatorMixin

from .masking import group_lengths, select_in_groups, stochastic_round
from .tokens import check_mask_token_id


MODES = ("pretrain", "sft")
SFT_MODES = ("separate_rows", "concat")
CONCAT_ORDERS = ("original_first", "masked_first")
DEFAULT_MASK_RATIO = {"pretrain": 0.15, "sft": 0.1}  # official pre-training configs / official MEAP-SFT.py default
_SFT_KEYS = {"input_ids", "labels", "attention_mask", "seq_lengths"}


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass
class MaskRatioSchedule:
    """
    A mask-ratio schedule: `start` -> `end` over the first `num_batches` collated batches, then `end`.

    The official runs use a constant ratio; the schedule is an extension. It is a function of the number of
    batches the collator has produced (micro-batches, so gradient accumulation counts each one).

    Args:
        start (`float`, *optional*, defaults to `0.0`): ratio of the first batch.
        end (`float`, *optional*, defaults to `0.15`): ratio from batch `num_batches` on (paper's main value).
        num_batches (`int`, *optional*, defaults to `1000`): length of the ramp, in collated batches.
        kind (`str`, *optional*, defaults to `"linear"`): `"linear"` or `"cosine"` ramp.
    """

    start: float = 0.0
    end: float = 0.15
    num_batches: int = 1000
    kind: str = "linear"

    def __post_init__(self):
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        if not (_is_int(self.num_batches) and self.num_batches >= 1):
            raise ValueError(f"`num_batches` must be an integer >= 1, got {self.num_batches!r}.")
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"`kind` must be 'linear' or 'cosine', got {self.kind!r}.")

    def __call__(self, batch_index: int) -> float:
        t = min(max(batch_index, 0) / self.num_batches, 1.0)
        if self.kind == "cosine":
            t = 0.5 * (1.0 - math.cos(math.pi * t))
        return self.start + (self.end - self.start) * t


def _process_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _is_transformers_lm_collator(base) -> bool:
    cls = type(base)
    return cls.__name__ == "DataCollatorForLanguageModeling" and cls.__module__.startswith("transformers")


def _is_trl_lm_collator(base) -> bool:
    # TRL's collator turns every example's lists with torch.tensor(); it takes NumPy arrays as they are.
    cls = type(base)
    return cls.__name__ == "DataCollatorForLanguageModeling" and cls.__module__.startswith("trl")


def _int64_array(x) -> np.ndarray:
    """An example's token list as an int64 array (np.fromiter parses a list several times faster than
    torch.tensor)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.int64, copy=False).ravel()
    if isinstance(x, list):
        return np.fromiter(x, dtype=np.int64, count=len(x))
    return np.asarray(x, dtype=np.int64).ravel()


def _with_arrays(example: dict) -> dict:
    """The example with `input_ids` (and `labels`) as int64 arrays. TRL's collator turns each with `torch.tensor`,
    which copies an array in microseconds but parses a Python list ~10x slower than `np.fromiter`; the values and
    the batch it builds are the same."""
    out = {**example, "input_ids": _int64_array(example["input_ids"])}
    if "labels" in example:
        out["labels"] = _int64_array(example["labels"])
    return out


@dataclass
class DataCollatorForMEAP(DataCollatorMixin):
    """
    MEAP data collator (arXiv 2502.07490, ICML 2025): replace a small random fraction of the *input* tokens by a
    mask token and keep next-token prediction on the original tokens, in an unchanged causal decoder.

    It wraps a base collator (transformers' `DataCollatorForLanguageModeling(mlm=False)` for pre-training, TRL's
    `DataCollatorForLanguageModeling` for SFT, with or without padding-free / packing) instead of re-implementing
    padding, and never adds keys to the batch.

    - `mode="pretrain"` (official `meap_1b.py`): the base collates, then in every sequence (row, or packed segment
      where `position_ids == 0` starts a new one) `k = floor(mask_ratio * n + u)` of the `n` eligible input
      positions are replaced, fresh per example and per batch. Eligible: real tokens (not padding), not special
      tokens, not the last token of the sequence (the official code samples from `range(T - 1)`). Labels, the
      attention mask and position ids are the base's, untouched: labels are the original tokens. With TRL's
      collator as the base, the examples' `input_ids` / `labels` lists are first parsed into int64 arrays
      (`np.fromiter`, much faster than the `torch.tensor(list)` TRL would run; the batch is the same).
    - `mode="sft"` (official `MEAP-SFT.py`): examples whose labels mark the answer (label != -100; TRL's
      completion-only / assistant-only preparation) are transformed *before* the base collates them. For every
      contiguous supervised span with more than `min_answer_length` non-special tokens, `max(1, int(n *
      mask_ratio))` of its tokens are chosen, and
      - `sft_mode="separate_rows"` (default; the released code): one extra example is appended: the masked
        input, labels -100 except at the chosen positions (the original tokens there). The original is kept.
      - `sft_mode="concat"` (the paper as summarised; unverified): the example becomes original + masked copy in
        one sequence; labels are the original's, then -100 over the copy except at its masked positions.
      Shorter spans get plain next-token prediction.

    Args:
        base (`Callable`, *optional*):
            The collator to wrap. Default: transformers' `DataCollatorForLanguageModeling(tokenizer, mlm=False)`
            in pre-training mode, `DataCollatorForSeq2Seq(tokenizer)` in SFT mode.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Gives the mask token (`tokenizer.mask_token_id`) and the special tokens that are never masked
            (`tokenizer.all_special_ids`; docs/meap.md). Use `hf_plugins.add_mask_token` if it has no mask token.
        mode (`str`, *optional*, defaults to `"pretrain"`): `"pretrain"` or `"sft"`.
        mask_ratio (`float` or `Callable[[int], float]`, *optional*):
            Fraction of eligible tokens to mask, or a function of the number of batches produced so far (e.g.
            `MaskRatioSchedule`). Default 0.15 in pre-training (paper's main setting; ablations 0.05-0.2) and
            0.1 in SFT (official `MEAP-SFT.py` default).
        sft_mode (`str`, *optional*, defaults to `"separate_rows"`): `"separate_rows"` or `"concat"`, see above.
        concat_order (`str`, *optional*, defaults to `"original_first"`):
            In `"concat"`, `"original_first"` (the order of the summary's notation; the copy can attend to the
            unmasked original) or `"masked_first"`.
        min_answer_length (`int`, *optional*, defaults to `50`):
            SFT spans need more than this many tokens to get a masked copy (official: `len(tgt) > 50`).
        max_length (`int`, *optional*):
            In `"concat"`, truncate each concatenated unpacked example to this many tokens (the copy's tail goes).
            Refused in the other modes, which never truncate.
        mask_token_id (`int`, *optional*): overrides the tokenizer's mask token.
        special_token_ids (`Sequence[int]`, *optional*): overrides `tokenizer.all_special_ids`. The padding and
            mask ids are always excluded.
        seed (`int`, *optional*):
            Masks of batch `b` come from a generator seeded with (seed, process rank, dataloader worker, b), so
            runs are reproducible and ranks / workers differ. Default: `torch.initial_seed()` at construction
            (the Trainer's `set_seed(args.seed)` sets it when the collator is built after the Trainer).
        enabled (`bool`, *optional*, defaults to `True`):
            When False the base collator's batch is returned unchanged (evaluation; see `MEAPCallback`).

    Counters (exact with `dataloader_num_workers=0`; worker copies keep their own): `num_batches` (masked batches
    produced, the schedule's argument), `num_masked_tokens`, `num_eligible_tokens`, `num_extra_rows`, and for the
    last batch `last_num_masked`, `last_num_eligible`, `last_mask_ratio`.

    Example:

        >>> from transformers import Trainer
        >>> from hf_plugins import DataCollatorForMEAP, add_mask_token
        >>> add_mask_token(tokenizer, model)
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForMEAP(tokenizer=tokenizer))
    """

    base: Callable | None = None
    tokenizer: Any = None
    mode: str = "pretrain"
    mask_ratio: float | Callable[[int], float] | None = None
    sft_mode: str = "separate_rows"
    concat_order: str = "original_first"
    min_answer_length: int = 50
    max_length: int | None = None
    mask_token_id: int | None = None
    special_token_ids: Sequence[int] | None = None
    seed: int | None = None
    enabled: bool = True
    return_tensors: str = "pt"

    num_batches: int = field(default=0, init=False)
    num_masked_tokens: int = field(default=0, init=False)
    num_eligible_tokens: int = field(default=0, init=False)
    num_extra_rows: int = field(default=0, init=False)
    last_num_masked: int = field(default=0, init=False)
    last_num_eligible: int = field(default=0, init=False)
    last_mask_ratio: float = field(default=0.0, init=False)
    _rng: tuple | None = field(default=None, init=False, repr=False, compare=False)  # (pid, key prefix, rng)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}.")
        if self.sft_mode not in SFT_MODES:
            raise ValueError(f"`sft_mode` must be one of {SFT_MODES}, got {self.sft_mode!r}.")
        if self.concat_order not in CONCAT_ORDERS:
            raise ValueError(f"`concat_order` must be one of {CONCAT_ORDERS}, got {self.concat_order!r}.")
        if not (_is_int(self.min_answer_length) and self.min_answer_length >= 0):
            raise ValueError(f"`min_answer_length` must be an integer >= 0, got {self.min_answer_length!r}.")
        if self.max_length is not None and not (_is_int(self.max_length) and self.max_length >= 1):
            raise ValueError(f"`max_length` must be an integer >= 1 or None, got {self.max_length!r}.")
        if self.max_length is not None and (self.mode, self.sft_mode) != ("sft", "concat"):
            raise ValueError(
                f"`max_length`={self.max_length} applies to sft_mode='concat' only; truncate when tokenizing."
            )
        if not isinstance(self.enabled, bool):
            raise ValueError(f"`enabled` must be True or False, got {self.enabled!r}.")
        if self.return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt', got {self.return_tensors!r}.")
        if self.mask_ratio is None:
            self.mask_ratio = DEFAULT_MASK_RATIO[self.mode]
        if not callable(self.mask_ratio):
            self.mask_ratio = self._check_ratio(self.mask_ratio)
        self.mask_token_id = check_mask_token_id(self.mask_token_id, self.tokenizer)
        if self.base is None:
            self.base = self._default_base()
        elif not callable(self.base):
            raise ValueError(f"`base` must be a data collator (a callable on a list of examples), got {self.base!r}.")
        elif self.mode == "sft" and _is_transformers_lm_collator(self.base):
            raise ValueError(
                "mode='sft' needs a base collator that keeps the examples' labels; transformers' "
                "DataCollatorForLanguageModeling rebuilds them from input_ids. Use TRL's "
                "DataCollatorForLanguageModeling (what SFTTrainer builds) or DataCollatorForSeq2Seq."
            )
        if self.seed is None:
            self.seed = torch.initial_seed()
        special = set(self.special_token_ids if self.special_token_ids is not None else [])
        if self.special_token_ids is None and self.tokenizer is not None:
            special.update(self.tokenizer.all_special_ids)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(self.base, "pad_token_id", None)
        special.update(i for i in (pad_id, self.mask_token_id) if i is not None)
        # Lookup table "not special" over the vocabulary (at least ids 0 .. max(special) + 1; grown on demand).
        size = max(max(special, default=0) + 2, len(self.tokenizer) if self.tokenizer is not None else 0)
        self._plain_lut = np.ones(size, dtype=bool)
        self._plain_lut[sorted(i for i in special if i >= 0)] = False
        self._base_takes_arrays = _is_trl_lm_collator(self.base)

    def _default_base(self):
        if self.tokenizer is None:
            raise ValueError("Pass `base` (the collator to wrap) or `tokenizer` (to build a default one).")
        if self.mode == "pretrain":
            from transformers import DataCollatorForLanguageModeling

            return DataCollatorForLanguageModeling(self.tokenizer, mlm=False)
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100)

    @staticmethod
    def _check_ratio(value) -> float:
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value <= 1.0):
            raise ValueError(f"`mask_ratio` must be a number in [0, 1] (or a schedule), got {value!r}.")
        return float(value)

    def current_mask_ratio(self) -> float:
        """The ratio the next batch will use."""
        if callable(self.mask_ratio):
            return self._check_ratio(self.mask_ratio(self.num_batches))
        return self.mask_ratio

    def unmasked(self):
        """Context manager that turns masking off, e.g. around a manual `trainer.evaluate()`."""
        return _Unmasked(self)

    def _generator(self) -> np.random.Generator:
        """The batch's random stream: PCG64 with its 128-bit state and increment taken from a hash of (seed, process
        rank, dataloader worker, batch index). One generator is reused and re-seeded (cheaper than a new one)."""
        pid = os.getpid()
        if self._rng is None or self._rng[0] != pid:  # first batch in this process (dataloader workers are processes)
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else -1
            prefix = f"meap:{self.seed}:{_process_rank()}:{worker}:"
            self._rng = (pid, prefix, np.random.Generator(np.random.PCG64()))
        _, prefix, rng = self._rng
        h = int.from_bytes(hashlib.blake2b(f"{prefix}{self.num_batches}".encode(), digest_size=32).digest())
        rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": h >> 128, "inc": (h & (1 << 128) - 1) | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return rng

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.enabled:
            return self.base(examples)
        if not examples:
            raise ValueError("DataCollatorForMEAP got an empty batch (no examples).")
        ratio = self.current_mask_ratio()
        generator = self._generator()
        self.last_num_masked = self.last_num_eligible = 0
        self.last_mask_ratio = ratio
        if self.mode == "pretrain":
            if self._base_takes_arrays:  # TRL's collator: parse the lists once, fast, as in SFT mode
                examples = [_with_arrays(ex) for ex in examples]
            batch = self.base(examples)
            if ratio > 0:
                self._mask_batch(batch, ratio, generator)
        else:
            if ratio > 0:
                examples = self._sft_examples(examples, ratio, generator)
            batch = self.base(examples)
        self.num_batches += 1
        self.num_masked_tokens += self.last_num_masked
        self.num_eligible_tokens += self.last_num_eligible
        return batch

    # ------------------------------------------------------------------ pre-training mode
    def _not_special(self, ids: np.ndarray) -> np.ndarray:
        """A new bool array: True where `ids` is not a special token (one table look-up per token). Negative ids,
        and ids beyond the tokenizer's vocabulary when one is given, raise `ValueError`."""
        if ids.size and ids.min() < 0:
            raise ValueError(f"input_ids hold a negative token id ({int(ids.min())}); token ids must be >= 0.")
        try:
            return self._plain_lut.take(ids)
        except IndexError:  # ids beyond the table: an error with a tokenizer; without one, not special: grow it
            if self.tokenizer is not None:
                msg = f"input_ids hold the token id {int(ids.max())}, beyond the tokenizer's {len(self.tokenizer)}"
                raise ValueError(msg + " tokens: were the examples tokenized with another tokenizer?") from None
            lut = self._plain_lut
            self._plain_lut = np.concatenate([lut, np.ones(int(ids.max()) + 1 - lut.size, dtype=bool)])
            return self._plain_lut.take(ids)

    def _mask_batch(self, batch, ratio: float, rng: np.random.Generator) -> None:
        ids = batch["input_ids"]
        if ids.dim() != 2:
            raise ValueError(f"input_ids of shape {tuple(ids.shape)}: each example's must be a flat list of ids.")
        if ids.numel() == 0:
            return
        grid = ids.view(-1, ids.shape[-1]).numpy()  # shares memory with the base's tensor
        # Eligible: not special, real, and followed by a real token of the same sequence (so never the last one).
        eligible = self._not_special(grid)
        eligible[:, -1] = False
        if "attention_mask" in batch:
            real = batch["attention_mask"].view(grid.shape).numpy()
            if real.min() == 0:  # some padding (all rows full, the common packed case, skips this)
                np.logical_and(eligible, real, out=eligible)
                np.logical_and(eligible[:, :-1], real[:, 1:], out=eligible[:, :-1])

        def num_to_mask(counts):
            return stochastic_round(counts * ratio, rng)

        if "position_ids" in batch:  # padding-free / packed: every position_ids == 0 starts a new sequence
            starts = np.flatnonzero(batch["position_ids"].view(grid.shape).numpy().ravel() == 0)
            flat = eligible.ravel()
            flat[starts[starts > 0] - 1] = False  # the last token of each sequence
            if grid.shape[0] > 1 or starts.size == 0 or starts[0] != 0:  # every row starts a sequence too
                starts = np.union1d(starts, np.arange(0, grid.size, grid.shape[1]))
            sel = select_in_groups(flat, num_to_mask, rng, lengths=group_lengths(starts, grid.size))
        else:  # one sequence per row: the rows are the groups
            sel = select_in_groups(eligible, num_to_mask, rng)
        if "labels" in batch and batch["labels"].untyped_storage().data_ptr() == ids.untyped_storage().data_ptr():
            batch["labels"] = batch["labels"].clone()  # labels keep the original tokens
        np.putmask(grid, sel.mask.reshape(grid.shape), self.mask_token_id)  # in place, in the base's tensor
        self.last_num_masked = int(sel.k.sum())
        self.last_num_eligible = int(sel.counts.sum())

    # ------------------------------------------------------------------ SFT modes
    def _sft_examples(self, examples: list[dict], ratio: float, rng: np.random.Generator) -> list[dict]:
        if any("input_ids" not in ex for ex in examples):
            raise ValueError("MEAP (mode='sft'): an example has no `input_ids`; tokenize the data set first.")
        unknown = set(examples[0]) - _SFT_KEYS
        if unknown:
            raise ValueError(
                f"DataCollatorForMEAP(mode='sft') can only rebuild examples with the keys {sorted(_SFT_KEYS)}; got "
                f"also {sorted(unknown)}. Remove those columns (e.g. `remove_unused_columns=True`)."
            )
        # Each example is read once into int64 arrays; the masking works on their concatenation.
        ids = [_int64_array(ex["input_ids"]) for ex in examples]
        labels = [_int64_array(ex["labels"]) if "labels" in ex else x for ex, x in zip(examples, ids)]
        seg_lists = [list(ex["seq_lengths"]) if "seq_lengths" in ex else [x.size] for ex, x in zip(examples, ids)]
        for i, (segs, x, y) in enumerate(zip(seg_lists, ids, labels)):
            if sum(segs) != x.size or y.size != x.size:
                raise ValueError(
                    f"Example {i}: input_ids ({x.size}), labels ({y.size}) and sum(seq_lengths) ({sum(segs)}) "
                    "must agree."
                )
        flat_ids, flat_labels = np.concatenate(ids), np.concatenate(labels)
        if flat_ids.size == 0:
            return examples
        seg_len = np.fromiter(chain.from_iterable(seg_lists), dtype=np.intp)
        seg_end = np.cumsum(seg_len)
        starts = np.zeros(flat_ids.size, dtype=bool)
        starts[(seg_end - seg_len)[seg_len > 0]] = True
        supervised = flat_labels != -100
        starts[1:] |= supervised[1:] != supervised[:-1]  # spans: runs of supervised tokens inside one segment
        eligible = supervised & self._not_special(flat_ids)
        lengths = group_lengths(np.flatnonzero(starts), starts.size)  # starts[0] is True: flat_ids is not empty
        min_length = self.min_answer_length

        def num_to_mask(counts):  # official: k = max(1, int(len(answer) * mask_ratio)) for answers > 50 tokens
            return np.where(counts > min_length, np.maximum(np.floor(counts * ratio).astype(np.intp), 1), 0)

        sel = select_in_groups(eligible, num_to_mask, rng, lengths=lengths)
        self.last_num_masked = int(sel.k.sum())
        self.last_num_eligible = int(sel.counts[sel.k > 0].sum())
        if self.last_num_masked == 0:
            return examples

        masked_ids = flat_ids.copy()
        np.putmask(masked_ids, sel.mask, self.mask_token_id)
        copy_labels = np.where(sel.mask, flat_ids, -100)
        seg_of_masked = np.searchsorted(seg_end, np.flatnonzero(sel.mask), side="right")
        seg_masked = (np.bincount(seg_of_masked, minlength=seg_len.size) > 0).tolist()
        flat = _Flat(flat_ids, flat_labels, masked_ids, copy_labels, self._base_takes_arrays)
        out, extra = [], []
        offset, seg_index = 0, 0
        for i, (ex, segs) in enumerate(zip(examples, seg_lists)):
            segments = []
            for length in segs:
                segments.append((offset, offset + length, seg_masked[seg_index]))
                offset, seg_index = offset + length, seg_index + 1
            original = ex
            if self._base_takes_arrays:  # hand the parsed arrays on: the base need not parse the lists again
                original = {**ex, "input_ids": ids[i], **({"labels": labels[i]} if "labels" in ex else {})}
            if not any(m for _, _, m in segments):
                out.append(original)
            elif self.sft_mode == "separate_rows":
                out.append(original)
                extra.append(self._extra_row(ex, flat, [(lo, hi) for lo, hi, m in segments if m]))
            else:
                out.append(self._concat_row(ex, flat, segments))
        self.num_extra_rows += len(extra)
        return out + extra

    def _extra_row(self, ex, flat: _Flat, pieces) -> dict:
        ids = np.concatenate([flat.masked_ids[lo:hi] for lo, hi in pieces])
        row = {"input_ids": ids, "labels": np.concatenate([flat.copy_labels[lo:hi] for lo, hi in pieces])}
        if "seq_lengths" in ex:
            row["seq_lengths"] = [hi - lo for lo, hi in pieces]
        if "attention_mask" in ex:
            row["attention_mask"] = np.ones(ids.size, dtype=np.int64)
        return flat.finish(row)

    def _concat_row(self, ex, flat: _Flat, segments) -> dict:
        ids, labels, seg_lengths = [], [], []
        for lo, hi, has_mask in segments:
            if not has_mask:
                ids.append(flat.ids[lo:hi])
                labels.append(flat.labels[lo:hi])
                seg_lengths.append(hi - lo)
                continue
            first, second = (flat.ids[lo:hi], flat.labels[lo:hi]), (flat.masked_ids[lo:hi], flat.copy_labels[lo:hi])
            if self.concat_order == "masked_first":
                first, second = second, first
            ids += [first[0], second[0]]
            labels += [first[1], second[1]]
            seg_lengths.append(2 * (hi - lo))
        ids, labels = np.concatenate(ids), np.concatenate(labels)
        if self.max_length is not None and "seq_lengths" not in ex:
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        row = {"input_ids": ids, "labels": labels}
        if "seq_lengths" in ex:
            row["seq_lengths"] = seg_lengths
        if "attention_mask" in ex:
            row["attention_mask"] = np.ones(ids.size, dtype=np.int64)
        return flat.finish(row)


@dataclass
class _Flat:
    """The batch's examples concatenated: original ids and labels, masked ids, and the masked copy's labels."""

    ids: np.ndarray
    labels: np.ndarray
    masked_ids: np.ndarray
    copy_labels: np.ndarray
    as_arrays: bool

    def finish(self, row: dict) -> dict:
        """Rows for a base that takes arrays (TRL's collator) stay arrays; other bases get Python lists."""
        if self.as_arrays:
            return row
        return {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in row.items()}


class _Unmasked:
    def __init__(self, collator: DataCollatorForMEAP):
        self.collator = collator

    def __enter__(self):
        self.previous, self.collator.enabled = self.collator.enabled, False
        return self.collator

    def __exit__(self, *exc):
        self.collator.enabled = self.previous
        return False
