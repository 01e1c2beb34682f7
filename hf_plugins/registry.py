"""Name -> builder tables that the `hf-plugins` CLI and the recipes read.

Each plugin registers its own entries when its module is imported (importing `hf_plugins` imports them all),
so adding a method never touches the CLI. Four tables:

- `METHODS`: `--method NAME` -> `fn(model, options: dict) -> PeftConfig | None` (None = full fine-tuning).
- `OPTIMIZERS`: `--optim NAME` -> `fn(training_args, options: dict) -> (optimizer_cls_or_factory, kwargs)`,
  the value passed as `Trainer(optimizer_cls_and_kwargs=...)`. `None` as the value keeps the Trainer's own.
- `COLLATORS`: `--collator NAME` -> `fn(tokenizer, model, options: dict) -> data collator or None`.
- `MODEL_CONFIGS`: `--model_config NAME` -> `fn(tokenizer, options: dict) -> PreTrainedConfig` for
  pre-training from scratch.

Each `Entry` may also carry `callbacks(options) -> list[TrainerCallback]` (added to the trainer), `defaults`
(TrainingArguments values used unless the user sets them) and `paper` (the reference written into model cards).
`options` are the `--method_args KEY=VALUE` (etc.) pairs, parsed to Python literals where possible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Entry:
    name: str
    build: Callable[..., Any]
    help: str = ""
    callbacks: Callable[[dict], list] | None = field(default=None)
    defaults: dict[str, Any] = field(default_factory=dict)  # TrainingArguments defaults, e.g. a learning rate
    paper: str = ""  # e.g. "arXiv 2506.00772"; empty for the stock baselines


METHODS: dict[str, Entry] = {}
OPTIMIZERS: dict[str, Entry] = {}
COLLATORS: dict[str, Entry] = {}
MODEL_CONFIGS: dict[str, Entry] = {}


def _register(
    table: dict[str, Entry], name: str, build: Callable, help: str, callbacks=None, defaults=None, paper: str = ""
) -> None:
    if not name or name != name.strip() or " " in name:
        raise ValueError(f"registry names must be non-empty and without spaces, got {name!r}")
    table[name] = Entry(name, build, help, callbacks, dict(defaults or {}), paper)


def register_method(
    name: str,
    build: Callable,
    help: str = "",
    callbacks: Callable | None = None,
    defaults: dict | None = None,
    paper: str = "",
) -> None:
    """Register `--method NAME`: `build(model, options) -> PeftConfig | None`.

    `callbacks(options) -> list[TrainerCallback]` adds the method's callbacks to the trainer; `defaults` are
    TrainingArguments values used when the user gave none (e.g. `{"learning_rate": 2e-4}`); `paper` is the
    reference written into model cards."""
    _register(METHODS, name, build, help, callbacks, defaults, paper)


def register_optimizer(
    name: str,
    build: Callable,
    help: str = "",
    callbacks: Callable | None = None,
    defaults: dict | None = None,
    paper: str = "",
) -> None:
    """Register `--optim NAME`: `build(training_args, options) -> (cls_or_factory, kwargs) | None`."""
    _register(OPTIMIZERS, name, build, help, callbacks, defaults, paper)


def register_collator(
    name: str,
    build: Callable,
    help: str = "",
    callbacks: Callable | None = None,
    defaults: dict | None = None,
    paper: str = "",
) -> None:
    """Register `--collator NAME`: `build(tokenizer, model, options) -> collator | None`.

    The collator wraps the trainer's own: `options["base"]` holds the collator the trainer would use."""
    _register(COLLATORS, name, build, help, callbacks, defaults, paper)


def register_model_config(name: str, build: Callable, help: str = "", paper: str = "") -> None:
    """Register `--model_config NAME`: `build(tokenizer, options) -> PreTrainedConfig`."""
    _register(MODEL_CONFIGS, name, build, help, paper=paper)


def lookup(table: dict[str, Entry], kind: str, name: str) -> Entry:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise ValueError(f"unknown {kind} {name!r}; known: {known}") from None


def split_options(text: str) -> list[str]:
    """Split `"a=1,betas=(0.9, 0.95),name='x,y'"` at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_options(pairs: list[str] | str | None, flag: str) -> dict[str, Any]:
    """Parse `KEY=VALUE` strings (a list, or one comma-separated string as the stock `--optim_args` takes); values
    are Python literals when they parse as one (`16`, `0.1`, `None`, `True`, `[1, 2]`), booleans and None also in
    shell spelling (`true`, `false`, `none`, `null`, any case, so `flag=false` never arrives as the truthy string
    "false"), plain strings otherwise."""
    import ast

    if isinstance(pairs, str):
        pairs = split_options(pairs)
    words = {"true": True, "false": False, "none": None, "null": None}
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        if raw.strip().lower() in words:
            value = words[raw.strip().lower()]
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        out[key.strip().replace("-", "_")] = value
    return out
