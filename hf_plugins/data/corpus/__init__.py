"""The project's pre-training corpus, assembled from locally installable Debian packages (see sources.py)."""

from .build import SPLITS, build_corpus, split_of, verify_against
from .packed import PackedBlocks, read_manifest
from .sources import SOURCES, Source


__all__ = [
    "SOURCES",
    "SPLITS",
    "PackedBlocks",
    "Source",
    "build_corpus",
    "read_manifest",
    "split_of",
    "verify_against",
]
