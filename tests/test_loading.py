"""`hf_plugins.loading`: embedded names, local paths and Hub ids for models and datasets, without any network (a
Hugging Face cache prepared in the Hub's layout stands in for the Hub), and the layering rule that the library
never imports the CLI."""

import ast
import json
from pathlib import Path

import pytest
import torch

from hf_plugins.cli.main import main
from hf_plugins.loading import load_model, load_text_dataset, resolve_source


ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROWS = [{"prompt": f"Question: {i} + 1 ?", "completion": f" It is {i + 1}."} for i in range(6)]


def _snapshot(cache: Path, kind: str, repo: str) -> Path:
    """The folder the Hub cache keeps a repo's files in (`hf download` writes this layout)."""
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    from hf_plugins.testing import tiny_model, tiny_tokenizer

    cache = tmp_path_factory.mktemp("hub")
    snap = _snapshot(cache, "model", "acme/tiny-llama")
    tiny_model("llama").save_pretrained(snap)
    tiny_tokenizer().save_pretrained(snap)
    data = _snapshot(cache, "dataset", "acme/toy") / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return cache


@pytest.mark.parametrize(
    "name, what, kind",
    [
        ("smollm2", "--model", "embedded"),
        ("tiny", "--model", "embedded"),
        ("Qwen/Qwen2.5-0.5B", "--model", "hub"),
        ("gpt2", "--model", "hub"),
        ("trl-lib/Capybara", "--dataset", "hub"),
        ("tiny", "--dataset", "hub"),  # the embedded names are models, not datasets
    ],
)
def test_resolve_source(name, what, kind):
    assert resolve_source(name, what) == kind


@pytest.mark.parametrize("name", ["/does/not/exist", "./missing", "a/b/c", "bad id!"])
def test_paths_that_do_not_exist_are_refused(name):
    with pytest.raises(FileNotFoundError, match="does not exist locally and is not a Hub id"):
        resolve_source(name)


def test_local_directory_is_local(tmp_path):
    assert resolve_source(str(tmp_path)) == "local"


def test_hub_model_id_loads_from_the_hub_cache(hub_cache):
    """A Hub id resolves through `from_pretrained` and the cache: the same weights as the model saved there."""
    from hf_plugins.testing import tiny_model

    model, tok = load_model("acme/tiny-llama", cache_dir=str(hub_cache))
    ids = torch.tensor([[1, 7, 9, 11]])
    torch.testing.assert_close(model(ids).logits, tiny_model("llama")(ids).logits, rtol=0, atol=0)
    assert tok.pad_token is not None and len(tok) == model.config.vocab_size


def test_hub_model_id_through_the_cli(hub_cache, capsys):
    argv = ["eval", "--model", "acme/tiny-llama", "--cache_dir", str(hub_cache), "--eval_size", "2"]
    assert main([*argv, "--max_new_tokens", "2"]) == 0
    assert "accuracy:" in capsys.readouterr().out


def test_hub_id_missing_offline_gives_one_line(tmp_path, capsys):
    assert main(["eval", "--model", "acme/missing", "--cache_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'acme/missing' is a Hub id that is not in the local Hugging Face cache" in err
    assert "HF_HUB_OFFLINE=1" in err and "\n" not in err


def test_hub_id_without_network_names_the_cause(monkeypatch):
    """Online but unreachable (monkeypatched: tests never reach a hub): one line with transformers' first line."""
    import huggingface_hub.constants
    from transformers import AutoModelForCausalLM

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", unreachable)
    with pytest.raises(ValueError, match=r"could not load it from the Hub or the local cache \(We couldn't connect"):
        load_model("acme/elsewhere")


def test_hub_dataset_id_loads_from_the_hub_cache(hub_cache):
    ds = load_text_dataset("acme/toy", cache_dir=str(hub_cache))
    assert ds.to_list() == ROWS


def test_hub_dataset_missing_offline_gives_one_line(tmp_path):
    with pytest.raises(ValueError, match="'acme/nothing' is a Hub id that is not in the local Hugging Face cache"):
        load_text_dataset("acme/nothing", cache_dir=str(tmp_path))


def test_train_on_a_hub_dataset(hub_cache, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--model", "tiny", "--dataset", "acme/toy", "--cache_dir", str(hub_cache), "--max_steps", "1"]
    assert main([*argv, "--eval_size", "0", "--method", "full", "--output_dir", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv", "folder", "save_to_disk"])
def test_local_datasets_of_every_kind(tmp_path, suffix):
    from datasets import Dataset

    ds = Dataset.from_list(ROWS)
    if suffix in (".jsonl", ".json"):
        path = tmp_path / f"d{suffix}"
        ds.to_json(path, lines=suffix == ".jsonl")
    elif suffix == ".parquet":
        ds.to_parquet(path := tmp_path / "d.parquet")
    elif suffix == ".csv":
        ds.to_csv(path := tmp_path / "d.csv", index=False)
    elif suffix == "folder":
        (path := tmp_path / "data").mkdir()
        ds.to_json(path / "train.jsonl")
    else:
        ds.save_to_disk(path := tmp_path / "saved")
    assert load_text_dataset(str(path)).to_list() == ROWS


def test_local_text_file(tmp_path):
    (tmp_path / "t.txt").write_text("one line\nanother line\n")
    assert load_text_dataset(str(tmp_path / "t.txt"))["text"] == ["one line", "another line"]


def test_dataset_without_usable_columns_gives_one_line(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": 1}\n')
    argv = ["train", "--model", "tiny", "--dataset", str(tmp_path / "bad.jsonl"), "--output_dir", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "has columns ['answer', 'question']; training needs" in capsys.readouterr().err


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module an `import` statement in `path` names, relative imports resolved against `package`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_the_library_never_imports_the_cli():
    """Layering: cli -> library, never back (function-level imports included)."""
    offenders = []
    for path in sorted((ROOT / "hf_plugins").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.parts[:2] == ("hf_plugins", "cli"):
            continue
        package = ".".join(rel.parts if path.name == "__init__.py" else rel.parts[:-1])
        package = package.removesuffix(".__init__")
        if any(m == "hf_plugins.cli" or m.startswith("hf_plugins.cli.") for m in _imported_modules(path, package)):
            offenders.append(str(rel))
    assert offenders == []


def test_the_layering_check_sees_relative_and_function_level_imports(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from ..cli import common\n    import hf_plugins.cli.main\n")
    assert {"hf_plugins.cli", "hf_plugins.cli.common", "hf_plugins.cli.main"} <= _imported_modules(mod, "hf_plugins.x")
