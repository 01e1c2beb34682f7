"""Dataclasses of `hf-plugins train` (beside the stock `SFTConfig`) and the parser that reads them.

`hf-plugins train` parses, with TRL's `TrlParser` (`--config run.yaml`, command-line flags override the file):

- `ModelArguments`: what to load (`--model`, `--tokenizer`, `--dtype`, `--revision`, ...);
- `DataArguments`: what to train on (`--dataset`, `--dataset_config`, `--dataset_split`, the arithmetic task);
- `EvalArguments`: the exact-match evaluation before and after training;
- `PluginArguments`: the plugin slots (`--method`, `--optim`, `--collator`, `--model_config`) and their options;
- the stock `trl.SFTConfig`, every field (a `TrainingArguments` subclass; `--model_config` runs use the
  `TrainingArguments` part with the stock `Trainer`).

Every field also answers to its dashed spelling (`--max-steps` = `--max_steps`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from trl import TrlParser

from hf_plugins import registry


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class ModelArguments:
    """Which model and tokenizer to load (`trust_remote_code` is the stock `SFTConfig` field)."""

    _argument_group_name = "model"

    model: str = field(
        default="smollm2",
        metadata=_help(
            "'smollm2' (the embedded SmolLM2-135M-Instruct), 'tiny' (a tiny random Llama, for smoke tests), a local "
            "directory saved with save_pretrained, or a Hub id such as Qwen/Qwen2.5-0.5B"
        ),
    )
    tokenizer: str | None = field(
        default=None,
        metadata=_help(
            "tokenizer instead of the model's own, and of --model_config runs ('smollm2' there by default); 'smollm2', "
            "'tiny', a directory or a Hub id"
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32", metadata=_help("dtype of the loaded weights")
    )
    revision: str | None = field(default=None, metadata=_help("Hub branch, tag or commit of --model"))
    cache_dir: str | None = field(
        default=None, metadata=_help("where Hub models and datasets are cached; None: the Hugging Face cache")
    )
    attn_implementation: str | None = field(
        default=None, metadata=_help("attention kernel, e.g. 'sdpa' or 'eager'; None: transformers' choice")
    )

    def load_kwargs(self, trust_remote_code: bool = False) -> dict:
        """Keyword arguments of `hf_plugins.loading.load_model` for these fields."""
        return {
            "name": self.model,
            "dtype": self.dtype,
            "tokenizer": self.tokenizer,
            "revision": self.revision,
            "trust_remote_code": trust_remote_code,
            "cache_dir": self.cache_dir,
            "attn_implementation": self.attn_implementation,
        }


@dataclass
class DataArguments:
    """What to train on: the embedded arithmetic task, a local file or folder, or a Hub dataset."""

    _argument_group_name = "data"

    dataset: str = field(
        default="arithmetic",
        metadata=_help(
            "'arithmetic' (embedded word problems), a local .jsonl/.json/.parquet/.csv/.txt file or folder, or a Hub "
            "dataset id; rows need 'messages', 'prompt'/'completion' or 'text' (--dataset_text_field) columns"
        ),
    )
    dataset_config: str | None = field(default=None, metadata=_help("configuration (subset) of a Hub dataset"))
    dataset_split: str = field(default="train", metadata=_help("split to train on"))
    train_size: int = field(default=400, metadata=_help("arithmetic: training problems to generate"))
    arith_seed: int = field(default=0, metadata=_help("arithmetic: seed of the problem generator"))
    arith_max_ops: int = field(default=2, metadata=_help("arithmetic: largest number of operations per problem"))
    arith_max_value: int = field(default=30, metadata=_help("arithmetic: largest starting quantity / +- operand"))

    def __post_init__(self):
        if self.train_size < 1:
            raise ValueError(f"--train_size must be >= 1, got {self.train_size}")


@dataclass
class EvalArguments:
    """Exact-match accuracy on held-out arithmetic problems, before and after training."""

    _argument_group_name = "evaluation"

    eval_size: int = field(default=64, metadata=_help("held-out arithmetic problems to score (0 disables)"))
    eval_batch_size: int = field(default=32, metadata=_help("generation batch size"))
    max_new_tokens: int = field(default=96, metadata=_help("generation length"))
    eval_before: bool = field(default=True, metadata=_help("also score the model before training"))

    def __post_init__(self):
        if self.eval_size < 0:
            raise ValueError(f"--eval_size must be >= 0, got {self.eval_size}")


def _names(table) -> str:
    return "; ".join(f"{e.name}: {e.help}" for e in table.values())


@dataclass
class PluginArguments:
    """The plugin slots. Options are KEY=VALUE pairs parsed to Python literals (`r=16`, `betas=(0.9,0.95)`)."""

    _argument_group_name = "plugins"

    method: str | None = field(
        default=None,
        metadata=_help(
            "tuning method (default: lift when fine-tuning, full with --model_config). Known: "
            + _names(registry.METHODS)
        ),
    )
    method_args: list[str] = field(
        default_factory=list,
        metadata=_help(
            "options of --method, KEY=VALUE ...", metavar="KEY=VALUE", action="extend", aliases=["--method-arg"]
        ),
    )
    collator: str = field(
        default="default",
        metadata=_help("data collator; 'default' keeps the trainer's own. Known: " + _names(registry.COLLATORS)),
    )
    collator_args: list[str] = field(
        default_factory=list,
        metadata=_help(
            "options of --collator, KEY=VALUE ...", metavar="KEY=VALUE", action="extend", aliases=["--collator-arg"]
        ),
    )
    model_config: str | None = field(
        default=None,
        metadata=_help(
            "pre-train from scratch with a registered model config instead of fine-tuning --model. Known: "
            + _names(registry.MODEL_CONFIGS)
        ),
    )
    model_config_args: list[str] = field(
        default_factory=list,
        metadata=_help(
            "fields of --model_config, KEY=VALUE ...", metavar="KEY=VALUE", action="extend", aliases=["--model-arg"]
        ),
    )
    compare: str | None = field(
        default=None,
        metadata=_help("also train these methods from the same start, comma-separated (e.g. lora,full), one table"),
    )
    # The plugin optimizer is chosen with the stock `--optim` flag (`PluginParser` moves a registered name here and
    # leaves the stock field at its default), and takes its options from the stock `--optim_args`: one flag each.
    optim: str = field(default="adamw", init=False)

    def __post_init__(self):
        if self.method is None:
            self.method = "full" if self.model_config else "lift"
        registry.lookup(registry.METHODS, "--method", self.method)
        if self.collator != "default":
            registry.lookup(registry.COLLATORS, "--collator", self.collator)
        if self.model_config is not None:
            registry.lookup(registry.MODEL_CONFIGS, "--model_config", self.model_config)
        for name in self.compare_methods:
            registry.lookup(registry.METHODS, "--compare", name)

    @property
    def compare_methods(self) -> list[str]:
        return [m.strip() for m in (self.compare or "").split(",") if m.strip()]


class PluginParser(TrlParser):
    """`TrlParser` with one line per error (no usage dump) and, when it parses `PluginArguments` beside the stock
    training arguments, a stock `--optim` that also takes the registered plugin optimizers (`stable_spam`,
    `alphadecay`, ...), whose options come from the stock `--optim_args` (`KEY=VALUE,KEY=VALUE`)."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)
        for action in self._actions:  # `bool | None` fields (the stock --bf16, --tf32, ...) also as bare switches
            if getattr(action.type, "__name__", "") == "string_to_bool" and action.nargs is None:
                action.nargs, action.const = "?", True
        self._optim = None
        if PluginArguments in (dataclass_types or ()) and "--optim" in self._option_string_actions:
            action = self._optim = self._option_string_actions["--optim"]
            action.choices = [*action.choices, *registry.OPTIMIZERS]
            action.help = f"{action.help} hf_plugins adds: {_names(registry.OPTIMIZERS)}"
            options = self._option_string_actions["--optim_args"]
            options.help += " For hf_plugins optimizers: KEY=VALUE pairs, comma-separated, Python literal values."
            # `--optim-arg KEY=VALUE`, repeatable, of earlier releases: appended to --optim_args
            self.add_argument(
                "--optim-arg",
                action="append",
                dest="legacy_optim_args",
                default=argparse.SUPPRESS,
                metavar="KEY=VALUE",
                help="same as --optim_args KEY=VALUE (repeatable)",
            )

    def error(self, message):
        raise ValueError(message)

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        if self._optim is not None:
            name = getattr(namespace, "optim", None)
            plugin = name if isinstance(name, str) and name in registry.OPTIMIZERS else "adamw"
            if name in registry.OPTIMIZERS:
                namespace.optim = self._stock_optim_default()
            namespace.plugin_optim = plugin
            legacy = vars(namespace).pop("legacy_optim_args", [])
            if legacy:
                namespace.optim_args = ",".join(([namespace.optim_args] if namespace.optim_args else []) + legacy)
        return namespace, rest

    @staticmethod
    def _stock_optim_default():
        from trl import SFTConfig

        return SFTConfig.__dataclass_fields__["optim"].default

    def explicit_dests(self, argv) -> set[str]:
        """Destinations of the options written in `argv` (not their defaults)."""
        dests = set()
        for token in argv:
            action = self._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("--") else None
            if action is not None:
                dests.add(action.dest)
        return dests


def add_positional(parser: argparse.ArgumentParser, dest: str, help: str) -> None:
    """Let the field `dest` also be given positionally (`hf-plugins esd MODEL`), keeping `--dest VALUE`."""
    parser.add_argument(dest, nargs="?", default=argparse.SUPPRESS, help=f"{help} (same as --{dest})")


@dataclass
class Command:
    """One `hf-plugins` subcommand (a module in `hf_plugins/cli/commands/` defines `COMMAND`).

    A leaf has `dataclasses` (parsed with `PluginParser`, so `--config FILE.yaml` works everywhere) and
    `run(*parsed) -> int`; `parse(argv) -> tuple` replaces the default parsing where a command needs more (train).
    A group has `actions` (`hf-plugins corpus build|show`). `positionals` lets fields be given without their flag.
    """

    name: str
    help: str
    description: str = ""
    dataclasses: tuple = ()
    run: Callable[..., int] | None = None
    parse: Callable[[list[str]], tuple] | None = None
    positionals: tuple[tuple[str, str], ...] = ()
    actions: tuple[Command, ...] = ()


def make_parser(command: Command, prog: str) -> argparse.ArgumentParser:
    """The parser of `command`: a `PluginParser` for a leaf, a help-only parser listing the actions of a group."""
    if command.actions:
        parser = argparse.ArgumentParser(prog=prog, description=command.description or command.help)
        sub = parser.add_subparsers(dest="action", metavar="COMMAND" if prog == "hf-plugins" else "ACTION")
        for action in command.actions:
            sub.add_parser(action.name, help=action.help)
        return parser
    parser = PluginParser(command.dataclasses, prog=prog, description=command.description or command.help)
    for dest, help in command.positionals:
        add_positional(parser, dest, help)
    return parser


def parse_command(command: Command, prog: str, argv: list[str]) -> tuple:
    """Parse `argv` (and `--config FILE.yaml`) into `command.dataclasses`; unknown flags raise one `ValueError`."""
    parser = make_parser(command, prog)
    *objs, rest = parser.parse_args_and_config(list(argv), return_remaining_strings=True)
    if rest:
        raise ValueError(f"unknown argument(s) {rest}; see {prog} --help")
    return tuple(objs)
