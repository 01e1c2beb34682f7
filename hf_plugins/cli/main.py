"""`hf-plugins`: the command line. Subcommands live in `hf_plugins/cli/commands/`, one module each, and are
discovered at start-up, so a method adds its own subcommand without touching this file."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    from hf_plugins.cli import commands

    parser = argparse.ArgumentParser(
        prog="hf-plugins",
        description="Recent LLM-training methods as plugins for the Hugging Face Trainer, TRL, PEFT and AutoModel.",
    )
    parser.add_argument("--version", action="store_true", help="print the versions of hf_plugins and its stack")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"hf_plugins.cli.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in hf_plugins downloads; fail fast if something tries
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import peft
        import torch
        import transformers

        import hf_plugins

        print(
            f"hf_plugins {hf_plugins.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
        )
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as exc:  # user errors: one clear line, no traceback
        if os.environ.get("HF_PLUGINS_DEBUG"):
            raise
        print(f"hf-plugins {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
