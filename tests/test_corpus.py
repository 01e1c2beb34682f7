"""The pre-training corpus builder and the shared pre-training harness (benchmarks/pretrain.py)."""

import json

import numpy as np
import pytest
from _bench import load_bench  # tests/_bench.py

from hf_plugins.data.corpus import PackedBlocks, Source, build_corpus, split_of, verify_against
from hf_plugins.data.corpus.sources import SOURCES, _read_r_character_vectors


WORDS = ["the", "a", "of", "and", "to", "is", "in", "question", "text", "Ava", "Ben", "has", "apples", "books", "more"]


def _fake_source(n=400, dup_every=50):
    def extract(root):
        rng = np.random.default_rng(0)
        for i in range(n):
            if dup_every and i % dup_every == 1:
                yield f"fake/{i:04d}", "Ava has 3 apples and Ben has 4 books"  # an exact duplicate
                continue
            words = rng.choice(WORDS, size=int(rng.integers(5, 40)))
            yield f"fake/{i:04d}", " ".join(words) + f" {i}"

    return Source("fake", (), "test data", None, extract, "in-code documents")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from hf_plugins.testing import tiny_tokenizer

    out = tmp_path_factory.mktemp("corpus")
    manifest = build_corpus(
        out, tokenizer=tiny_tokenizer(), sources=[], extra_sources=[_fake_source()], validation_fraction=0.1,
        test_fraction=0.1,
    )  # fmt: skip
    return out, manifest


def test_validation_and_test_never_share_documents_with_training(tiny_corpus):
    out, _manifest = tiny_corpus
    rows = [line.split("\t") for line in (out / "documents.tsv").read_text().splitlines()[1:]]
    by_split = {s: {r[2] for r in rows if r[0] == s} for s in ("train", "validation", "test")}
    assert by_split["validation"] and by_split["test"] and by_split["train"]
    assert not by_split["train"] & by_split["validation"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["validation"] & by_split["test"]
    # the split is a pure function of the document id
    for split, ids in by_split.items():
        assert all(split_of(i, 0.1, 0.1) == split for i in ids)
    assert abs(len(by_split["validation"]) / len(rows) - 0.1) < 0.06


def test_duplicates_are_dropped_and_counts_add_up(tiny_corpus):
    out, manifest = tiny_corpus
    stats = manifest["sources"]["fake"]
    assert stats["duplicates_dropped"] == 7  # 8 copies of the same text (i % 50 == 1 for i < 400), one kept
    assert stats["documents"] == 400 - 7
    assert sum(s["documents"] for s in manifest["splits"].values()) == 393
    for st in manifest["splits"].values():
        tokens = np.fromfile(out / st["file"], dtype=np.uint16)
        assert len(tokens) == st["tokens"]
        assert (tokens == manifest["eos_token_id"]).sum() == st["documents"]  # one EOS after each document


def test_rebuild_is_bit_identical(tiny_corpus, tmp_path):
    from hf_plugins.testing import tiny_tokenizer

    _, first = tiny_corpus
    second = build_corpus(
        tmp_path, tokenizer=tiny_tokenizer(), sources=[], extra_sources=[_fake_source()], validation_fraction=0.1,
        test_fraction=0.1,
    )  # fmt: skip
    assert verify_against(second, first) == []
    changed = build_corpus(
        tmp_path / "b", tokenizer=tiny_tokenizer(), sources=[], extra_sources=[_fake_source(n=390)],
        validation_fraction=0.1, test_fraction=0.1,
    )  # fmt: skip
    assert verify_against(changed, first)


def test_packed_blocks_read_the_token_file(tiny_corpus):
    out, _ = tiny_corpus
    tokens = np.fromfile(out / "train.bin", dtype=np.uint16)
    blocks = PackedBlocks(out, "train", 16)
    assert len(blocks) == len(tokens) // 16
    np.testing.assert_array_equal(blocks[3]["input_ids"].numpy(), tokens[48:64])
    with pytest.raises(FileNotFoundError, match="corpus build"):
        PackedBlocks(out / "nowhere", "train", 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="validation_fraction"):
        build_corpus("/tmp/x", sources=[], validation_fraction=0.0)
    with pytest.raises(ValueError, match="unknown corpus sources"):
        build_corpus("/tmp/x", sources=["nope"])


def test_r_lazyload_reader_decodes_a_character_vector(tmp_path):
    """A hand-built R serialization v3 blob (XDR) of c("EMMA", NA, "By Jane Austen") round-trips."""
    import struct
    import zlib

    body = b"X\n" + struct.pack(">iii", 3, 0, 0) + struct.pack(">i", 5) + b"UTF-8"
    body += struct.pack(">ii", 16, 3)
    for s in ["EMMA", None, "By Jane Austen"]:
        body += struct.pack(">ii", 9, -1) if s is None else struct.pack(">ii", 9, len(s)) + s.encode()
    blob = zlib.compress(body)
    (tmp_path / "Rdata.rdb").write_bytes(struct.pack(">i", len(body)) + blob)
    assert list(_read_r_character_vectors(tmp_path / "Rdata.rdb")) == [["EMMA", "", "By Jane Austen"]]


def test_every_source_names_a_licence():
    for src in SOURCES.values():
        assert src.licence and src.description


def test_pretrain_trainer_and_plain_loop_agree(tiny_corpus, tmp_path):
    """The harness's two drivers give the same loss curve and final validation loss for one config."""
    out, _ = tiny_corpus
    pretrain = load_bench("pretrain")
    common = ["--corpus", str(out), "--size", "tiny", "--tokens", str(6 * 4 * 16), "--seq-len", "16",
              "--batch-size", "4", "--eval-every", "3", "--eval-tokens", "256", "--lr", "1e-2", "--bf16", "no"]  # fmt: skip
    results = {}
    for loop in ("trainer", "plain"):
        assert pretrain.main([*common, "--loop", loop, "--out", str(tmp_path / f"{loop}.json")]) == 0
        results[loop] = json.loads((tmp_path / f"{loop}.json").read_text())
    a, b = results["trainer"], results["plain"]
    assert a["steps"] == b["steps"] == 6
    assert a["final_eval_loss"] == pytest.approx(b["final_eval_loss"], abs=1e-4)
    train_a = [c["loss"] for c in a["curve"] if "loss" in c]
    train_b = [c["loss"] for c in b["curve"] if "loss" in c]
    assert len(train_a) == len(train_b) >= 3
    np.testing.assert_allclose(train_a, train_b, atol=1e-4)
    assert a["final_eval_loss"] < train_a[0]  # it learned something
