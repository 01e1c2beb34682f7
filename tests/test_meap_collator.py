"""DataCollatorForMEAP on its own: every check compares with a reference computed another way (an explicit
loop, the base collator's batch, hand-derived layouts, binomial bounds)."""

import itertools
import math

import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling as HFLMCollator

from hf_plugins import DataCollatorForMEAP, MaskRatioSchedule, add_mask_token
from hf_plugins.collators.meap import masking
from hf_plugins.collators.meap.masking import group_ids_from_starts, select_in_groups
from hf_plugins.testing import tiny_llama, tiny_tokenizer


trl_sft = pytest.importorskip("trl.trainer.sft_trainer")
TRLCollator = trl_sft.DataCollatorForLanguageModeling


@pytest.fixture
def tok():
    t = tiny_tokenizer()
    add_mask_token(t)
    return t


def _random_examples(tok, n, lo=3, hi=40, seed=0, with_specials=True):
    g = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    words = [i for i in range(len(tok)) if i not in special]
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (1,), generator=g))
        ids = [words[int(j)] for j in torch.randint(0, len(words), (length,), generator=g)]
        if with_specials:
            ids = [tok.bos_token_id, *ids, tok.eos_token_id]
        out.append({"input_ids": ids})
    return out


# ----------------------------------------------------------------------------- the selection kernel
def _rng(seed):
    return np.random.Generator(np.random.PCG64(seed))


def _check_against_buckets(sel, bucket, group, eligible, k):
    """Per group with a Python loop, from the same bucket-number draw: exactly min(k, #eligible) eligible positions
    are chosen, and the choice is closed downwards in bucket order (every eligible position in a lower bucket than
    some chosen one is chosen; only the last bucket is split)."""
    mask = sel.mask.ravel()
    for gid in range(k.size):
        pos = [p for p in range(bucket.size) if group[p] == gid and eligible[p]]
        chosen = [p for p in pos if mask[p]]
        assert not any(mask[p] for p in range(bucket.size) if group[p] == gid and not eligible[p])
        assert len(chosen) == min(int(k[gid]), len(pos)), gid
        if chosen:
            top = max(int(bucket[p]) for p in chosen)
            assert all(mask[p] for p in pos if bucket[p] < top), gid
            assert not any(mask[p] for p in pos if bucket[p] > top), gid


@pytest.mark.parametrize("max_bucket_bits", [12, 1])  # ~1 position per edge bucket / huge edge buckets
def test_select_in_groups_equals_an_explicit_loop(max_bucket_bits, monkeypatch):
    """The bucket histogram + edge subset picks, in each group, exactly k eligible positions, all of the buckets
    below the edge and part of the edge bucket: recheck per group with a Python loop from the same bucket draw,
    for flat groups (given by ids or by lengths) and for rows."""
    monkeypatch.setattr(masking, "_MAX_BUCKET_BITS", max_bucket_bits)
    r = _rng(3)
    n = 300
    group = group_ids_from_starts(r.random(n) < 0.05)
    eligible = r.random(n) < 0.7
    n_groups = int(group[-1]) + 1
    k = r.integers(0, 12, n_groups)
    bits = masking._bucket_bits(n, n_groups)
    bucket = masking.bucket_keys(_rng(11), n, bits)
    sel = select_in_groups(eligible, k, _rng(11), group, n_groups)
    _check_against_buckets(sel, bucket, group, eligible, k)
    counts = np.bincount(group[eligible], minlength=n_groups)
    np.testing.assert_array_equal(sel.counts, counts)
    np.testing.assert_array_equal(sel.k, np.minimum(k, counts))
    by_lengths = select_in_groups(eligible, k, _rng(11), lengths=np.bincount(group, minlength=n_groups))
    np.testing.assert_array_equal(by_lengths.mask, sel.mask)  # the same groups, the same draw
    # rows of a 2-D batch are the groups
    rows, width = 6, 50
    eligible2 = r.random((rows, width)) < 0.8
    k2 = np.array([0, 1, 5, 20, 40, 50])
    sel2 = select_in_groups(eligible2, k2, _rng(5))
    bucket2 = masking.bucket_keys(_rng(5), rows * width, masking._bucket_bits(rows * width, rows))
    _check_against_buckets(sel2, bucket2, np.repeat(np.arange(rows), width), eligible2.ravel(), k2)


@pytest.mark.parametrize("layout", ["rows", "lengths"])
@pytest.mark.parametrize("max_bucket_bits", [12, 1])
def test_select_in_groups_draws_uniform_subsets_like_random_sample(max_bucket_bits, layout, monkeypatch):
    """Every k-subset is equally likely: the frequencies of the 15 possible 2-subsets of 6 eligible positions,
    over 12,000 groups (rows, or flat groups given by their lengths), pass the same chi-square test (14 dof, 0.1%
    level) as `random.sample`."""
    import random

    monkeypatch.setattr(masking, "_MAX_BUCKET_BITS", max_bucket_bits)
    groups, length = 12_000, 8
    eligible = np.ones((groups, length), dtype=bool)
    eligible[:, [0, 5]] = False  # 6 eligible positions per group, not contiguous
    if layout == "rows":
        sel = select_in_groups(eligible, np.full(groups, 2), _rng(7))
    else:
        flat = select_in_groups(eligible.ravel(), np.full(groups, 2), _rng(7), lengths=np.full(groups, length))
        sel = flat._replace(mask=flat.mask.reshape(groups, length))
    assert np.all(sel.mask.sum(1) == 2) and not sel.mask[:, [0, 5]].any()
    subsets = list(itertools.combinations([1, 2, 3, 4, 6, 7], 2))
    index = {s: i for i, s in enumerate(subsets)}
    ours = np.bincount([index[tuple(np.flatnonzero(row))] for row in sel.mask], minlength=len(subsets))
    rnd = random.Random(0)
    ref = np.bincount(
        [index[tuple(sorted(rnd.sample([1, 2, 3, 4, 6, 7], 2)))] for _ in range(groups)], minlength=len(subsets)
    )
    expected = groups / len(subsets)
    for counts in (ours, ref):
        assert ((counts - expected) ** 2 / expected).sum() < 36.12  # chi2(14) 99.9% quantile


def test_pretrain_masks_match_a_per_example_reference_in_distribution(tok):
    """Against a straightforward per-example implementation (Python `random`: k = floor(ratio * n + u), then
    `random.sample` of the eligible positions): the mean masked count of every row and the masking frequency of
    every eligible position agree within 4 binomial standard deviations over 600 batches."""
    import random

    examples = _random_examples(tok, 6, lo=5, hi=40)
    base = HFLMCollator(tok, mlm=False)
    ref_ids = base(examples)["input_ids"]
    collator = DataCollatorForMEAP(base=base, tokenizer=tok, seed=3, mask_ratio=0.2)
    special = set(tok.all_special_ids)
    rnd = random.Random(1)
    batches = 600
    ours, theirs = torch.zeros(ref_ids.shape), torch.zeros(ref_ids.shape)
    for _ in range(batches):
        ours += (collator(examples)["input_ids"] != ref_ids).float()
        for row, ex in enumerate(examples):
            eligible = [j for j in range(len(ex["input_ids"]) - 1) if ex["input_ids"][j] not in special]
            k = math.floor(0.2 * len(eligible) + rnd.random())
            theirs[row, rnd.sample(eligible, k)] += 1
    assert torch.equal(ours > 0, theirs > 0)  # the same eligible positions, and only those
    for row in range(len(examples)):
        n = int((theirs[row] > 0).sum())
        sd = math.sqrt(batches * 0.25)  # the count takes two adjacent values: variance <= 1/4 per batch
        assert abs(ours[row].sum() - theirs[row].sum()) <= 4 * math.sqrt(2) * sd + 1e-9, row
        assert abs(ours[row].sum() / batches - 0.2 * n) <= 4 * sd / batches + 1e-9
    p = 0.2
    eligible = theirs > 0
    sd = math.sqrt(2 * p * (1 - p) / batches) + 2.0 / batches
    assert torch.all((ours[eligible] - theirs[eligible]).abs() / batches <= 4 * sd)


# ----------------------------------------------------------------------------- pre-training mode
@pytest.mark.parametrize("max_bucket_bits", [12, 1])
def test_pretrain_batch_equals_base_except_masked_inputs(tok, max_bucket_bits, monkeypatch):
    """Labels, attention mask and every unmasked input equal the base collator's batch; masked inputs hold the
    mask id; padding, special tokens and the last real token of each row are never masked; each row masks
    floor or ceil of ratio * (eligible tokens)."""
    monkeypatch.setattr(masking, "_MAX_BUCKET_BITS", max_bucket_bits)
    examples = _random_examples(tok, 16)
    base = HFLMCollator(tok, mlm=False)
    ref = base(examples)
    batch = DataCollatorForMEAP(base=base, tokenizer=tok, seed=0)(examples)
    assert set(batch) == set(ref)
    assert torch.equal(batch["labels"], ref["labels"]) and torch.equal(batch["attention_mask"], ref["attention_mask"])
    masked = batch["input_ids"] != ref["input_ids"]
    assert torch.all(batch["input_ids"][masked] == tok.mask_token_id)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        # eligible by hand: not special, not padding, not the last real token
        eligible = [j for j in range(n - 1) if ex["input_ids"][j] not in tok.all_special_ids]
        chosen = masked[row].nonzero().flatten().tolist()
        assert set(chosen) <= set(eligible)
        assert len(chosen) in (math.floor(0.15 * len(eligible)), math.ceil(0.15 * len(eligible)))


def test_pretrain_mask_fraction_within_binomial_tolerance(tok):
    """Over many batches the masked fraction of eligible tokens is 0.15 within 4 binomial standard deviations,
    and every eligible position of a fixed batch is masked with frequency 0.15 (fresh positions per batch)."""
    examples = _random_examples(tok, 8, lo=2, hi=30)
    collator = DataCollatorForMEAP(base=HFLMCollator(tok, mlm=False), tokenizer=tok, seed=1)
    ref = collator.base(examples)["input_ids"]
    hits = torch.zeros_like(ref, dtype=torch.float64)
    batches = 400
    for _ in range(batches):
        hits += (collator(examples)["input_ids"] != ref).double()
    n = collator.num_eligible_tokens
    assert n == batches * collator.last_num_eligible
    p = 0.15
    assert abs(collator.num_masked_tokens - p * n) <= 4 * math.sqrt(n * p * (1 - p))
    eligible = hits > 0
    freq = hits[eligible] / batches
    assert torch.all((freq - p).abs() <= 4 * math.sqrt(p * (1 - p) / batches) + 1.0 / batches)
    assert collator.num_batches == batches


def test_padding_free_keeps_sequence_boundaries(tok):
    """TRL padding-free with packed `seq_lengths`: position ids, cu_seq_lens, seq_idx and labels (-100 at every
    position_ids == 0) equal the base's; each segment masks its own share, never its last token."""
    examples = _random_examples(tok, 6, lo=10, hi=40, with_specials=False)
    for ex in examples:
        n = len(ex["input_ids"])
        ex["seq_lengths"] = [n // 3, n - n // 3]
    base = TRLCollator(pad_token_id=tok.pad_token_id, padding_free=True, pad_to_multiple_of=8)
    ref = base(examples)
    batch = DataCollatorForMEAP(base=base, tokenizer=tok, seed=2, mask_ratio=0.3)(examples)
    for key in ("labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "seq_idx"):
        assert torch.equal(batch[key], ref[key]), key
    assert batch["max_length_q"] == ref["max_length_q"]
    assert torch.all(batch["labels"][batch["position_ids"] == 0] == -100)
    masked = (batch["input_ids"] != ref["input_ids"])[0]
    cu = ref["cu_seq_lens_q"].tolist()
    real_end = sum(len(ex["input_ids"]) for ex in examples)
    for lo, hi in itertools.pairwise(cu):
        if lo >= real_end:  # the base's padding tail: single-token "segments", never masked
            assert not masked[lo:hi].any()
            continue
        eligible = hi - lo - 1
        assert not masked[hi - 1]
        assert int(masked[lo:hi].sum()) in (math.floor(0.3 * eligible), math.ceil(0.3 * eligible))


@pytest.mark.parametrize("position_ids", [False, True])
def test_full_rows_without_tokenizer_and_row_position_ids(position_ids):
    """No tokenizer (special ids given, token ids far beyond them), rows of equal length (attention mask all ones)
    and, optionally, per-row `position_ids` restarting inside rows: per sequence (row, or run starting at
    position_ids == 0) exactly floor or ceil of 0.25 * eligible positions are masked, never a special token and
    never the sequence's last token; labels stay the base's."""
    g = torch.Generator().manual_seed(5)
    rows, width, special = 5, 60, [0, 1, 2]
    ids = torch.randint(0, 5000, (rows, width), generator=g)
    ids[:, ::7] = 1  # special tokens inside
    examples = [{"input_ids": row.tolist()} for row in ids]
    base = TRLCollator(pad_token_id=0, return_position_ids=position_ids)
    cuts = [0, 17, 41] if position_ids else [0]
    if position_ids:
        for ex in examples:
            ex["seq_lengths"] = [17, 24, width - 41]
    ref = base(examples)
    collator = DataCollatorForMEAP(base=base, mask_token_id=9, special_token_ids=special, seed=4, mask_ratio=0.25)
    batch = collator(examples)
    assert torch.equal(batch["labels"], ref["labels"])
    masked = batch["input_ids"] != ref["input_ids"]
    assert torch.all(batch["input_ids"][masked] == 9)
    total = 0
    for r in range(rows):
        for lo, hi in itertools.pairwise([*cuts, width]):
            seg = ids[r, lo:hi].tolist()
            eligible = [j for j in range(len(seg) - 1) if seg[j] not in special and seg[j] != 9]
            chosen = masked[r, lo:hi].nonzero().flatten().tolist()
            assert set(chosen) <= set(eligible), (r, lo)
            assert len(chosen) in (math.floor(0.25 * len(eligible)), math.ceil(0.25 * len(eligible)))
            total += len(eligible)
    assert collator.last_num_eligible == total and collator.last_num_masked == int(masked.sum())


def test_ratio_zero_gives_exactly_the_base_batch(tok):
    examples = _random_examples(tok, 5)
    for base, mode, exs in [
        (HFLMCollator(tok, mlm=False), "pretrain", examples),
        (TRLCollator(pad_token_id=0, padding_free=True), "pretrain", examples),
        (TRLCollator(pad_token_id=0), "pretrain", [{**e, "labels": e["input_ids"][::-1]} for e in examples]),
        (TRLCollator(pad_token_id=0), "sft", [{**e, "labels": e["input_ids"]} for e in examples]),
    ]:
        ref = base(exs)
        batch = DataCollatorForMEAP(base=base, tokenizer=tok, mode=mode, mask_ratio=0.0, min_answer_length=0)(exs)
        assert set(batch) == set(ref)
        for key, value in ref.items():
            if isinstance(value, torch.Tensor):  # TRL's base gets MEAP's int64 arrays instead of the lists
                assert torch.equal(batch[key], value) and batch[key].dtype == value.dtype, key
            else:
                assert batch[key] == value


def test_seeded_reproducible_and_fresh_per_batch_rank_and_worker(tok, monkeypatch):
    examples = _random_examples(tok, 8, lo=20, hi=40)

    def masks(seed, n=3):
        c = DataCollatorForMEAP(base=HFLMCollator(tok, mlm=False), tokenizer=tok, seed=seed)
        return [c(examples)["input_ids"] for _ in range(n)]

    a, b = masks(0), masks(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # fresh positions every batch
    assert not torch.equal(a[0], masks(1)[0])
    monkeypatch.setenv("RANK", "1")
    assert not torch.equal(a[0], masks(0)[0])  # another rank draws other positions


def test_mask_ratio_schedule(tok):
    sched = MaskRatioSchedule(start=0.0, end=0.2, num_batches=4)
    assert [sched(i) for i in range(6)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    cos = MaskRatioSchedule(start=0.1, end=0.3, num_batches=2, kind="cosine")
    assert cos(1) == pytest.approx(0.2) and cos(2) == pytest.approx(0.3)
    examples = _random_examples(tok, 8, lo=20, hi=40)
    c = DataCollatorForMEAP(base=HFLMCollator(tok, mlm=False), tokenizer=tok, mask_ratio=sched)
    seen = []
    for _ in range(5):
        c(examples)
        seen.append(c.last_mask_ratio)
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    with pytest.raises(ValueError, match="kind"):
        MaskRatioSchedule(kind="step")
    with pytest.raises(ValueError, match="mask_ratio"):
        DataCollatorForMEAP(tokenizer=tok, mask_ratio=lambda b: 1.5)(examples)


def test_disabled_and_unmasked_return_the_base_batch(tok):
    examples = _random_examples(tok, 4, lo=20, hi=40)
    c = DataCollatorForMEAP(tokenizer=tok, mask_ratio=0.5)
    ref = c.base(examples)
    with c.unmasked():
        assert torch.equal(c(examples)["input_ids"], ref["input_ids"])
    assert c.enabled and c.num_batches == 0
    assert not torch.equal(c(examples)["input_ids"], ref["input_ids"])


# ----------------------------------------------------------------------------- SFT modes
def _sft_examples():
    # prompt (-100) then an answer span; ids >= 10 are ordinary tokens of the tiny vocabulary, 5 is eos
    long_answer = list(range(10, 70))  # 60 tokens > 50
    short_answer = list(range(10, 40))  # 30 tokens: plain NTP
    return [
        {"input_ids": [1, 80, 81, 82, *long_answer, 5], "labels": [-100] * 4 + [*long_answer, 5]},
        {"input_ids": [1, 83, 84, *short_answer, 5], "labels": [-100] * 3 + [*short_answer, 5]},
    ]


def test_sft_separate_rows_layout(tok):
    """Official MEAP-SFT.py: originals unchanged; one extra row per long answer, appended, with max(1, int(60 *
    0.1)) = 6 masked answer tokens, labels -100 except those positions (original tokens there)."""
    examples = _sft_examples()
    base = TRLCollator(pad_token_id=tok.pad_token_id)
    collator = DataCollatorForMEAP(base=base, tokenizer=tok, mode="sft", seed=0)
    batch = collator(examples)
    ref = base(examples)
    assert batch["input_ids"].shape[0] == 3
    for key in ref:
        assert torch.equal(batch[key][:2], ref[key])
    ids, labels = batch["input_ids"][2], batch["labels"][2]
    original = torch.tensor(examples[0]["input_ids"])
    masked = ids != original
    assert int(masked.sum()) == 6 and collator.last_num_masked == 6 and collator.last_num_eligible == 60
    assert torch.all(ids[masked] == tok.mask_token_id)
    assert not masked[:4].any() and not masked[-1]  # prompt and eos never masked
    assert torch.equal(labels[masked], original[masked]) and torch.all(labels[~masked] == -100)
    assert collator.num_extra_rows == 1


@pytest.mark.parametrize("order", ["original_first", "masked_first"])
def test_sft_concat_layout(tok, order):
    """Concatenated variant: original + masked copy in one row (or the reverse); the original keeps its answer
    labels, the copy is -100 except its masked positions; the short example is left as is."""
    examples = _sft_examples()
    base = TRLCollator(pad_token_id=tok.pad_token_id)
    batch = DataCollatorForMEAP(base=base, tokenizer=tok, mode="sft", sft_mode="concat", concat_order=order, seed=0)(
        examples
    )
    assert batch["input_ids"].shape == (2, 2 * len(examples[0]["input_ids"]))
    n = len(examples[0]["input_ids"])
    orig_ids, orig_labels = torch.tensor(examples[0]["input_ids"]), torch.tensor(examples[0]["labels"])
    first, second = batch["input_ids"][0, :n], batch["input_ids"][0, n:]
    lab_first, lab_second = batch["labels"][0, :n], batch["labels"][0, n:]
    if order == "masked_first":
        first, second, lab_first, lab_second = second, first, lab_second, lab_first
    assert torch.equal(first, orig_ids) and torch.equal(lab_first, orig_labels)
    masked = second != orig_ids
    assert int(masked.sum()) == 6 and torch.all(second[masked] == tok.mask_token_id)
    assert torch.equal(lab_second[masked], orig_ids[masked]) and torch.all(lab_second[~masked] == -100)
    short = examples[1]["input_ids"]
    assert batch["input_ids"][1, : len(short)].tolist() == short
    assert batch["attention_mask"][1].sum() == len(short)


def test_sft_concat_max_length_truncates_the_copy(tok):
    examples = _sft_examples()[:1]
    c = DataCollatorForMEAP(
        base=TRLCollator(pad_token_id=0), tokenizer=tok, mode="sft", sft_mode="concat", max_length=80
    )
    batch = c(examples)
    assert batch["input_ids"].shape == (1, 80)
    assert batch["input_ids"][0, :65].tolist() == examples[0]["input_ids"]


def test_sft_packed_padding_free_rows(tok):
    """Packed rows with `seq_lengths`: the extra row holds only the segments that got masks, with their
    lengths, so the base recomputes position ids / cu_seq_lens; prompt tokens are never masked."""
    a, b = _sft_examples()
    packed = {
        "input_ids": a["input_ids"] + b["input_ids"],
        "labels": a["labels"] + b["labels"],
        "seq_lengths": [len(a["input_ids"]), len(b["input_ids"])],
    }
    base = TRLCollator(pad_token_id=0, padding_free=True)
    batch = DataCollatorForMEAP(base=base, tokenizer=tok, mode="sft", seed=4)([packed])
    n_a, n = len(a["input_ids"]), len(packed["input_ids"])
    assert batch["cu_seq_lens_q"].tolist() == [0, n_a, n, n + n_a]
    assert batch["position_ids"][0, n:].tolist() == list(range(n_a))
    extra_ids, extra_labels = batch["input_ids"][0, n:], batch["labels"][0, n:]
    masked = extra_ids == tok.mask_token_id
    assert int(masked.sum()) == 6 and not masked[:4].any()
    assert torch.equal(extra_labels[masked], torch.tensor(a["input_ids"])[masked])
    assert torch.all(extra_labels[~masked] == -100)
    assert torch.all(batch["labels"][batch["position_ids"] == 0] == -100)


def test_sft_mask_fraction_over_random_answers(tok):
    """k = max(1, int(n * ratio)) per long answer, summed over many random answers, equals the count."""
    g = torch.Generator().manual_seed(0)
    examples, expected = [], 0
    for _ in range(30):
        p, a = int(torch.randint(1, 20, (1,), generator=g)), int(torch.randint(5, 120, (1,), generator=g))
        ans = torch.randint(10, 100, (a,), generator=g).tolist()
        examples.append({"input_ids": [1] * p + ans, "labels": [-100] * p + ans})
        expected += max(1, int(a * 0.1)) if a > 50 else 0
    c = DataCollatorForMEAP(base=TRLCollator(pad_token_id=0), tokenizer=tok, mode="sft")
    c(examples)
    assert c.last_num_masked == expected


# ----------------------------------------------------------------------------- mask token and validation
def test_missing_mask_token_raises_a_clear_error():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="add_mask_token"):
        DataCollatorForMEAP(tokenizer=tok)


def test_add_mask_token_resizes_and_keeps_old_logits():
    tok, model = tiny_tokenizer(), tiny_llama()
    ids = torch.tensor([[1, 20, 30, 40, 5]])
    before = model(ids).logits
    mask_id = add_mask_token(tok, model)
    assert mask_id == len(tok) - 1 == 115 and tok.mask_token == "[MASK]"
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    torch.testing.assert_close(model(ids).logits[..., :115], before)
    assert add_mask_token(tok, model) == mask_id  # idempotent
    tok2, model2 = tiny_tokenizer(), tiny_llama()
    assert add_mask_token(tok2, model2, mask_token="</s>") == tok2.convert_tokens_to_ids("</s>")
    assert len(tok2) == 115 and model2.get_input_embeddings().weight.shape[0] == 115


def test_add_mask_token_leaves_the_tokenizer_unchanged_when_the_model_cannot_grow():
    """All or nothing: NeuroTrails cannot resize its vocabulary, so the tokenizer must not keep a mask token the
    model has no row for."""
    from hf_plugins import NeuroTrailsConfig, NeuroTrailsForCausalLM

    tok = tiny_tokenizer()
    before = (len(tok), tok.mask_token, tok.get_vocab())
    config = NeuroTrailsConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        blocks_in_head=1, num_trails=2, density=1.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"^MEAP needs .*NeuroTrails cannot resize .*add_mask_token\(tokenizer\)"):
        add_mask_token(tok, NeuroTrailsForCausalLM(config))
    assert (len(tok), tok.mask_token, tok.get_vocab()) == before
    assert add_mask_token(tok) == len(tok) - 1  # without a model the token is still added


def test_config_validation(tok):
    for kwargs, field in [
        ({"mode": "mlm"}, "mode"),
        ({"sft_mode": "both"}, "sft_mode"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"min_answer_length": -1}, "min_answer_length"),
        ({"concat_order": "x"}, "concat_order"),
    ]:
        with pytest.raises(ValueError, match=field):
            DataCollatorForMEAP(tokenizer=tok, **kwargs)
    with pytest.raises(ValueError, match="keeps the examples' labels"):
        DataCollatorForMEAP(base=HFLMCollator(tok, mlm=False), tokenizer=tok, mode="sft")


def test_sft_default_base_without_trl_is_seq2seq(tok):
    """With no `base`, SFT mode wraps transformers' DataCollatorForSeq2Seq (the GPU image has no TRL): the
    original rows equal that collator's batch, the extra row follows, labels padded with -100."""
    from transformers import DataCollatorForSeq2Seq

    examples = _sft_examples()
    collator = DataCollatorForMEAP(tokenizer=tok, mode="sft", seed=0)
    assert isinstance(collator.base, DataCollatorForSeq2Seq)
    batch = collator(examples)
    ref = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)(examples)
    assert batch["input_ids"].shape[0] == 3
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(batch[key][:2], ref[key]), key
    assert int((batch["labels"][2] != -100).sum()) == 6
