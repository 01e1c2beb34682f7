"""The composition table: tuner x optimizer x collator x model type, the stock-Trainer harness that trains one
combination from the registry entries, the pairwise-covering subset, and the README matrix generated from the table.

Run `python tests/_composition.py --write` from the repository root to rewrite the README's matrix; a test checks
that the README and `render_matrix()` agree.
"""

from __future__ import annotations

import collections
import functools
import itertools
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path


# ---- the table ----------------------------------------------------------------------------------------------------

# axis -> {registry name (or harness name): label}. Order = README order.
AXES: dict[str, dict[str, str]] = {
    "tuner": {"full": "full", "lora": "LoRA", "lift": "LIFT", "seft": "SEFT (pruned)"},
    "optim": {
        "adamw": "AdamW",
        "stable_spam": "Stable-SPAM",
        "alphadecay": "AlphaDecay",
        "alphadecay:stable_spam": "AlphaDecay:Stable-SPAM",
    },
    "collator": {"default": "default", "meap": "MEAP"},
    "model": {"llama": "Llama", "coe": "CoE", "lns": "LNS", "neurotrails": "NeuroTrails"},
}
AXIS_NAMES = tuple(AXES)

# Small option values so that every periodic mechanism fires inside the 3 trained steps (LIFT re-selects, SEFT
# drops/grows, AlphaDecay refreshes, Stable-SPAM resets moments, NeuroTrails prunes/regrows after update 2 and
# MEAP draws masks on every batch), i.e. just before the checkpoint the resumed run starts from.
METHOD_OPTIONS = {
    "full": {},
    "lora": {"r": 2},
    "lift": {"r": 2, "update_interval": 2},
    "seft": {"density": 0.05, "update_interval": 2, "accumulation_steps": 1},
}
OPTIM_OPTIONS = {
    "adamw": {},
    "stable_spam": {"reset_interval": 2},
    "alphadecay": {"interval": 2, "min_eigs": 8},  # the tiny matrices have 32 eigenvalues (official minimum: 50)
    "alphadecay:stable_spam": {"interval": 2, "min_eigs": 8, "reset_interval": 2},
}
COLLATOR_OPTIONS = {"default": {}, "meap": {"mask_ratio": 0.3, "seed": 0}}
# `family` for `hf_plugins.testing.tiny_config`, then config overrides; `resizable`: the model can grow its
# vocabulary for MEAP's mask token (else the token is added to the tokenizer before the config is built).
MODELS = {
    "llama": {"family": "llama", "resizable": True},
    "coe": {
        "family": "coe",
        "resizable": True,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "num_iterations": 2,
        "moe_intermediate_size": 16,
        "n_shared_experts": 1,
    },
    "lns": {"family": "lns_llama", "resizable": True},
    "neurotrails": {
        "family": "neurotrails",
        "resizable": False,
        "blocks_in_head": 1,
        "num_trails": 2,
        "density": 0.5,
        "update_frequency": 2,
    },
}


@dataclass(frozen=True)
class Rule:
    """A statement about every combination whose values match `when` (axis -> accepted values)."""

    key: str
    when: dict
    text: str

    def matches(self, combo: dict) -> bool:
        return all(combo[axis] in values for axis, values in self.when.items())


_ADAPTERS = ("lora", "lift", "seft")
# Combinations that train, save, load and resume exactly, with a caveat the user should know.
NOTES = (
    Rule(
        "a",
        {"tuner": _ADAPTERS, "optim": ("alphadecay", "alphadecay:stable_spam")},
        "AlphaDecay analyses trainable weight matrices; an adapter's are LoRA factors with r < `min_eigs` "
        "eigenvalues or LIFT/SEFT value vectors, and the frozen base is not analysed: AlphaDecay logs that no matrix "
        "qualifies and trains with uniform weight decay (docs/alphadecay.md)",
    ),
    Rule(
        "n",
        {"tuner": _ADAPTERS, "model": ("neurotrails",)},
        "the trails' sparse topology is frozen with the base weights (only full training prunes and regrows); "
        "the adapter's delta is not restricted to the masks",
    ),
    Rule(
        "m",
        {"collator": ("meap",), "model": ("neurotrails",)},
        "NeuroTrails cannot grow its vocabulary: add the mask token to the tokenizer (`add_mask_token(tokenizer)`) "
        "before building the config with `vocab_size=len(tokenizer)`; otherwise the collator refuses (below)",
    ),
    Rule(
        "t",
        {"tuner": _ADAPTERS, "collator": ("meap",), "model": ("llama", "coe", "lns")},
        "the added `[MASK]` embedding row stays frozen at its mean initialisation under the adapter "
        "(docs/meap.md: add the token before the adapter and use `trainable_token_indices` to train it)",
    ),
)


@dataclass(frozen=True)
class Refusal:
    """A combination that cannot work: `build_trainer(combo, ..., **variant)` must raise `error` at construction,
    in one line naming both `plugins` and the fix (`hint`)."""

    key: str
    combo: dict
    variant: dict
    error: type
    plugins: tuple[str, str]
    hint: str
    text: str


# Requests that cannot work. None is a plain cell of the matrix: each takes one of the axes' values plus a setting.
REFUSALS = (
    Refusal(
        "meap-neurotrails-vocab",
        {"tuner": "full", "optim": "adamw", "collator": "meap", "model": "neurotrails"},
        {"mask_token_first": False},
        ValueError,
        ("MEAP", "NeuroTrails"),
        "add_mask_token(tokenizer)",
        "MEAP on a NeuroTrails model whose vocabulary has no mask token: `ValueError` from the collator (NeuroTrails "
        "cannot resize its embedding and trail heads); add the token to the tokenizer before building the config, or "
        "pass `mask_token_id=` of a token in the vocabulary",
    ),
    Refusal(
        "lift-coe-experts",
        {"tuner": "lift", "optim": "adamw", "collator": "default", "model": "coe"},
        {"method_options": {"target_modules": ["experts"]}},
        TypeError,
        ("LIFT", "CoE"),
        "exclude_modules",
        "LIFT with `target_modules` naming CoE's fused experts (3-D tensors, not `nn.Linear`): `TypeError` from "
        "`get_peft_model`; target attention, routers and shared experts (docs/coe.md)",
    ),
    Refusal(
        "seft-coe-experts",
        {"tuner": "seft", "optim": "adamw", "collator": "default", "model": "coe"},
        {"method_options": {"target_modules": ["experts"]}},
        TypeError,
        ("SEFT", "CoE"),
        "exclude_modules",
        "SEFT with `target_modules` naming CoE's fused experts: `TypeError` from `get_peft_model`, as LIFT",
    ),
)

# The combinations the paper-level description of this test names: always in the default suite.
# Kept in the default suite whatever the cover below picks: LIFT on CoE, SEFT with AlphaDecay:Stable-SPAM and MEAP,
# NeuroTrails with Stable-SPAM.
EXAMPLES = (
    {"tuner": "lift", "optim": "adamw", "collator": "default", "model": "coe"},
    {"tuner": "seft", "optim": "alphadecay:stable_spam", "collator": "meap", "model": "llama"},
    {"tuner": "full", "optim": "stable_spam", "collator": "default", "model": "neurotrails"},
)


def all_combos() -> list[dict]:
    return [dict(zip(AXIS_NAMES, values)) for values in itertools.product(*(list(AXES[a]) for a in AXIS_NAMES))]


def notes_for(combo: dict) -> list[str]:
    return [rule.key for rule in NOTES if rule.matches(combo)]


def combo_id(combo: dict) -> str:
    return "-".join(combo[a].replace(":", "+").replace("_", "") for a in AXIS_NAMES)


def value_pairs(combo: dict) -> set:
    items = [(a, combo[a]) for a in AXIS_NAMES]
    return set(itertools.combinations(items, 2))


def pairwise_subset(combos: list[dict], seeds=EXAMPLES) -> list[dict]:
    """`seeds`, then a deterministic greedy choice from `combos` until every pair of values of two axes that occurs
    in some combo occurs at least once: each pick covers the most uncovered pairs; among those, the one whose values
    were chosen least so far; then the first in order."""
    uncovered = set().union(*(value_pairs(c) for c in combos))
    chosen = [dict(c) for c in seeds]
    for combo in chosen:
        uncovered -= value_pairs(combo)
    while uncovered:
        used = collections.Counter((axis, c[axis]) for c in chosen for axis in AXIS_NAMES)
        best = min(
            combos,
            key=lambda c: (-len(value_pairs(c) & uncovered), sum(used[(axis, c[axis])] for axis in AXIS_NAMES)),
        )
        chosen.append(best)
        uncovered -= value_pairs(best)
    return chosen


# ---- the README matrix --------------------------------------------------------------------------------------------

README_BEGIN, README_END = "<!-- composition -->", "<!-- /composition -->"


def render_matrix() -> str:
    """Markdown: one row per model type x tuner, one column per optimizer x collator; a cell is "yes" (trained 3
    steps, saved, reloaded and resumed exactly by tests/test_composition.py), with the letters of its notes."""
    columns = [(o, c) for o in AXES["optim"] for c in AXES["collator"]]
    header = ["model", "tuner"] + [
        AXES["optim"][o] + (" + " + AXES["collator"][c] if c != "default" else "") for o, c in columns
    ]
    intro = (
        "Generated by `python tests/_composition.py --write` from the table in `tests/_composition.py` (a test "
        'checks that the two agree). Every "yes" cell trains 2 steps with the stock `Trainer` and the callbacks of '
        "the registry entries, saves a checkpoint, resumes it in a fresh model and trainer for a 3rd step, and "
        "matches an uninterrupted 3-step run bit for bit (losses, weights, buffers); a pairwise-covering subset of 16 "
        "cells runs in the default test suite, every cell in the `slow` tests. Letters refer to the notes below the "
        "table; requests that cannot work follow them."
    )
    lines = [
        *textwrap.wrap(intro, 119),
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * len(header)) + " |",
    ]
    for model, tuner in itertools.product(AXES["model"], AXES["tuner"]):
        cells = []
        for optim, collator in columns:
            combo = {"tuner": tuner, "optim": optim, "collator": collator, "model": model}
            keys = notes_for(combo)
            cells.append("yes" + (" (" + ",".join(keys) + ")" if keys else ""))
        lines.append(f"| {AXES['model'][model]} | {AXES['tuner'][tuner]} | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [_bullet(f"({rule.key}) {rule.text}.") for rule in NOTES]
    lines += ["", "Refused at construction, with one line naming both plugins and the fix (tested):", ""]
    lines += [_bullet(f"{rule.text}.") for rule in REFUSALS]
    return "\n".join(lines)


def _bullet(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 119, initial_indent="- ", subsequent_indent="  "))


_SECTION = re.compile(re.escape(README_BEGIN) + r"\n(.*?)" + re.escape(README_END), re.S)


def readme_section(text: str) -> str:
    """The text between the README's composition markers."""
    match = _SECTION.search(text)
    if match is None:
        raise ValueError(f"README.md has no {README_BEGIN} ... {README_END} section")
    return match.group(1).removesuffix("\n")


def write_readme(path: Path) -> None:
    text = path.read_text()
    if _SECTION.search(text) is None:
        raise ValueError(f"{path} has no {README_BEGIN} ... {README_END} section")
    block = README_BEGIN + "\n" + render_matrix() + "\n" + README_END
    path.write_text(_SECTION.sub(lambda _: block, text, count=1))


# ---- the harness ----------------------------------------------------------------------------------------------------


def training_args(out_dir, max_steps: int = 3, save_steps: int = 0):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        weight_decay=0.1,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=0,
        disable_tqdm=True,
    )


def _model_fields(model: str) -> tuple[str, bool, dict]:
    spec = dict(MODELS[model])
    return spec.pop("family"), spec.pop("resizable"), spec


@functools.cache
def _pruned_state(model: str, vocab_size: int) -> dict:
    """Wanda 50% of the seed-0 tiny model (what `hf-plugins prune` writes), computed once per model type."""
    from hf_plugins.pruning import arithmetic_texts, calibration_windows, prune_model
    from hf_plugins.testing import tiny_model, tiny_tokenizer

    family, _, fields = _model_fields(model)
    base = tiny_model(family, seed=0, vocab_size=vocab_size, **fields)
    calib = calibration_windows(tiny_tokenizer(), arithmetic_texts(50), nsamples=4, seqlen=16, seed=0)
    prune_model(base, "wanda", 0.5, calibration=calib)
    return {k: v.clone() for k, v in base.state_dict().items()}


def base_model(combo: dict, tokenizer, seed: int = 0, mask_token_first: bool | None = None):
    """The tiny model of `combo["model"]` in training mode: seeded, pruned for SEFT. With MEAP on a model that cannot
    resize (`mask_token_first=None`: per `MODELS`), the mask token is added to `tokenizer` before the config is
    built, so the vocabulary already holds it."""
    from hf_plugins import add_mask_token
    from hf_plugins.testing import tiny_model

    family, resizable, fields = _model_fields(combo["model"])
    if mask_token_first is None:
        mask_token_first = combo["collator"] == "meap" and not resizable
    if mask_token_first:
        add_mask_token(tokenizer)
    model = tiny_model(family, seed=seed, vocab_size=len(tokenizer), **fields)
    if combo["tuner"] == "seft":
        model.load_state_dict(_pruned_state(combo["model"], len(tokenizer)))
    return model.train()


def build_trainer(
    combo: dict,
    out_dir,
    *,
    max_steps: int = 3,
    save_steps: int = 0,
    seed: int = 0,
    extra=(),
    method_options: dict | None = None,
    mask_token_first: bool | None = None,
):
    """A stock `transformers.Trainer` for `combo`, assembled the way `hf-plugins train` does it: the registry's
    method config on `get_peft_model`, its optimizer spec as `optimizer_cls_and_kwargs`, the callbacks of the
    method, optimizer, collator and model, and the collator wrapping the trainer's own. `seed` seeds the model's
    initial weights (a full-training run resumed from a checkpoint must not depend on them); `method_options`
    update the method's options; `extra` are more callbacks."""
    from peft import get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer

    import hf_plugins  # noqa: F401  (fills the registries)
    from hf_plugins import registry
    from hf_plugins.testing import tiny_text_dataset, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = base_model(combo, tokenizer, seed=seed, mask_token_first=mask_token_first)
    method = registry.lookup(registry.METHODS, "--method", combo["tuner"])
    optim = registry.lookup(registry.OPTIMIZERS, "--optim", combo["optim"])
    collator = None
    if combo["collator"] != "default":
        collator = registry.lookup(registry.COLLATORS, "--collator", combo["collator"])
    method_opts = {**METHOD_OPTIONS[combo["tuner"]], **(method_options or {})}
    optim_opts, collator_opts = OPTIM_OPTIONS[combo["optim"]], COLLATOR_OPTIONS[combo["collator"]]

    peft_config = method.build(model, dict(method_opts))
    args = training_args(out_dir, max_steps=max_steps, save_steps=save_steps)
    opt_spec = optim.build(args, dict(optim_opts))
    callbacks = []
    for entry, opts in ((method, method_opts), (optim, optim_opts), (collator, collator_opts)):
        if entry is not None and entry.callbacks is not None:
            callbacks.extend(entry.callbacks(dict(opts)))
    if callable(getattr(model, "training_callbacks", None)):
        callbacks.extend(model.training_callbacks())
    callbacks.extend(extra)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tiny_text_dataset(tokenizer, n=16, max_length=24),
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=callbacks,
        **({"optimizer_cls_and_kwargs": opt_spec} if opt_spec is not None else {}),
    )
    if collator is not None:
        options = {**collator_opts, "base": trainer.data_collator}
        trainer.data_collator = collator.build(tokenizer, trainer.model, options)
    return trainer


if __name__ == "__main__":
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if sys.argv[1:] == ["--write"]:
        write_readme(readme)
        print(f"wrote the composition matrix into {readme}")
    else:
        print(render_matrix())
