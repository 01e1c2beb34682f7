"""Execute every walkthrough notebook in `notebooks/` top to bottom (issue 14).

Each notebook runs in a fresh kernel of this interpreter (a kernel spec written to a temporary directory that
points at `sys.executable`, so the kernel always imports this environment's `hf_plugins`, whatever other
`python3` kernels are installed), offline from the Hub. A notebook fails on any cell error and must show at least
one plot (an `image/png` output). Marked `slow`: CI runs it in its slow-test step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest


NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "hf-plugins-test"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernel spec named KERNEL_NAME that runs `sys.executable -m ipykernel_launcher`, found through
    JUPYTER_PATH; the environment also carries HF_HUB_OFFLINE=1 to the kernel."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hf_plugins test kernel",
        "language": "python",
        "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "HF_HUB_OFFLINE", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(root), saved["JUPYTER_PATH"]) if p)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("MPLBACKEND", None)  # the notebooks use the inline backend, which emits image/png
    yield KERNEL_NAME
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_every_method_has_a_notebook():
    expected = {"lift", "seft", "meap", "alphadecay", "stable_spam", "coe", "lns", "neurotrails", "srlm", "sos"}
    assert expected <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; rebuild with `python notebooks/_build.py`"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path, kernel_env):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name=kernel_env, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot (no image/png output)"
    print(f"{path.name}: {seconds:.1f} s, {len(images)} plot(s)")
