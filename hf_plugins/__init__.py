"""hf_plugins: ten recent LLM-training methods as plugins for the stock Hugging Face stack.

Importing this package registers every tuner type with PEFT and every model with the transformers Auto
classes (idempotently). It must be imported before loading a saved hf_plugins adapter or model in a fresh
process: `PeftModel.from_pretrained` / `AutoModelForCausalLM.from_pretrained` do not know our types otherwise.
"""

__version__ = "0.1.0"

from .data.arithmetic import ArithmeticConfig, Problem, generate_problems, make_dataset
from .evaluation import evaluate_exact_match, generate_completions
from .models.smollm2 import load_smollm2
from .peft_registration import register_peft_type
from .rewards.answers import extract_final_number, numbers_equal
from . import builtin_methods  # noqa: E402  (registers `--method full|lora` and `--optim adamw`)

# Each method adds its imports below, in its own section; keep the sections in this order.
# --- lift ---
# --- seft / pruning ---
# --- stable_spam / alphadecay / esd ---
# --- meap ---
# --- coe ---
# --- lns ---
# --- neurotrails ---
# --- srlm ---
# --- sos ---
# --- corpus ---
