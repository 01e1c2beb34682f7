"""The walkthrough notebooks in `notebooks/`: each `<name>.ipynb` is generated from its percent-format script
`<name>.py` (jupytext) and stored without outputs; fast tests check both, a slow test executes every notebook.

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
from _bench import load_file  # tests/_bench.py


NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SOURCES = sorted(p for p in NOTEBOOK_DIR.glob("*.py") if not p.name.startswith("_"))  # `_name.py`: a shared module


KERNEL_NAME = "hf-plugins-test"


def sync_hint(stem: str) -> str:
    return f"edit notebooks/{stem}.py, then run `jupytext --sync notebooks/{stem}.ipynb` (see docs/notebooks.md)"


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


def test_every_method_has_a_notebook_and_a_source():
    expected = {"lift", "seft", "meap", "alphadecay", "stable_spam", "coe", "lns", "neurotrails", "srlm", "sos"}
    assert expected <= {p.stem for p in NOTEBOOKS}
    unpaired = {p.stem for p in NOTEBOOKS} ^ {p.stem for p in SOURCES}
    assert not unpaired, f"{sorted(unpaired)}: a notebook and its source come in pairs (docs/notebooks.md)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs; clear them (Jupyter: Clear All Outputs, then save) or rewrite "
        f"the notebook from its source: `jupytext --to ipynb notebooks/{path.stem}.py`"
    )


def cells(nb) -> list[tuple[str, str, dict]]:
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_its_source(path):
    """The stored notebook has exactly the cells (type, text, metadata) and kernel of its paired script."""
    import nbformat

    jupytext = pytest.importorskip("jupytext")
    source = path.with_suffix(".py")
    assert source.exists(), f"{path.name} has no source {source.name} (docs/notebooks.md)"
    expected, stored = jupytext.read(source), nbformat.read(path, as_version=4)
    want, have = cells(expected), cells(stored)
    diff = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
    assert want == have, f"{path.name} differs from {source.name} from cell {diff} on; {sync_hint(path.stem)}"
    kernel = stored.metadata.get("kernelspec"), expected.metadata.get("kernelspec")
    assert kernel[0] == kernel[1], f"{path.name}: kernelspec {kernel[0]} but {kernel[1]} in its source"


def test_scale_up_prints_the_benchmark_description_and_its_rows(tmp_path, capsys):
    """The shared "Scale it up" cell: the script's docstring, then exactly the RESULTS.md rows of that method."""
    scale_up = load_file(NOTEBOOK_DIR / "_scale_up.py", "_scale_up")
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "foo_bench.py").write_text('"""Foo on one GPU: python benchmarks/foo_bench.py --steps 10."""\n')
    rows = {
        "foo": "| 2026-01-01 | foo_bench.py | GPU | 2.11 / 5.17 | B8 | ms/step | 1.0 | 2.0 | 0.5 |",
        "foo_pretrain": "| 2026-01-02 | pretrain.py | GPU | 2.11 / 5.17 | foo vs AdamW, 10M | loss | 3 | 3 | 1 |",
        "bar_pretrain": "| 2026-01-02 | pretrain.py | GPU | 2.11 / 5.17 | bar vs AdamW, 10M | loss | 3 | 3 | 1 |",
        "foo_arg": "| 2026-01-03 | pretrain.py --method foo | GPU | 2.11 / 5.17 | 10M | loss | 3 | 3 | 1 |",
        "bar": "| 2026-01-03 | bar_bench.py --fast | GPU | 2.11 / 5.17 | foo-sized | ms/step | 1.0 | 2.0 | 0.5 |",
    }
    table = [scale_up.HEADER, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows.values()]
    (bench / "RESULTS.md").write_text("# Results\n\nprose | with | a bar\n\n" + "\n".join(table) + "\n")

    scale_up.print_scale_up(["foo_bench.py", "foo_quality.py"], "foo", root=tmp_path)
    out = capsys.readouterr().out
    assert "=== python benchmarks/foo_bench.py" in out and "Foo on one GPU: python" in out
    assert "benchmarks/foo_quality.py is not in this checkout" in out
    assert "3 measured row(s)" in out
    printed = [line for line in out.splitlines() if line in rows.values()]
    assert printed == [rows["foo"], rows["foo_pretrain"], rows["foo_arg"]]

    scale_up.print_scale_up([], "baz", root=tmp_path)
    assert "No measured rows for baz are recorded" in capsys.readouterr().out


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
