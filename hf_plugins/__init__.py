"""hf_plugins: ten recent LLM-training methods as plugins for the stock Hugging Face stack.

Importing this package registers every tuner type with PEFT and every model with the transformers Auto
classes (idempotently). It must be imported before loading a saved hf_plugins adapter or model in a fresh
process: `PeftModel.from_pretrained` / `AutoModelForCausalLM.from_pretrained` do not know our types otherwise.
"""

__version__ = "0.1.0"

# --- seft / pruning ---
from . import (
    builtin_methods,
    pruning,
)

# --- meap ---
from .collators.meap import DataCollatorForMEAP, MaskRatioSchedule, MEAPCallback, add_mask_token
from .data.arithmetic import ArithmeticConfig, Problem, generate_problems, make_dataset
from .evaluation import evaluate_exact_match, generate_completions, score_completions

# --- coe ---
from .models.coe import CoEConfig, CoEForCausalLM, CoEModel, moe_to_coe

# --- lns ---
from .models.lns import LnsLlamaConfig, LnsLlamaForCausalLM, LnsQwen2Config, LnsQwen2ForCausalLM, to_lns

# --- neurotrails ---
from .models.neurotrails import (
    NeuroTrailsConfig,
    NeuroTrailsForCausalLM,
    NeuroTrailsModel,
    NeuroTrailsSparsityCallback,
)
from .models.smollm2 import load_smollm2

# --- stable_spam / alphadecay / esd ---
from .optim import AlphaDecay, OptimizerStatsCallback, StableSPAM, hf_param_groups  # registers the --optim entries
from .optim.esd import eligible_linears, esd_alphas, gram_eigenvalues, hill_alpha, model_esd
from .peft_registration import register_peft_type

# --- srlm ---
from .recipes.srlm import KdStageConfig, RlStageConfig, SftStageConfig, SrlmConfig, run_srlm  # TRL: lazy
from .rewards.answers import answer_matches, extract_answer, extract_final_number, numbers_equal
from .rewards.math import correctness_reward, format_reward, length_penalty

# --- sos ---
from .sos import CheckerConfig, check_polynomial, generate_items, parse_boxed_answer, parse_polynomial, sos_reward

# Each method adds its imports below, in its own section; keep the sections in this order.
# --- lift ---
from .tuners.lift import LiftConfig, LiftModel, LiftRefreshCallback
from .tuners.seft import SeftCallback, SeftConfig, SeftModel
# --- corpus ---
