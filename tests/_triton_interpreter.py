"""Run a check script in Triton's CPU interpreter, for the tests of our Triton kernels on a machine without a GPU.

`TRITON_INTERPRET=1` must be set before the kernels are defined (triton reads it then), so the script runs in a fresh
Python process. The tests folder is passed as `sys.argv[1]` so a script can import test helpers from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_in_interpreter(code: str, timeout: int = 300, args: list[str] = ()) -> str:
    """Run `code` with `TRITON_INTERPRET=1` in a new interpreter (`sys.argv[2:]` = `args`); returns its stdout. A
    non-zero exit fails the calling test with the script's output."""
    res = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        timeout=timeout,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout
