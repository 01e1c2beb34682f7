"""hf_plugins: ten recent LLM-training methods as plugins for the stock Hugging Face stack.

Importing this package registers every tuner type with PEFT and every model with the transformers Auto
classes (idempotently). It must be imported before loading a saved hf_plugins adapter or model in a fresh
process: `PeftModel.from_pretrained` / `AutoModelForCausalLM.from_pretrained` do not know our types otherwise.
"""

__version__ = "0.1.0"

# Sections, one per method, in this order. `# isort: split` ends each one, so import sorting never moves an
# import out of its section.

# --- shared: registries, stock baselines, loading, data, evaluation, model cards ---
from . import builtin_methods  # registers `--method full|lora` and `--optim adamw`
from .data.arithmetic import ArithmeticConfig, Problem, generate_problems, make_dataset
from .evaluation import evaluate_exact_match, generate_completions, score_completions
from .loading import load_model, load_text_dataset, load_tokenizer
from .model_card import write_model_card
from .models.smollm2 import load_smollm2
from .peft_registration import register_peft_type
from .rewards.answers import answer_matches, extract_answer, extract_final_number, numbers_equal
from .rewards.math import correctness_reward, format_reward, length_penalty


# isort: split
# --- lift ---
from .tuners.lift import LiftConfig, LiftModel, LiftRefreshCallback


# isort: split
# --- seft / pruning ---
from . import pruning
from .tuners.seft import SeftCallback, SeftConfig, SeftModel


# isort: split
# --- stable_spam / alphadecay / esd ---
from .optim import AlphaDecay, OptimizerStatsCallback, StableSPAM, hf_param_groups  # registers the --optim entries
from .optim.esd import eligible_linears, esd_alphas, gram_eigenvalues, hill_alpha, model_esd


# isort: split
# --- meap ---
from .collators.meap import DataCollatorForMEAP, MaskRatioSchedule, MEAPCallback, add_mask_token


# isort: split
# --- coe ---
from .models.coe import CoEConfig, CoEForCausalLM, CoEModel, moe_to_coe


# isort: split
# --- lns ---
from .models.lns import LnsLlamaConfig, LnsLlamaForCausalLM, LnsQwen2Config, LnsQwen2ForCausalLM, to_lns


# isort: split
# --- neurotrails ---
from .models.neurotrails import (
    NeuroTrailsConfig,
    NeuroTrailsForCausalLM,
    NeuroTrailsModel,
    NeuroTrailsSparsityCallback,
)


# isort: split
# --- srlm ---
from .recipes.srlm import KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig, run_srlm  # TRL: lazy


# isort: split
# --- sos ---
from .sos import CheckerConfig, check_polynomial, generate_items, parse_boxed_answer, parse_polynomial, sos_reward


# --- corpus --- `hf_plugins.data.corpus` is imported where it is used (building the corpus downloads packages).
