"""benchmarks/meap_niah.py: the needle-in-a-haystack documents, the collator arms and the exact-match evaluation."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch


def _load():
    path = Path(__file__).parents[1] / "benchmarks" / "meap_niah.py"
    spec = importlib.util.spec_from_file_location("meap_niah_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.fixture(scope="module")
def builder():
    from hf_plugins import add_mask_token

    tok = bench.smoke_tokenizer()
    add_mask_token(tok)
    return bench.NiahBuilder(tok, n_filler=300, seed=0)


def _find(seq: list[int], sub: list[int]) -> list[int]:
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub]


@pytest.mark.parametrize("depth", bench.DEPTHS)
@pytest.mark.parametrize("n_queries", [1, 3])
def test_document_layout(builder, depth, n_queries):
    """Exact length; the target needle (found by searching its text) where `needle_start` says, at the requested
    depth; the answer tokens are the target's value, right after the first question, and appear in the needle."""
    tok = builder.tok
    rng = np.random.default_rng(0)
    doc = builder.build(rng, 256, depth, 4, "eval", n_queries=n_queries)
    ids = doc["input_ids"]
    assert len(ids) == 256
    needle = tok(bench.NEEDLE.format(key=doc["key"]), add_special_tokens=False)["input_ids"]
    value = tok(f" {doc['value']:06d}", add_special_tokens=False)["input_ids"]
    assert _find(ids, needle + value) == [doc["needle_start"]]
    question = tok(bench.QUESTION.format(key=doc["key"]), add_special_tokens=False)["input_ids"]
    q_at = _find(ids, question)
    skip = builder.value_skip  # a leading space token before the digits (SmolLM2), scored as prompt
    assert len(q_at) == 1 and q_at[0] + len(question) + skip == doc["answer_start"]
    a = doc["answer_start"]
    assert ids[a - skip : a + doc["answer_len"]] == value and doc["answer_len"] == 6
    # the haystack span ends where the first question starts; depth = needle start / (span - needle length)
    span = q_at[0] - len(needle) - len(value) - 1
    assert doc["depth"] == pytest.approx(doc["needle_start"] / span)
    if depth == 0.0:
        assert doc["needle_start"] == 0
    elif depth == 1.0:
        assert doc["needle_start"] + len(needle) + len(value) + 1 == q_at[0]  # needle, ".", then the question
    else:
        assert abs(doc["depth"] - depth) < 0.1  # boundary granularity (<= 17 tokens) in a ~170-token haystack
    # the key is asked once and stated once; every distractor has another key
    key_ids = tok(" " + doc["key"], add_special_tokens=False)["input_ids"]
    assert len(_find(ids, key_ids)) == 2
    needles = tok(" The secret code of", add_special_tokens=False)["input_ids"]
    assert len(_find(ids, needles)) == 5  # 1 target + 4 distractors (questions say "the secret code of")


def test_depth_is_monotone_and_lengths_exact(builder):
    rng = np.random.default_rng(1)
    for ctx in (128, 300, 512):
        depths = [np.mean([builder.build(rng, ctx, d, 2, "train")["depth"] for _ in range(8)]) for d in bench.DEPTHS]
        assert depths[0] == 0.0 and depths[-1] == 1.0
        assert all(a < b for a, b in zip(depths, depths[1:]))


def test_near_keys_share_the_targets_first_syllables(builder):
    """Near-key distractors: every distractor key shares the target's first syllable, and all that share the first
    two are used before any other (reference: the syllable triples, counted directly)."""
    rng = np.random.default_rng(4)
    triples = {"".join(t).capitalize(): t for t in bench.key_syllables()}
    eval_keys = builder.keys["eval"]
    for _ in range(10):
        chosen = [eval_keys[i] for i in builder._key_indices(rng, "eval", 12, near=True)]
        target = triples[chosen[0]]
        assert len(set(chosen)) == 13
        two = [k for k in eval_keys if triples[k][:2] == target[:2] and k != chosen[0]]
        shares = [triples[k][:2] == target[:2] for k in chosen[1:]]
        assert sum(shares) == min(len(two), 12) and shares == sorted(shares, reverse=True)
        assert all(triples[k][0] == target[0] for k in chosen[1:])
    random_keys = [eval_keys[i] for i in builder._key_indices(rng, "eval", 12, near=False)]
    assert sum(triples[k][0] == triples[random_keys[0]][0] for k in random_keys[1:]) < 6  # ~1/24 share by chance


def test_eval_levels_parse():
    assert bench.parse_level("16n") == (16, True) and bench.parse_level("4") == (4, False)
    with pytest.raises(ValueError, match="4 or 16n"):
        bench.parse_level("x")


def test_too_short_context_raises(builder):
    with pytest.raises(ValueError, match="too short"):
        builder.build(np.random.default_rng(0), 40, 0.5, 4, "eval")


def test_training_and_eval_keys_are_disjoint_and_batches_shaped(builder):
    assert not set(builder.keys["train"]) & set(builder.keys["eval"])
    args = SimpleNamespace(
        steps=4, train_lengths=[128, 256], batch_tokens=512, train_distractors=3, train_queries=2, train_near=0.5
    )
    batches = bench.training_batches(builder, args, seed=0)
    assert len(batches) == 4
    for ctx, ids in batches:
        assert ids.shape == (512 // ctx, ctx)
    again = bench.training_batches(builder, args, seed=0)
    assert all((a == b).all() for (_, a), (_, b) in zip(batches, again))  # seeded
    other = bench.training_batches(builder, args, seed=1)
    assert any(a.shape != b.shape or (a != b).any() for (_, a), (_, b) in zip(batches, other))


def test_arms_differ_only_by_masking(builder):
    """NTP: the base batch (labels = inputs). MEAP: ~15% of the non-final inputs masked, labels still the originals."""
    tok = builder.tok
    rng = np.random.default_rng(2)
    docs = [{"input_ids": builder.build(rng, 200, 0.5, 2, "train")["input_ids"]} for _ in range(8)]
    original = torch.tensor([d["input_ids"] for d in docs])
    ntp = bench.make_collator(tok, "ntp", seed=0)(docs)
    meap_collator = bench.make_collator(tok, "meap", seed=0)
    meap = meap_collator(docs)
    assert torch.equal(ntp["input_ids"], original) and torch.equal(ntp["labels"], original)
    assert torch.equal(meap["labels"], original)
    changed = meap["input_ids"] != original
    assert torch.equal(changed, meap["input_ids"] == tok.mask_token_id)
    assert int(changed.sum()) == meap_collator.last_num_masked > 0
    assert not changed[:, -1].any()
    frac = changed.sum().item() / (original.numel() - len(docs))
    assert abs(frac - 0.15) < 0.03


class _Oracle(torch.nn.Module):
    """A stand-in model: the hidden state at position p is one-hot(input_ids[p + shift]) and the head is the
    identity, so argmax at p is the token `shift` positions later (shift 1: a perfect next-token predictor)."""

    base_model_prefix = "body"

    def __init__(self, vocab: int, shift: int, wrong_token: int | None = None):
        super().__init__()
        self.vocab, self.shift, self.wrong = vocab, shift, wrong_token
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(vocab))
        self.body = self._body

    def _body(self, input_ids, **kwargs):
        target = torch.roll(input_ids, -self.shift, dims=1)
        if self.wrong is not None:  # predict token 0 wherever the next token is `wrong`
            target = torch.where(target == self.wrong, torch.zeros_like(target), target)
        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(target, self.vocab).float())

    def get_output_embeddings(self):
        return self.head


def test_exact_match_on_hand_built_predictors(builder):
    tok = builder.tok
    rng = np.random.default_rng(3)
    docs = [builder.build(rng, 160, float(rng.random()), 2, "eval") for _ in range(12)]
    vocab = len(tok)
    device = torch.device("cpu")
    perfect = bench.answer_exact_match(_Oracle(vocab, 1), docs, device, batch_tokens=5 * 160)
    assert perfect == [True] * 12
    # wrong on the digit 7 only: correct exactly when the answer has no 7
    seven = tok.convert_tokens_to_ids("7")
    got = bench.answer_exact_match(_Oracle(vocab, 1, wrong_token=seven), docs, device, batch_tokens=160)
    assert got == ["7" not in f"{d['value']:06d}" for d in docs]
    # off by one (predicts the current token): correct only if every answer token equals the one before it
    lazy = bench.answer_exact_match(_Oracle(vocab, 0), docs, device, batch_tokens=10_000)
    want = []
    for d in docs:
        a, ids = d["answer_start"], d["input_ids"]
        want.append(all(ids[p - 1] == ids[p] for p in range(a, a + d["answer_len"])))
    assert lazy == want and not all(want)


@pytest.mark.slow
def test_smoke_run_writes_the_grid(tmp_path):
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    out = tmp_path / "niah.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    runs = payload["raw"]["runs"]
    assert set(runs) == {"ntp", "meap"}
    assert all(m > 0 for m in runs["meap"][0]["train"]["masked_tokens_per_batch"])
    assert all(m == 0 for m in runs["ntp"][0]["train"]["masked_tokens_per_batch"])
    assert len(runs["meap"][0]["grid"]) == 2 * 2 * len(bench.DEPTHS)  # 2 distractor levels x 2 lengths x depths
    assert any("all cells" in r["case"] for r in payload["rows"])
