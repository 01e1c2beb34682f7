"""Tiny models, a tokenizer and data sets built in code, for tests, notebooks and CPU smoke runs.

Nothing here touches the Hub. Model factories follow transformers' own tests (`vocab_size=99`-scale
configs); the original full-size values are in comments next to the scaled-down fields.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import torch


__all__ = [
    "TINY_MODEL_FACTORIES",
    "tiny_arithmetic_dataset",
    "tiny_config",
    "tiny_llama",
    "tiny_mistral",
    "tiny_model",
    "tiny_qwen2",
    "tiny_text_dataset",
    "tiny_tokenizer",
]

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]

# A ChatML template like SmolLM2's, so SFTTrainer's conversational paths run on the tiny tokenizer too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|> ' + message['role'] + ' ' + message['content'] + ' <|im_end|> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|> assistant ' }}{% endif %}"
)


def _tiny_vocab() -> list[str]:
    from hf_plugins.data.arithmetic import vocabulary

    words = set(vocabulary())
    words.update(string.digits)
    words.update(string.punctuation)
    words.update(["user", "assistant", "system", "the", "a", "of", "and", "to", "is", "in", "text", "question"])
    return SPECIAL_TOKENS + sorted(words - set(SPECIAL_TOKENS))


def tiny_tokenizer(model_max_length: int = 512):
    """A word-level fast tokenizer (digits split one per token) over the arithmetic task's vocabulary.

    Returned as `PreTrainedTokenizerFast` with pad/bos/eos/unk tokens and a ChatML-like chat template.
    It has no mask token (MEAP tests add one).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_tiny_vocab())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "</s>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(family: str = "llama", vocab_size: int | None = None, **overrides):
    """A tiny config of a transformers family: "llama", "qwen2" or "mistral", or any model type registered
    by hf_plugins whose config accepts Llama fields (e.g. "lns_llama", "coe", "neurotrails")."""
    from transformers import AutoConfig

    if vocab_size is None:
        vocab_size = len(tiny_tokenizer())
    fields = {
        "vocab_size": vocab_size,  # 49152 (SmolLM2) / 151936 (Qwen2)
        "hidden_size": 32,  # 576 / 896
        "intermediate_size": 64,  # 1536 / 4864
        "num_hidden_layers": 2,  # 30 / 24
        "num_attention_heads": 4,  # 9 / 14
        "num_key_value_heads": 2,  # 3 / 2
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 5,  # <|im_end|>
        "tie_word_embeddings": False,
    }
    fields.update(overrides)
    return AutoConfig.for_model(family, **fields)


def tiny_model(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised tiny causal LM of `family` (seeded, so two calls give identical weights)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def tiny_llama(**kw):
    return tiny_model("llama", **kw)


def tiny_qwen2(**kw):
    return tiny_model("qwen2", **kw)


def tiny_mistral(**kw):
    return tiny_model("mistral", **kw)


TINY_MODEL_FACTORIES: dict[str, Callable] = {"llama": tiny_llama, "qwen2": tiny_qwen2, "mistral": tiny_mistral}


def tiny_arithmetic_dataset(n: int = 16, view: str = "conversational", seed: int = 0, split: str = "train"):
    """`datasets.Dataset` of `n` arithmetic problems in one of the views of `hf_plugins.data.arithmetic`."""
    from hf_plugins.data.arithmetic import ArithmeticConfig, make_dataset

    return make_dataset(ArithmeticConfig(seed=seed, num_train=max(n, 1), num_test=max(n, 1)), split=split, view=view)


def tiny_text_dataset(tokenizer, n: int = 16, max_length: int = 48, seed: int = 0):
    """A tokenized `datasets.Dataset` (`input_ids`, `attention_mask`) of plain-text problems for causal-LM
    pre-training tests."""
    from datasets import Dataset

    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    problems = generate_problems(ArithmeticConfig(seed=seed, num_train=n, num_test=0), split="train")
    texts = [p.plain_text() for p in problems[:n]]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
