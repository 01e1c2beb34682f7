"""`hf-plugins corpus build`: assemble the pre-training corpus from Debian packages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_plugins.cli.arguments import Command


@dataclass
class CorpusBuildArguments:
    out: str = field(
        default="corpus_out", metadata={"help": "output directory (train/validation/test .bin, manifest)"}
    )
    sources: str | None = field(default=None, metadata={"help": "comma-separated subset of sources (default: all)"})
    tokenizer: str = field(
        default="smollm2", metadata={"help": "'smollm2' (49,152 tokens), 'tiny', a directory or a Hub id"}
    )
    cache: str | None = field(
        default=None, metadata={"help": "where .deb files are downloaded and unpacked (default OUT/cache)"}
    )
    validation_fraction: float = field(default=0.02, metadata={"help": "share of documents in validation"})
    test_fraction: float = field(default=0.02, metadata={"help": "share of documents in test"})
    expect: str | None = field(
        default=None, metadata={"help": "a recorded manifest.json: fail unless the outputs are identical"}
    )


@dataclass
class CorpusShowArguments:
    out: str = field(default="corpus_out", metadata={"help": "corpus directory"})


def _print(manifest: dict) -> None:
    print(f"{'source':<11} {'docs':>7} {'train tokens':>13} {'share':>6}  licence")
    for name, st in manifest["sources"].items():
        tokens = st.get("tokens", {}).get("train", 0)
        print(
            f"{name:<11} {st['documents']:>7} {tokens:>13,} {st.get('train_share', 0):>6.1%}  {st.get('licence', '')}"
        )
    for split, st in manifest["splits"].items():
        print(f"{split:<11} {st['documents']:>7} docs {st['tokens']:>12,} tokens  sha256 {st['sha256'][:16]}")


def _build(args: CorpusBuildArguments) -> int:
    from hf_plugins.data.corpus import build_corpus, verify_against
    from hf_plugins.loading import load_tokenizer

    manifest = build_corpus(
        args.out,
        tokenizer=load_tokenizer(args.tokenizer),
        sources=args.sources.split(",") if args.sources else None,
        cache_dir=args.cache,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
    )
    _print(manifest)
    if args.expect:
        problems = verify_against(manifest, json.loads(Path(args.expect).read_text()))
        if problems:
            raise ValueError("the rebuilt corpus differs from the recorded one: " + "; ".join(problems))
        print("identical to", args.expect)
    return 0


def _show(args: CorpusShowArguments) -> int:
    from hf_plugins.data.corpus import read_manifest

    _print(read_manifest(args.out))
    return 0


COMMAND = Command(
    name="corpus",
    help="build the pre-training corpus from locally installable sources",
    description="Build or inspect the project's English pre-training corpus (see docs/corpus.md).",
    actions=(
        Command(
            "build",
            help="fetch, clean, split and tokenize the corpus into packed uint16 files",
            dataclasses=(CorpusBuildArguments,),
            run=_build,
        ),
        Command("show", help="print the manifest of a built corpus", dataclasses=(CorpusShowArguments,), run=_show),
    ),
)
