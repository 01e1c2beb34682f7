"""`hf-plugins corpus build`: assemble the pre-training corpus from Debian packages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "corpus",
        help="build the pre-training corpus from locally installable sources",
        description="Build or inspect the project's English pre-training corpus (see docs/corpus.md).",
    )
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", help="build or show")
    b = csub.add_parser(
        "build",
        help="fetch, clean, split and tokenize the corpus into packed uint16 files",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--out", default="corpus_out", help="output directory (train/validation/test .bin, manifest)")
    b.add_argument("--sources", default=None, help="comma-separated subset of sources (default: all)")
    b.add_argument("--tokenizer", default="smollm2", help="'smollm2' (49,152 tokens), 'tiny' or a directory")
    b.add_argument("--cache", default=None, help="where .deb files are downloaded and unpacked (default OUT/cache)")
    b.add_argument("--validation-fraction", type=float, default=0.02, help="share of documents in validation")
    b.add_argument("--test-fraction", type=float, default=0.02, help="share of documents in test")
    b.add_argument("--expect", default=None, help="a recorded manifest.json: fail unless the outputs are identical")
    b.set_defaults(func=_build)
    s = csub.add_parser("show", help="print the manifest of a built corpus")
    s.add_argument("--out", default="corpus_out", help="corpus directory")
    s.set_defaults(func=_show)
    p.set_defaults(func=lambda args: p.print_help())


def _print(manifest: dict) -> None:
    print(f"{'source':<11} {'docs':>7} {'train tokens':>13} {'share':>6}  licence")
    for name, st in manifest["sources"].items():
        tokens = st.get("tokens", {}).get("train", 0)
        print(
            f"{name:<11} {st['documents']:>7} {tokens:>13,} {st.get('train_share', 0):>6.1%}  {st.get('licence', '')}"
        )
    for split, st in manifest["splits"].items():
        print(f"{split:<11} {st['documents']:>7} docs {st['tokens']:>12,} tokens  sha256 {st['sha256'][:16]}")


def _build(args) -> int:
    from hf_plugins.cli.common import load_tokenizer
    from hf_plugins.data.corpus import build_corpus, verify_against

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


def _show(args) -> int:
    from hf_plugins.data.corpus import read_manifest

    _print(read_manifest(args.out))
    return 0
