"""benchmarks/meap_quality.py and _meap_data.py: the key-value examples, the SFT arms, the loss, the scoring, the
shard merge and the sharded smoke run."""

import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch


sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import _meap_data as data  # noqa: E402
import meap_quality as bench  # noqa: E402


@pytest.fixture(scope="module")
def task():
    from hf_plugins import add_mask_token

    tok = data.smoke_tokenizer()
    add_mask_token(tok)
    return data.KeyValueTask(tok, n_filler=200, twins=2, seed=0)


def _find(seq: list[int], sub: list[int]) -> list[int]:
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub]


@pytest.mark.parametrize("n_docs", [8, 11])
def test_evaluation_example_layout(task, n_docs):
    """Every document states its key's value once; the depth questions ask the documents at the requested depths;
    each target position holds the asked key's value right after "<key>:"; labels cover exactly the answer."""
    tok = task.tok
    ex = task.build(np.random.default_rng(n_docs), n_docs, "test", n_questions=7, depths=data.DEPTHS)
    ids, keys, values = ex["input_ids"], ex["keys"], ex["values"]
    assert len(keys) == len(set(keys)) == n_docs and len(set(values)) == n_docs
    for i, (key, value) in enumerate(zip(keys, values)):
        fact = tok(data.FACT.format(key=key) + f" {value}.", add_special_tokens=False)["input_ids"]
        assert len(_find(ids, fact)) == 1
        doc = tok(data.DOC.format(i=i + 1), add_special_tokens=False)["input_ids"]
        assert _find(ids, doc)[0] < _find(ids, fact)[0]  # the fact sits in document i + 1
    assert len(ex["targets"]) == 7 and len({d for d, _, _ in ex["targets"]}) == 7
    by_depth = {depth: d for d, depth, _ in ex["targets"] if depth is not None}
    assert by_depth == {depth: int(depth * (n_docs - 1) + 0.5) for depth in data.DEPTHS}
    assert by_depth[0.0] == 0 and by_depth[1.0] == n_docs - 1
    for d, _, pos in ex["targets"]:
        assert tok.convert_ids_to_tokens(ids[pos]) == values[d]
        assert ids[pos - 2 : pos] == tok(keys[d] + ":", add_special_tokens=False)["input_ids"]
    first_answer = min(p for _, _, p in ex["targets"]) - 2
    assert all(label == -100 for label in ex["labels"][:first_answer])
    assert ex["labels"][first_answer:] == ids[first_answer:] and ids[-1] == tok.eos_token_id


def test_keys_twins_values_and_splits(task):
    splits = {s: task.keys(s) for s in ("train", "dev", "test")}
    assert not splits["train"] & splits["dev"] and not splits["train"] & splits["test"]
    assert not splits["dev"] & splits["test"] and min(len(k) for k in splits.values()) > 500
    triples = {data.key_name(t): t for t in data.key_triples()}
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        ex = task.build(rng, 12, split, n_questions=8)
        assert set(ex["keys"]) <= splits[split]
        assert sorted(Counter(triples[k][1:] for k in ex["keys"]).values()) == [2] * 6  # 6 pairs of twins
        assert all(depth == pytest.approx(d / 11) for d, depth, _ in ex["targets"])
    filler_words = set(" ".join(data.filler_sentences(200, 0)).replace(".", " ").split())
    assert task.values and not set(task.values) & filler_words
    assert all(len(task.tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in task.values)


def test_build_rejects_impossible_requests(task):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="questions"):
        task.build(rng, 5, "train", n_questions=6)
    with pytest.raises(ValueError, match="depths"):
        task.build(rng, 8, "test", n_questions=4, depths=data.DEPTHS)
    with pytest.raises(ValueError, match="split"):
        task.build(rng, 8, "validation")


def test_arms_collate_as_specified(task):
    """NTP: the base collator's batch. MEAP: the originals unchanged plus one extra row each, whose labels are set
    exactly at its [MASK] positions (the original tokens there), int(0.1 * n) of the n answer tokens."""
    from transformers import DataCollatorForSeq2Seq

    tok = task.tok
    rng = np.random.default_rng(2)
    examples = [task.build(rng, 8, "train", n_questions=8) for _ in range(3)]
    examples = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in examples]
    args = SimpleNamespace(min_answer_length=10)
    plain = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)(examples)
    ntp = bench.make_collator(tok, "ntp", args, seed=0)(examples)
    assert all(torch.equal(ntp[k], plain[k]) for k in plain)
    meap = bench.make_collator(tok, "meap", args, seed=0)(examples)
    assert meap["input_ids"].shape[0] == 6
    assert torch.equal(meap["input_ids"][:3], plain["input_ids"]) and torch.equal(meap["labels"][:3], plain["labels"])
    for r, ex in enumerate(examples):
        row, labels = meap["input_ids"][3 + r], meap["labels"][3 + r]
        masked = row == tok.mask_token_id
        assert torch.equal(masked, labels != -100)
        assert torch.equal(labels[masked], plain["input_ids"][r][masked])
        answer = [i for i, label in enumerate(ex["labels"]) if label != -100][:-1]  # the closing EOS is special
        assert set(torch.nonzero(masked).flatten().tolist()) <= set(answer)
        assert int(masked.sum()) == int(0.1 * len(answer))


def test_supervised_loss_equals_transformers_loss():
    from hf_plugins.testing import tiny_llama

    model = tiny_llama(vocab_size=50).float()
    torch.manual_seed(0)
    ids = torch.randint(3, 50, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :6] = -100
    labels[mask == 0] = -100
    labels[2, 8] = -100
    total, count = bench.supervised_loss_sum(model, ids, labels, mask)
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert int(count) == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(total / count, reference, rtol=1e-5, atol=1e-6)


def test_micro_batches_give_the_full_batch_gradient(task):
    """A MEAP batch (originals + masked rows) split into micro-batches: the same loss and gradients as in one pass,
    and the loss is transformers' mean over the batch's supervised tokens."""
    from hf_plugins.testing import tiny_llama

    rng = np.random.default_rng(3)
    examples = [{k: ex[k] for k in ("input_ids", "labels")} for ex in
                [task.build(rng, n, "train", n_questions=6) for n in (6, 7)]]  # fmt: skip
    batch = bench.make_collator(task.tok, "meap", SimpleNamespace(min_answer_length=10), seed=0)(examples)
    assert batch["input_ids"].shape[0] == 4 and (batch["attention_mask"] == 0).any()
    grads, losses = [], []
    for micro_tokens in (10_000, 200):
        model = tiny_llama(vocab_size=len(task.tok), max_position_embeddings=1024)
        losses.append(bench.backward_batch(model, batch, micro_tokens, torch.device("cpu")))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    reference = model(**batch).loss
    torch.testing.assert_close(losses[0], reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-8)


class _Oracle(torch.nn.Module):
    """A stand-in model: the hidden state at p is one-hot(input_ids[p + 1]) and the head is the identity, so it
    predicts every next token; with `wrong`, it predicts token 0 wherever the next token is `wrong`."""

    base_model_prefix = "body"

    def __init__(self, vocab: int, wrong: int | None = None):
        super().__init__()
        self.vocab, self.wrong = vocab, wrong
        self.head = torch.nn.Identity()
        self.body = self._body

    def _body(self, input_ids, **kwargs):
        target = torch.roll(input_ids, -1, dims=1)
        if self.wrong is not None:
            target = torch.where(target == self.wrong, torch.zeros_like(target), target)
        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(target, self.vocab).float())

    def get_output_embeddings(self):
        return self.head


def test_score_on_hand_built_predictors(task):
    rng = np.random.default_rng(4)
    sets = {n: [task.build(rng, n, "test", n_questions=6, depths=data.DEPTHS) for _ in range(5)] for n in (6, 9)}
    vocab, cpu = len(task.tok), torch.device("cpu")
    perfect = bench.score(_Oracle(vocab), sets, cpu, batch_tokens=700, pad_id=0)
    assert perfect["overall"] == perfect["candidates_overall"] == 1.0 and len(perfect["grid"]) == 10
    # wrong on one value word: exact match fails exactly there; among the candidates (all logits 0 then) the first
    # candidate is picked, so those count as right only when the value is the example's first candidate
    first = sets[6][0]
    wrong = first["input_ids"][next(p for _, depth, p in first["targets"] if depth is not None)]
    got = bench.score(_Oracle(vocab, wrong), sets, cpu, batch_tokens=10_000, pad_id=0)
    exact, among = {}, {}
    for n, examples in sets.items():
        for ex in examples:
            for _, depth, pos in ex["targets"]:
                if depth is not None:
                    gold = ex["input_ids"][pos]
                    exact.setdefault(f"{n}|{depth}", []).append(gold != wrong)
                    among.setdefault(f"{n}|{depth}", []).append(gold != wrong or ex["candidates"][0] == gold)
    assert got["grid"] == {k: sum(v) / len(v) for k, v in exact.items()}
    assert got["candidates"] == {k: sum(v) / len(v) for k, v in among.items()}
    assert got["overall"] < 1.0


def _run(arm, lr, seed, dev, test=0.5):
    grid = {f"8|{depth}": test for depth in data.DEPTHS}
    return {"arm": arm, "lr": lr, "seed": seed, "dev": {"overall": dev}, "test": {"grid": grid, "overall": test}}


def test_merge_chooses_each_arms_rate_on_dev():
    task = {"sweep_seed": 0, "eval_docs": [8], "train_docs": [8, 8], "steps": 1, "batch": 1, "n_test": 1}
    meta = {"script": bench.SCRIPT, "task": task, "model": "m", "device": "cpu", "tokens_by_docs": {"8": 100.0}}
    sweep = [
        _run("ntp", 1e-4, 0, 0.2),
        _run("ntp", 3e-4, 0, 0.6),
        _run("meap", 1e-4, 0, 0.7),
        _run("meap", 3e-4, 0, 0.1),
    ]
    seeds = [_run("ntp", 3e-4, 1, 0.0, 0.7), _run("meap", 1e-4, 1, 0.0, 0.8), _run("meap", 1e-4, 2, 0.0, 0.9)]
    m = bench.merge([{**meta, "base": None, "runs": sweep}, {**meta, "base": None, "runs": seeds + sweep[:1]}])
    assert m["chosen_lr"] == {"ntp": 3e-4, "meap": 1e-4} and len(m["runs"]) == 7
    assert [r["seed"] for r in m["final"]["meap"]] == [0, 1, 2] and [r["seed"] for r in m["final"]["ntp"]] == [0, 1]
    rows = bench.rows_from(m)
    overall = next(r for r in rows if r["case"].startswith("KV retrieval, all cells ("))
    assert overall["ours_text"] == "0.733 [0.500, 0.900]" and overall["base_text"] == "0.600 [0.500, 0.700]"
    sweep_row = next(r for r in rows if r["case"].startswith("learning-rate sweep"))
    assert sweep_row["ours_text"] == "0.0001: 0.700*, 0.0003: 0.100"
    with pytest.raises(ValueError, match="different task settings"):
        bench.merge([{**meta, "base": None, "runs": []}, {**meta, "task": {**task, "steps": 2}, "runs": []}])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="--arms"):
        bench.parse_args(["--arms", "ntp,mlm"])
    with pytest.raises(ValueError, match="--sweep"):
        bench.parse_args(["--lrs", "best"])
    with pytest.raises(ValueError, match="--lrs"):
        bench.parse_args(["--lrs", "fast"])
    with pytest.raises(ValueError, match="--eval-docs"):
        bench.parse_args(["--eval-docs", "4,8"])


def test_sharded_smoke_run(tmp_path):
    """The GPU protocol in miniature: sweep shards, merge, seed shards at the chosen rates, merge into rows."""
    sweep = [tmp_path / "p1.json", tmp_path / "p2.json"]
    smoke = ["--smoke", "--steps", "2", "--lrs"]
    assert bench.main([*smoke, "1e-3,1e-2", "--arms", "ntp", "--base", "--out", str(sweep[0])]) == 0
    assert bench.main([*smoke, "1e-3,1e-2", "--arms", "meap", "--out", str(sweep[1])]) == 0
    chosen = tmp_path / "sweep.json"
    assert bench.main(["--merge", *map(str, sweep), "--out", str(chosen)]) == 0
    lrs = json.loads(chosen.read_text())["chosen_lr"]
    assert set(lrs) == {"ntp", "meap"}
    seeds = tmp_path / "q.json"
    assert bench.main([*smoke, "best", "--sweep", str(chosen), "--seeds", "1", "--out", str(seeds)]) == 0
    shard = json.loads(seeds.read_text())
    assert {(r["arm"], r["lr"], r["seed"]) for r in shard["runs"]} == {(a, lr, 1) for a, lr in lrs.items()}
    meap = next(r for r in shard["runs"] if r["arm"] == "meap")["train"]
    assert meap["extra_rows"] == meap["examples"] and meap["masked_tokens"] > 0
    final = tmp_path / "final.json"
    assert bench.main(["--merge", *map(str, sweep), str(seeds), "--out", str(final)]) == 0
    rows = json.loads(final.read_text())["rows"]
    assert any("all cells, not fine-tuned" in r["case"] for r in rows)
    assert any(r["case"].startswith("KV retrieval, all cells (") and "2 seeds" in r["case"] for r in rows)
    figure = tmp_path / "meap.png"  # the docs figure is drawn from the merged file alone
    assert bench.main(["--merge", str(final), "--plot", str(figure)]) == 0 and figure.stat().st_size > 10_000
