"""Build the pre-training corpus: fetch -> unpack -> extract documents -> clean/de-duplicate -> split by
document -> tokenize -> packed uint16 files + manifest.

Reproducibility: every step is deterministic given the package versions (recorded with the sha256 of each
.deb in the manifest) and the tokenizer. Document order, caps and splits follow sha256 of document ids,
not file-system order or random state. `hf-plugins corpus build --expect MANIFEST` rebuilds and verifies
that every output file hashes to the recorded value.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from .sources import SOURCES, Source


SPLITS = ("train", "validation", "test")
FORMAT_VERSION = 1


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_of(doc_id: str, validation_fraction: float, test_fraction: float) -> str:
    """The split of a document, a pure function of its id (so a document never moves between splits)."""
    u = _h("split:" + doc_id) / 2**64
    if u < validation_fraction:
        return "validation"
    if u < validation_fraction + test_fraction:
        return "test"
    return "train"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_packages(packages: list[str], cache: Path) -> dict[str, dict]:
    """`apt-get download` each package into `cache/debs` and unpack it into `cache/root` (no installation)."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    info = {}
    for pkg in packages:
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            cmd = ["apt-get", "download", "-qq", pkg]
            res = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if res.returncode != 0:  # the package lists may be missing on a fresh machine
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
                res = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(
                    f"could not download the Debian package {pkg!r}: {res.stderr.strip()[-300:]}. The corpus needs "
                    "apt-get with Debian's package lists (run `apt-get update` as root)."
                )
            found = sorted(debs.glob(f"{pkg}_*.deb"))
        deb = found[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        info[pkg] = {"version": version, "deb": deb.name, "sha256": _sha256_file(deb)}
    return info


def collect(sources: list[Source], root: Path) -> tuple[list[tuple[str, str, str]], dict]:
    """Documents `(source, doc_id, text)` after the per-source cap and exact de-duplication."""
    seen: set[str] = set()
    docs, stats = [], {}
    for src in sources:
        raw = sorted(src.extract(root), key=lambda d: _h("order:" + d[0]))
        kept, chars, dups = 0, 0, 0
        for doc_id, text in raw:
            key = hashlib.sha1(re.sub(r"\s+", " ", text.lower()).strip().encode()).hexdigest()
            if key in seen:
                dups += 1
                continue
            if src.max_chars is not None and chars + len(text) > src.max_chars:
                continue
            seen.add(key)
            docs.append((src.name, doc_id, text))
            kept += 1
            chars += len(text)
        stats[src.name] = {"documents": kept, "chars": chars, "duplicates_dropped": dups, "available": len(raw)}
    return docs, stats


def build_corpus(
    out_dir: str | Path,
    tokenizer=None,
    sources: list[str] | None = None,
    cache_dir: str | Path | None = None,
    validation_fraction: float = 0.02,
    test_fraction: float = 0.02,
    extra_sources: list[Source] | None = None,
) -> dict:
    """Build the corpus into `out_dir`; returns the manifest (also written to `out_dir/manifest.json`)."""
    if not 0 < validation_fraction < 0.5 or not 0 < test_fraction < 0.5:
        raise ValueError("`validation_fraction` and `test_fraction` must be in (0, 0.5)")
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [s for s in (sources or []) if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown corpus sources {unknown}; known: {sorted(SOURCES)}")
    chosen = [SOURCES[s] for s in (list(SOURCES) if sources is None else sources)] + list(extra_sources or [])
    cache = Path(cache_dir or out / "cache")
    packages = sorted({p for s in chosen for p in s.packages})
    package_info = fetch_packages(packages, cache) if packages else {}
    docs, stats = collect(chosen, cache / "root")

    if tokenizer is None:
        from hf_plugins.loading import load_tokenizer

        tokenizer = load_tokenizer("smollm2")
    if len(tokenizer) > 65535:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens; packed uint16 files need fewer than 65,536")
    eos = tokenizer.eos_token_id

    by_split: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    for doc in docs:
        by_split[split_of(doc[1], validation_fraction, test_fraction)].append(doc)
    manifest_splits, doc_rows = {}, []
    per_source_tokens: dict[str, dict[str, int]] = {s.name: dict.fromkeys(SPLITS, 0) for s in chosen}
    for split, items in by_split.items():
        items.sort(key=lambda d: _h("shuffle:" + d[1]))  # interleave sources, deterministically
        ids: list[int] = []
        for start in range(0, len(items), 512):
            batch = items[start : start + 512]
            enc = tokenizer([t for _, _, t in batch], add_special_tokens=False)["input_ids"]
            for (src, doc_id, _), toks in zip(batch, enc):
                ids.extend(toks)
                ids.append(eos)
                per_source_tokens[src][split] += len(toks) + 1
                doc_rows.append(f"{split}\t{src}\t{doc_id}\t{len(toks) + 1}")
        path = out / f"{split}.bin"
        np.asarray(ids, dtype=np.uint16).tofile(path)
        manifest_splits[split] = {
            "file": path.name,
            "documents": len(items),
            "tokens": len(ids),
            "sha256": _sha256_file(path),
        }
    tokenizer.save_pretrained(str(out / "tokenizer"))  # so consumers need neither gguf nor the model file
    (out / "documents.tsv").write_text("split\tsource\tdoc_id\ttokens\n" + "\n".join(doc_rows) + "\n")
    total_train = max(manifest_splits["train"]["tokens"], 1)
    for src in chosen:
        stats[src.name].update(
            tokens=per_source_tokens[src.name],
            train_share=round(per_source_tokens[src.name]["train"] / total_train, 4),
            licence=src.licence,
            packages={p: package_info[p]["version"] for p in src.packages},
            description=src.description,
        )
    manifest = {
        "format_version": FORMAT_VERSION,
        "dtype": "uint16",
        "eos_token_id": eos,
        "tokenizer": {"name": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(tokenizer)},
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
        "packages": package_info,
        "sources": stats,
        "splits": manifest_splits,
        "documents_file_sha256": _sha256_file(out / "documents.tsv"),
        "steps": [
            "apt-get download <packages> (versions and sha256 above); dpkg-deb -x each into cache/root",
            "extract documents per source (hf_plugins/data/corpus/sources.py); order by sha256('order:'+id)",
            "cap each source at max_chars; drop exact duplicates (lower-cased, whitespace-collapsed sha1)",
            "split by sha256('split:'+id): validation < 2%, test < 4%, else train",
            "order each split by sha256('shuffle:'+id); tokenize without special tokens; EOS after each document",
            "write uint16 little-endian token files",
        ],
        "build_seconds": round(time.time() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_against(manifest: dict, expected: dict) -> list[str]:
    """Differences between a rebuilt manifest and a recorded one (empty = bit-identical outputs)."""
    problems = []
    for split in SPLITS:
        a, b = manifest["splits"].get(split, {}), expected["splits"].get(split, {})
        if a.get("sha256") != b.get("sha256"):
            problems.append(f"{split}.bin differs: {a.get('sha256')} vs recorded {b.get('sha256')}")
    for pkg, info in expected.get("packages", {}).items():
        got = manifest["packages"].get(pkg, {}).get("version")
        if got != info["version"]:
            problems.append(f"package {pkg}: version {got}, recorded {info['version']}")
    return problems


def clean_cache(out_dir: str | Path) -> None:
    shutil.rmtree(Path(out_dir) / "cache", ignore_errors=True)
