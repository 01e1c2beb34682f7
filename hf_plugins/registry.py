"""Name -> builder tables that the `hf-plugins` CLI and the recipes read.

Each plugin registers its own entries when its module is imported (importing `hf_plugins` imports them all),
so adding a method never touches the CLI. Four tables:

- `METHODS`: `--method NAME` -> `fn(model, options: dict) -> PeftConfig | None` (None = full fine-tuning).
- `OPTIMIZERS`: `--optim NAME` -> `fn(training_args, options: dict) -> (optimizer_cls_or_factory, kwargs)`,
  the value passed as `Trainer(optimizer_cls_and_kwargs=...)`. `None` as the value keeps the Trainer's own.
- `COLLATORS`: `--collator NAME` -> `fn(tokenizer, model, options: dict) -> data collator or None`.
- `MODEL_CONFIGS`: `--model-config NAME` -> `fn(tokenizer, options: dict) -> PreTrainedConfig` for
  pre-training from scratch.
- `CALLBACKS`: `--method` / `--optim` names -> `fn(options) -> list[TrainerCallback]` added to the trainer.

`options` are the `--method-arg KEY=VALUE` (etc.) pairs, parsed to Python literals where possible.
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


METHODS: dict[str, Entry] = {}
OPTIMIZERS: dict[str, Entry] = {}
COLLATORS: dict[str, Entry] = {}
MODEL_CONFIGS: dict[str, Entry] = {}


def _register(table: dict[str, Entry], name: str, build: Callable, help: str, callbacks=None, defaults=None) -> None:
    if not name or name != name.strip() or " " in name:
        raise ValueError(f"registry names must be non-empty and without spaces, got {name!r}")
    table[name] = Entry(name=name, build=build, help=help, callbacks=callbacks, defaults=dict(defaults or {}))


def register_method(
    name: str, build: Callable, help: str = "", callbacks: Callable | None = None, defaults: dict | None = None
) -> None:
    """Register `--method NAME`: `build(model, options) -> PeftConfig | None`.

    `callbacks(options) -> list[TrainerCallback]` adds the method's callbacks to the trainer; `defaults` are
    TrainingArguments values used when the user gave none (e.g. `{"learning_rate": 2e-4}`)."""
    _register(METHODS, name, build, help, callbacks, defaults)


def register_optimizer(
    name: str, build: Callable, help: str = "", callbacks: Callable | None = None, defaults: dict | None = None
) -> None:
    """Register `--optim NAME`: `build(training_args, options) -> (cls_or_factory, kwargs) | None`."""
    _register(OPTIMIZERS, name, build, help, callbacks, defaults)


def register_collator(
    name: str, build: Callable, help: str = "", callbacks: Callable | None = None, defaults: dict | None = None
) -> None:
    """Register `--collator NAME`: `build(tokenizer, model, options) -> collator | None`.

    The collator wraps the trainer's own: `options["base"]` holds the collator the trainer would use."""
    _register(COLLATORS, name, build, help, callbacks, defaults)


def register_model_config(name: str, build: Callable, help: str = "") -> None:
    """Register `--model-config NAME`: `build(tokenizer, options) -> PreTrainedConfig`."""
    _register(MODEL_CONFIGS, name, build, help)


def lookup(table: dict[str, Entry], kind: str, name: str) -> Entry:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise ValueError(f"unknown {kind} {name!r}; known: {known}") from None


def parse_options(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse `KEY=VALUE` strings; values are Python literals when they parse as one (`16`, `0.1`, `None`,
    `True`, `[1, 2]`), booleans and None also in shell spelling (`true`, `false`, `none`, `null`, any case, so
    `flag=false` never arrives as the truthy string "false"), plain strings otherwise."""
    import ast

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
