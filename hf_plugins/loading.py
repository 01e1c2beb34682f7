"""Resolve a model, tokenizer or dataset name to loaded objects: the embedded defaults, local paths, Hub ids.

One place for what `hf-plugins` and the recipes accept as `model` / `tokenizer` / `dataset`:

- models and tokenizers: `"smollm2"` (the embedded SmolLM2-135M-Instruct, `models/smollm2.py`), `"tiny"` (a tiny
  random Llama with an in-code tokenizer, for smoke tests), a local directory saved with `save_pretrained`, or a
  Hub id (`"Qwen/Qwen2.5-0.5B"`) through `from_pretrained`;
- datasets: a local `.jsonl` / `.json` / `.parquet` / `.csv` / `.txt` file, a local folder (data files, or a
  `save_to_disk` folder), or a Hub dataset id through `datasets.load_dataset`.

Offline mode is never forced: the embedded defaults need no network by nature. A Hub id that cannot be fetched
(offline mode, no network, unknown id) raises one `ValueError` line that says which and what to do.
"""

from __future__ import annotations

import re
from pathlib import Path


__all__ = ["EMBEDDED_MODELS", "load_model", "load_text_dataset", "load_tokenizer", "resolve_source"]

EMBEDDED_MODELS = ("smollm2", "tiny")
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_source(name: str, what: str = "--model") -> str:
    """Classify `name`: `"embedded"`, `"local"` (an existing file or directory) or `"hub"` (a valid Hub id that
    is not a local path). Anything else raises `FileNotFoundError` naming the accepted forms."""
    if name in EMBEDDED_MODELS and what != "--dataset":
        return "embedded"
    if Path(name).expanduser().exists():
        return "local"
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if not looks_like_path and _HUB_ID.match(name) and ".." not in name and not name.endswith((".", "-")):
        return "hub"
    accepted = (
        "a local file or folder, or a Hub dataset id"
        if what == "--dataset"
        else ("'smollm2', 'tiny', a local directory, or a Hub id like 'Qwen/Qwen2.5-0.5B'")
    )
    raise FileNotFoundError(f"{what} {name!r} does not exist locally and is not a Hub id; give {accepted}")


def _hub_error(what: str, name: str, exc: BaseException) -> ValueError:
    """One line for a Hub id that could not be loaded: offline mode, no network, or an unknown id."""
    from huggingface_hub import constants

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if constants.HF_HUB_OFFLINE:
        return ValueError(
            f"{what} {name!r} is a Hub id that is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
            "downloading it: unset HF_HUB_OFFLINE (with network), or pass a local path"
        )
    return ValueError(f"{what} {name!r}: could not load it from the Hub or the local cache ({first})")


def _torch_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


def load_tokenizer(
    name: str | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
):
    """The tokenizer of `name` (default: the embedded SmolLM2's), with a pad token (the EOS token if it had none)."""
    from transformers import AutoTokenizer

    name = name or "smollm2"
    kind = resolve_source(name, "--tokenizer")
    if name == "smollm2" and kind == "embedded":
        from hf_plugins.models.smollm2 import SMOLLM2_GGUF, smollm2_path

        tok = AutoTokenizer.from_pretrained(smollm2_path(), gguf_file=SMOLLM2_GGUF)
    elif kind == "embedded":
        from hf_plugins.testing import tiny_tokenizer

        tok = tiny_tokenizer()
    else:
        kw = {"revision": revision, "trust_remote_code": trust_remote_code, "cache_dir": cache_dir}
        try:
            tok = AutoTokenizer.from_pretrained(name, **kw)
        except OSError as exc:
            if kind == "local":
                raise ValueError(f"--tokenizer {name!r}: no tokenizer files there ({exc})") from exc
            raise _hub_error("--tokenizer", name, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str = "smollm2",
    dtype="float32",
    *,
    tokenizer: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    attn_implementation: str | None = None,
):
    """`(model, tokenizer)` for a model name (see the module docstring); `tokenizer` names another tokenizer than
    the model's own. A folder holding a PEFT adapter is refused with a pointer to `--adapter`: the base comes first."""
    kw = {"revision": revision, "trust_remote_code": trust_remote_code, "cache_dir": cache_dir}
    model, own = _load_model(name, dtype, attn_implementation, kw)
    return model, (own if tokenizer is None else load_tokenizer(tokenizer, **kw))


def _load_model(name: str, dtype, attn_implementation, kw: dict):
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(dtype)
    kind = resolve_source(name)
    if kind == "embedded":
        fixed = torch_dtype if torch_dtype not in (None, "auto") else None  # "auto": the embedded models are fp32
        if name == "smollm2":
            from hf_plugins.models.smollm2 import load_smollm2

            return load_smollm2(dtype=fixed)
        import torch

        from hf_plugins.testing import tiny_model

        return tiny_model("llama", dtype=fixed or torch.float32), load_tokenizer("tiny")
    path = Path(name).expanduser()
    if kind == "local" and not path.is_dir():
        raise FileNotFoundError(f"--model {name!r} is a file; give a directory saved with save_pretrained")
    if kind == "local" and (path / "adapter_config.json").exists():
        raise ValueError(f"{path} holds an adapter; pass the base with --model and the adapter with --adapter")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path) if kind == "local" else name, dtype=torch_dtype, attn_implementation=attn_implementation, **kw
        )
    except OSError as exc:
        if kind == "local":
            raise ValueError(f"--model {name!r}: not a saved model ({exc})") from exc
        raise _hub_error("--model", name, exc) from exc
    return model, load_tokenizer(str(path) if kind == "local" else name, **kw)


def _cached_snapshot(repo_id: str, revision: str | None, cache_dir: str | None) -> str | None:
    """The local Hub-cache snapshot folder of a dataset repo, without any network access (None if absent)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(
            repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir, local_files_only=True
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def load_text_dataset(
    name: str,
    *,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    cache_dir: str | None = None,
):
    """One split of a dataset given by a local file, a local folder or a Hub id, as a `datasets.Dataset`.

    A Hub id loads through `datasets.load_dataset` (datasets' own cache included); when the Hub cannot be reached
    (offline mode or no network) a snapshot already in the Hugging Face Hub cache (e.g. from `hf download REPO
    --repo-type dataset`) is loaded from disk instead.
    """
    import datasets

    kind = resolve_source(name, "--dataset")
    path = Path(name).expanduser()
    if kind == "local" and path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"--dataset {name!r}: unknown file type; use one of {sorted(DATA_FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path), split=split)
    if kind == "local":
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():  # a `save_to_disk` folder
            loaded = datasets.load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(str(path), name=config, split=split)
    try:
        return datasets.load_dataset(name, name=config, split=split, revision=revision, cache_dir=cache_dir)
    except (ConnectionError, OSError) as exc:  # offline, no network, or unknown id: try the Hub cache
        snapshot = _cached_snapshot(name, revision, cache_dir)
        if snapshot is None:
            raise _hub_error("--dataset", name, exc) from exc
        return datasets.load_dataset(snapshot, name=config, split=split)
