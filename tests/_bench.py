"""Loading a script of benchmarks/ in a test.

The scripts are not a package: each is loaded from its file as `<name>_bench`, with benchmarks/ on `sys.path` for
the siblings it imports (`_results`, `_sweep`, `_lr_sweep`, `pretrain`, ...).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_bench(name: str):
    """benchmarks/<name>.py as a fresh module."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
