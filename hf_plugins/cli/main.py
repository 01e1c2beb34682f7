"""`hf-plugins`: the command line. Subcommands live in `hf_plugins/cli/commands/`, one module each defining
`COMMAND`, and are discovered at start-up, so a method adds its own subcommand without touching this file.

Every subcommand parses dataclasses with TRL's `TrlParser` (`hf_plugins.cli.arguments.PluginParser`): fields are
flags in both spellings (`--max_steps` / `--max-steps`) and `--config FILE.yaml` sets any of them (flags win).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from hf_plugins.cli.arguments import Command, make_parser, parse_command


def commands() -> dict[str, Command]:
    from hf_plugins.cli import commands as package

    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        command = importlib.import_module(f"hf_plugins.cli.commands.{info.name}").COMMAND
        found[command.name] = command
    return found


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (`hf-plugins --help` lists the commands)."""
    root = Command(
        "hf-plugins",
        help="Recent LLM-training methods as plugins for the Hugging Face Trainer, TRL, PEFT and AutoModel.",
        actions=tuple(commands().values()),
    )
    parser = make_parser(root, "hf-plugins")
    parser.add_argument("--version", action="store_true", help="print the versions of hf_plugins and its stack")
    return parser


def _version() -> str:
    import peft
    import torch
    import transformers
    import trl

    import hf_plugins

    return (
        f"hf_plugins {hf_plugins.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, trl {trl.__version__}"
    )


def _walk(argv: list[str]) -> tuple[list[str], Command, list[str]]:
    """Take `COMMAND [ACTION]` off the front of argv: (their names, the command reached, the rest)."""
    table = commands()
    if argv[0] not in table:
        raise ValueError(f"unknown command {argv[0]!r}; choose from {', '.join(table)}")
    names, command, rest = ["hf-plugins", argv[0]], table[argv[0]], argv[1:]
    while command.actions and rest and rest[0] not in ("-h", "--help"):
        actions = {a.name: a for a in command.actions}
        if rest[0] not in actions:
            raise ValueError(f"unknown action {rest[0]!r}; choose from {', '.join(actions)}")
        names.append(rest[0])
        command, rest = actions[rest[0]], rest[1:]
    return names, command, rest


def parse(argv: list[str]) -> tuple[Command | None, tuple]:
    """`(command, parsed arguments)` for `hf-plugins ARGV` without running it; `(None, ())` after printing the
    help of a command group given without an action."""
    names, command, rest = _walk(argv)
    if command.actions:
        make_parser(command, " ".join(names)).print_help()
        return None, ()
    return command, command.parse(rest) if command.parse else parse_command(command, " ".join(names), rest)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    if argv[0] == "--version":
        print(_version())
        return 0
    try:
        command, parsed = parse(argv)
        return 0 if command is None else int(command.run(*parsed) or 0)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (ValueError, FileNotFoundError, ImportError) as exc:  # user errors: one clear line, no traceback
        if os.environ.get("HF_PLUGINS_DEBUG"):
            raise
        print(f"hf-plugins {argv[0]}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
