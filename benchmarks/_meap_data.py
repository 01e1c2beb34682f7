"""Multi-document key-value QA for `meap_quality.py`, built in code (seeded; nothing is downloaded).

An example is a chat prompt holding `n_docs` short documents, each stating one fact "The secret word of <key> is
<value>." next to a filler sentence, then `n_questions` questions "What is the secret word of <key>?"; the assistant
answers one line per question, "<key>: <value>", in the order asked, then the end-of-turn token. Keys are made-up
three-syllable names ("Belkarnov"); values are common nouns that are one token with a leading space (" lantern"),
distinct within an example and never a filler word, so a value is scored at one position with no help from earlier
answer tokens. Every document is a candidate, and keys come in groups of `twins` sharing their last two syllables
("Belkarnov", "Dorkarnov", "Zarkarnov", ...): their last tokens agree, so matching the end of the name (what a
copying head does first) is not enough; the whole name has to be read. The key names are split once into training,
dev (learning-rate selection) and test names; filler pool and value words are shared.

Evaluation examples ask the documents at depths 0, 0.25, 0.5, 0.75 and 1 of the document list (document
`round(depth * (n_docs - 1))`; 0 = first, 1 = last, right before the questions) and `n_questions - 5` other random
documents, in a random order; training examples ask `n_questions` random documents.

Pieces are tokenized separately and concatenated; each starts where the tokenizer starts a new pre-token (a space,
a newline or a special token), so SmolLM2's byte-level BPE gives the same tokens as for the whole text.
"""

from __future__ import annotations

import numpy as np


DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
SPLITS = {"test": 0.2, "dev": 0.1}  # fractions of the key names held out; the rest trains
SYLLABLES = "bel dor fen gar hix jun kal lom mir nov pel quor ras sil tav ulm vex wyn zar bri cas dru esk fal".split()
PEOPLE = "Anna Boris Clara Daniel Elena Felix Greta Hugo Irene Jonas Karla Leo Maria Nina Oscar Paula Rosa".split()
PLACES = "garden harbor kitchen library market station village valley museum forest bakery workshop".split()
OBJECTS = "basket lantern bicycle letter window blanket ladder teapot violin notebook mirror wagon umbrella".split()
ANIMALS = "cat dog horse sparrow goat rabbit fox owl donkey heron".split()
ADJS = "old quiet bright heavy narrow yellow gentle broken warm crowded empty wooden tiny noisy".split()
VERBS = "carried painted repaired found moved cleaned sold borrowed opened watched".split()
TIMES = "in the morning|after lunch|before dawn|on Sunday|in winter|last week|at noon|every evening".split("|")
TEMPLATES = (
    "{P} {v} the {a} {o} near the {pl} {t}.",
    "The {a} {o} in the {pl} was {a2} {t}.",
    "{P} and {P2} walked to the {pl} {t}.",
    "A {a} {an} slept beside the {o} while {P} {v} the {o2}.",
    "Nobody in the {pl} remembered who {v} the {a} {o}.",
    "{P} said that the {o} belonged to the {a} {an}.",
    "Every {an} in the {a} {pl} looked at the {o}.",
    "The {o} that {P} {v} {t} was {a} and {a2}.",
)
VALUES = """apple anchor arrow badge banana barrel bell boat bottle bowl box bread bridge brick brush bucket butter
button cabin cable cake camera candle canoe carpet carrot castle chair chalk cheese cherry chest chimney clock cloud
coat coffee coin comb compass cookie copper cotton crown cup curtain desk diamond dish door drum eagle engine feather
fence flag flute fork fountain garlic glove grape guitar hammer harp helmet honey hook horn island jacket jar kettle
key lamp leaf lemon lion magnet map marble medal monkey moon needle nest onion orange oven paint palace paper pearl
pencil pepper piano pillow pipe planet plate pocket potato pumpkin puzzle radio ribbon ring river robot rocket rope
saddle sail salt shell shield ship shoe silver soap spoon stamp star stone sugar sword table tent tiger toast tomato
tower train tree trumpet tunnel valley wallet whale wheel whistle wolf wool zebra""".split()
INSTRUCTION = "Each document states one secret word. Answer every question on its own line as name: word.\n"
DOC = "\nDocument {i}:"
FACT = " The secret word of {key} is"
QUESTIONS = "\n\nQuestions:"
QUESTION = "\nWhat is the secret word of {key}?"


def key_triples() -> list[tuple[str, str, str]]:
    """Every three-syllable name with no syllable twice in a row (12,696), in a fixed shuffled order."""
    triples = [(a, b, c) for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES if a != b and b != c]
    order = np.random.default_rng(1234).permutation(len(triples))
    return [triples[i] for i in order]


def key_name(triple) -> str:
    return "".join(triple).capitalize()


def filler_sentences(n: int, seed: int) -> list[str]:
    """`n` filler sentences (leading space) from the templates, seeded."""
    rng = np.random.default_rng(seed)

    def pick(words):
        return words[rng.integers(len(words))]

    out = []
    for _ in range(n):
        p, p2 = rng.choice(len(PEOPLE), 2, replace=False)
        o, o2 = rng.choice(len(OBJECTS), 2, replace=False)
        a, a2 = rng.choice(len(ADJS), 2, replace=False)
        text = pick(TEMPLATES).format(
            P=PEOPLE[p], P2=PEOPLE[p2], o=OBJECTS[o], o2=OBJECTS[o2], a=ADJS[a], a2=ADJS[a2], v=pick(VERBS),
            pl=pick(PLACES), t=pick(TIMES), an=pick(ANIMALS),
        )  # fmt: skip
        out.append(" " + text)
    return out


def smoke_tokenizer():
    """A word-level tokenizer over this task's words and key names (digits one per token) for CPU smoke runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(" ".join([*PEOPLE, *PLACES, *OBJECTS, *ANIMALS, *ADJS, *VERBS, *TIMES]).split())
    for text in (*TEMPLATES, *VALUES, INSTRUCTION, DOC, FACT, QUESTIONS, QUESTION):
        words.update(text.replace("{", " {").translate(str.maketrans(".?:", "   ")).split())
    words = sorted(w for w in words if not w.startswith("{"))
    vocab = ["<pad>", "<s>", "<|im_end|>", "<unk>", ".", "?", ":", *"0123456789", *words]
    vocab += [key_name(t) for t in key_triples()]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                   unk_token="<unk>")  # fmt: skip


class KeyValueTask:
    """Token-level builder of the examples. `build` returns a dict with `input_ids`, `labels` (-100 on the prompt;
    the answer lines and the closing end-of-turn token supervised) and `targets`: per question, in answer order,
    `(document index, depth, value position)`: the requested depth for the depth questions of an evaluation
    example, None for its other questions, index / (n_docs - 1) in training examples."""

    def __init__(self, tokenizer, n_filler: int = 2000, twins: int = 4, seed: int = 0):
        if twins < 1:
            raise ValueError(f"`twins` must be >= 1, got {twins}.")
        self.tok, self.twins = tokenizer, twins
        texts = filler_sentences(n_filler, seed)
        self.filler = [self._ids(t) for t in texts]
        used = set(" ".join(texts).replace(".", " ").split())
        self.values = [w for w in VALUES if w not in used and len(self._ids(" " + w)) == 1]
        self.value_ids = [self._ids(" " + w)[0] for w in self.values]
        self.eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        prefix, suffix = "", ""
        if getattr(tokenizer, "chat_template", None):  # the model's own chat framing around the user turn
            text = tokenizer.apply_chat_template([{"role": "user", "content": "\0"}], tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip
            prefix, suffix = text.split("\0")
        self.prefix = self._ids(prefix + INSTRUCTION.rstrip("\n"))
        self.suffix = self._ids(suffix) if suffix else []
        self.newline, self.questions, self.period = self._ids("\n"), self._ids(QUESTIONS), self._ids(".")
        triples = key_triples()
        names, start = {}, 0
        for split, frac in (*SPLITS.items(), ("train", None)):
            stop = len(triples) if frac is None else start + round(frac * len(triples))
            names[split] = triples[start:stop]
            start = stop
        self.groups = {}  # split -> groups of `twins` or more key names sharing their last two syllables
        for split, part in names.items():
            groups: dict[tuple, list[str]] = {}
            for t in part:
                groups.setdefault(t[1:], []).append(key_name(t))
            self.groups[split] = [g for _, g in sorted(groups.items()) if len(g) >= twins]
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _cached(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self._ids(text)
        return self._cache[text]

    def keys(self, split: str) -> set[str]:
        return {k for group in self.groups[split] for k in group}

    def _draw_keys(self, rng, split: str, n: int) -> list[str]:
        """`n` distinct keys in groups of `twins` sharing their last two syllables, in a random order."""
        groups = self.groups[split]
        chosen = rng.choice(len(groups), size=-(-n // self.twins), replace=False)
        keys = [k for i in chosen for k in rng.choice(groups[i], size=self.twins, replace=False).tolist()][:n]
        return [keys[i] for i in rng.permutation(n)]

    def build(self, rng, n_docs: int, split: str, n_questions: int = 8, depths=None) -> dict:
        """One example of `n_docs` documents from the key names of `split`, asking `n_questions` documents: with
        `depths`, first the one at each depth of the list, then random others; all in a random order."""
        if split not in self.groups:
            raise ValueError(f"`split` must be one of {sorted(self.groups)}, got {split!r}.")
        if not 1 <= n_questions <= n_docs or n_docs > len(self.values):
            raise ValueError(f"need 1 <= questions ({n_questions}) <= documents ({n_docs}) <= {len(self.values)}.")
        depths = list(depths or [])
        docs = [int(d * (n_docs - 1) + 0.5) for d in depths]
        if len(set(docs)) < len(docs) or len(docs) > n_questions:
            raise ValueError(f"{n_docs} documents and {n_questions} questions cannot cover {len(depths)} depths.")
        rest = [d for d in rng.permutation(n_docs).tolist() if d not in docs][: n_questions - len(docs)]
        depth_of = depths + ([None] * len(rest) if depths else [d / max(n_docs - 1, 1) for d in rest])
        order = rng.permutation(n_questions).tolist()
        asked, depth_of = [(docs + rest)[i] for i in order], [depth_of[i] for i in order]
        keys = self._draw_keys(rng, split, n_docs)
        values = rng.choice(len(self.values), size=n_docs, replace=False).tolist()
        fact_first = rng.random(n_docs) < 0.5
        filler = rng.integers(len(self.filler), size=n_docs)
        ids = list(self.prefix)
        for i, key in enumerate(keys):
            fact = self._cached(FACT.format(key=key)) + [self.value_ids[values[i]]] + self.period
            body = fact + self.filler[filler[i]] if fact_first[i] else self.filler[filler[i]] + fact
            ids += self._cached(DOC.format(i=i + 1)) + body
        ids += self.questions
        for d in asked:
            ids += self._cached(QUESTION.format(key=keys[d]))
        ids += self.suffix
        prompt_len, targets = len(ids), []
        for j, d in enumerate(asked):
            if j:
                ids += self.newline
            ids += self._cached(keys[d] + ":")
            targets.append((d, depth_of[j], len(ids)))
            ids.append(self.value_ids[values[d]])
        ids.append(self.eos)
        labels = [-100] * prompt_len + ids[prompt_len:]
        return {
            "input_ids": ids,
            "labels": labels,
            "targets": targets,
            "keys": keys,
            "values": [self.values[v] for v in values],
            "candidates": [self.value_ids[v] for v in values],
        }
