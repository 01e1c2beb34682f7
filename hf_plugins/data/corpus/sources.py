"""The corpus sources: Debian packages this machine can install, and the embedded arithmetic problems.

Each source turns the unpacked files of its packages into documents `(doc_id, text)`. Packages are fetched
with `apt-get download` and unpacked with `dpkg-deb -x` into a cache folder: nothing is installed on the
system. A document is the unit of the train/validation/test split (a chapter, a dictionary entry, a file).
"""

from __future__ import annotations

import gzip
import re
import struct
import subprocess
import textwrap
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


Document = tuple[str, str]


@dataclass(frozen=True)
class Source:
    name: str
    packages: tuple[str, ...]
    licence: str
    max_chars: int | None  # cap on the source's share (documents taken in a fixed hash order)
    extract: Callable[[Path], Iterator[Document]]
    description: str


def _norm_space(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    text = re.sub(r"[ \u00a0]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _bible(root: Path) -> Iterator[Document]:
    # The text ships in the `bible` program's own compressed format; the packaged program dumps it.
    binary, data = root / "usr/bin/bible", root / "usr/lib/bible.data"
    # The program keeps the data path in a short fixed buffer: run it next to the file with a relative name.
    res = subprocess.run(
        [str(binary.resolve()), "-f", "-d", data.name, "Gen1:1-Rev22:21"],
        capture_output=True,
        text=True,
        cwd=data.parent,
    )
    out = res.stdout
    if "Rev22:21" not in out:
        raise RuntimeError(
            f"the `bible` program did not dump the whole text (exit {res.returncode}): {res.stderr[-300:]}"
        )
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+?\d*?)(\d+):(\d+) (.*)$", line)
        if m:
            chapters.setdefault(f"{m.group(1)}{m.group(2)}", []).append(m.group(4).strip())
    for ref, verses in chapters.items():
        yield f"bible/{ref}", " ".join(verses)


def _read_r_character_vectors(rdb: Path) -> Iterator[list[str]]:
    """Character vectors of an R lazy-load database (`Rdata.rdb`): zlib blobs of R serialization v2/v3.

    Only plain character vectors (STRSXP) are decoded, which is all janeaustenr stores."""
    data = rdb.read_bytes()
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj()
        raw = d.decompress(data[pos + 4 :])
        pos = len(data) - len(d.unused_data)
        if raw[:2] != b"X\n":
            raise ValueError(f"{rdb}: not XDR R serialization")
        version = struct.unpack(">i", raw[2:6])[0]
        p = 14
        if version == 3:
            p += 4 + struct.unpack(">i", raw[p : p + 4])[0]
        flags, length = struct.unpack(">ii", raw[p : p + 8])
        p += 8
        if flags & 0xFF != 16:  # STRSXP
            continue
        lines = []
        for _ in range(length):
            _, n = struct.unpack(">ii", raw[p : p + 8])
            p += 8
            if n == -1:
                lines.append("")
                continue
            lines.append(raw[p : p + n].decode("utf-8", "replace"))
            p += n
        yield lines


def _austen(root: Path) -> Iterator[Document]:
    rdb = root / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
    for lines in _read_r_character_vectors(rdb):
        title = next((x for x in lines if x.strip()), "novel").strip().lower().replace(" ", "_")
        chapter, buf, n = "front", [], 0
        for line in [*lines, "CHAPTER END"]:
            if re.match(r"^\s*(CHAPTER|Chapter) [IVXLC\d]+", line):
                text = _norm_space("\n".join(buf))
                if text:
                    yield f"austen/{title}/{n:03d}-{chapter}", text
                chapter, buf, n = line.strip().split()[-1], [], n + 1
            else:
                buf.append(line)


def _gcide(root: Path) -> Iterator[Document]:
    text = gzip.open(root / "usr/share/dictd/gcide.dict.dz", "rt", encoding="utf-8", errors="replace").read()
    # Entries start at a line that begins with a headword followed by its pronunciation in backslashes.
    for i, entry in enumerate(re.split(r"\n(?=\S[^\n]*\\)", text)):
        entry = _norm_space(entry)
        if len(entry) >= 40 and not entry.startswith("00-"):
            yield f"gcide/{i:06d}", entry


def _jargon(root: Path) -> Iterator[Document]:
    text = gzip.open(root / "usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8", errors="replace").read()
    # Entries are indented by three spaces and start with ":headword:".
    for i, entry in enumerate(re.split(r"\n(?= {0,3}:[^:\n]+:)", text)):
        entry = _norm_space(textwrap.dedent(entry))
        if len(entry) >= 40:
            yield f"jargon/{i:05d}", entry


def _fortunes(root: Path) -> Iterator[Document]:
    folder = root / "usr/share/games/fortunes"
    for path in sorted(folder.iterdir()):
        if path.suffix or not path.is_file():  # skip the .dat index files and .u8 links
            continue
        for i, item in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n%\n")):
            item = _norm_space(item.strip("%\n"))
            if len(item) >= 20:
                yield f"fortunes/{path.name}/{i:05d}", item


def _python_doc(root: Path) -> Iterator[Document]:
    folder = root / "usr/share/doc/python3.11/html/_sources"
    for path in sorted(folder.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        text = re.sub(r"^\.\. (index|highlight|currentmodule|module|sectionauthor)::.*$", "", text, flags=re.MULTILINE)
        yield f"python/{path.relative_to(folder)}", _norm_space(text)


def _linux_doc(root: Path) -> Iterator[Document]:
    folder = next((root / "usr/share/doc").glob("linux-doc-*/Documentation"))
    for path in sorted(folder.rglob("*")):
        if path.name.endswith((".rst.gz", ".txt.gz")):
            text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
        elif path.name.endswith((".rst", ".txt")) and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
        else:
            continue
        text = re.sub(r"^\.\. SPDX-License-Identifier:.*$", "", text, flags=re.MULTILINE)
        yield f"linux/{path.relative_to(folder)}", _norm_space(text)


def _arithmetic(root: Path) -> Iterator[Document]:
    from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems

    # Keep the evaluation problems out: exclude every question of the default test split.
    held_out = {p.question for p in generate_problems(ArithmeticConfig(num_train=0, num_test=1000), "test")}
    cfg = ArithmeticConfig(seed=1234, num_train=20000, num_test=0, max_ops=4)
    for i, p in enumerate(generate_problems(cfg, "train")):
        if p.question not in held_out:
            yield f"arithmetic/{i:05d}", p.plain_text()


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("bible", ("bible-kjv", "bible-kjv-text"), "public domain (KJV text); program GPL-2+", None, _bible,
               "King James Bible, one document per chapter"),
        Source("austen", ("r-cran-janeaustenr",), "public domain texts; package MIT", None, _austen,
               "Jane Austen's six novels, one document per chapter"),
        Source("gcide", ("dict-gcide",), "GPL-3+ (GNU Collaborative International Dictionary of English)",
               6_000_000, _gcide, "dictionary entries (capped)"),
        Source("jargon", ("jargon-text",), "public domain (Jargon File 4.4.7)", None, _jargon,
               "the Jargon File, one document per entry"),
        Source("fortunes", ("fortunes-min", "fortunes"), "public domain / BSD (fortune cookie files)", None,
               _fortunes, "fortune cookies, one document each"),
        Source("python", ("python3.11-doc",), "PSF-2.0 (Python documentation)", 6_000_000, _python_doc,
               "Python 3.11 documentation sources, one document per page (capped)"),
        Source("linux", ("linux-doc-6.1",), "GPL-2.0 (Linux kernel documentation)", 10_000_000, _linux_doc,
               "Linux kernel documentation, one document per file (capped)"),
        Source("arithmetic", (), "Apache-2.0 (generated by hf_plugins)", 3_000_000, _arithmetic,
               "arithmetic word problems with worked solutions (never the evaluation split)"),
    ]
}  # fmt: skip
