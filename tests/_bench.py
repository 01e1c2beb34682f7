"""Loading a script of benchmarks/ (or any Python file that is not in a package) in a test.

The scripts are not a package: each is loaded from its file as `<name>_bench`, with benchmarks/ on `sys.path` for
the siblings it imports (`_results`, `_sweep`, `_lr_sweep`, `pretrain`, ...).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_file(path: Path, module_name: str):
    """The Python file at `path` as a fresh module named `module_name` (scripts and notebook helpers are not a
    package)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench(name: str):
    """benchmarks/<name>.py as a fresh module."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return load_file(BENCH / f"{name}.py", f"{name}_bench")
