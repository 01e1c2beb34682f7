"""Bad input to the optimizers (Stable-SPAM, AlphaDecay), the MEAP collator and `add_mask_token`, the model types
(CoE, LNS, NeuroTrails) and their converters: one table, one row per input, each with the one clear error
it must give. No row may become silent again. The SRLM config, the rewards and the SoS API have their own table in
test_bad_inputs_recipes.py; LIFT, SEFT and pruning theirs in test_sparse_delta_bad_inputs.py.

Columns: plugin, input, expected (`raises` an exception type, and a pattern of the message),
and `before`: what the code did before these checks existed ("silent" = accepted, possibly with a wrong result;
"deep" = an error from deep inside, not naming the input; "same" = an error already, possibly worded otherwise).
Every "silent" and "deep" row fails on that code.
"""

import pytest
import torch
from _bad_input_table import INF, NAN, check_table, err, expect_outcome  # tests/_bad_input_table.py
from huggingface_hub.errors import StrictDataclassFieldValidationError
from torch import nn
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling

from hf_plugins import (
    AlphaDecay,
    CoEConfig,
    DataCollatorForMEAP,
    LnsLlamaConfig,
    MaskRatioSchedule,
    NeuroTrailsConfig,
    StableSPAM,
    add_mask_token,
    moe_to_coe,
    to_lns,
)
from hf_plugins.optim.alphadecay import alphadecay_optimizer_class
from hf_plugins.testing import tiny_config, tiny_llama, tiny_model, tiny_tokenizer


# -- Stable-SPAM / AlphaDecay ------------------------------------------------------------------------------------------
def _params():
    return [nn.Parameter(torch.randn(4, 4))]


def spam(**kw):
    return lambda: StableSPAM(_params(), **kw)


def spam_group(**kw):
    return lambda: StableSPAM([{"params": _params(), **kw}])


def spam_add(**kw):
    return lambda: StableSPAM(_params()).add_param_group({"params": _params(), **kw})


def _spam_scheduler_sets_infinite_lr():
    params = _params()
    opt = StableSPAM(params)
    opt.param_groups[0]["lr"] = INF
    params[0].grad = torch.randn(4, 4)
    opt.step()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])


AD = {"lr": 1e-3, "weight_decay": 0.1, "min_eigs": 8}


def ad(**kw):
    return lambda: AlphaDecay()(_mlp(), **{**AD, **kw})


def ad_add(base="adamw", **kw):
    return lambda: AlphaDecay()(_mlp(), **AD, base=base).add_param_group({"params": _params(), **kw})


def _alphadecay_class_interval_0():
    cls = alphadecay_optimizer_class(torch.optim.AdamW)
    cls(_params(), lr=1e-3, alphadecay_interval=0, alphadecay_wd_min_ratio=0.5, alphadecay_wd_max_ratio=2.0)


OPTIM_ROWS = [
    # -- Stable-SPAM: constructor, per-group values, add_param_group, a scheduler's lr ------------------------------
    ("stable_spam", "lr=-1", spam(lr=-1), err("`lr`"), "same"),
    ("stable_spam", "lr=inf", spam(lr=INF), err("`lr`"), "same"),
    ("stable_spam", "lr=nan", spam(lr=NAN), err("`lr`"), "same"),
    ("stable_spam", "lr='1e-3'", spam(lr="1e-3"), err("`lr`"), "same"),
    ("stable_spam", "eps=-1", spam(eps=-1), err("`eps`"), "same"),
    ("stable_spam", "weight_decay=inf", spam(weight_decay=INF), err("`weight_decay`"), "same"),
    ("stable_spam", "betas=0.9 (not a pair)", spam(betas=0.9), err("`betas`"), "same"),
    ("stable_spam", "gamma1=2", spam(gamma1=2), err("`gamma1`"), "same"),
    ("stable_spam", "total_T=2.5", spam(total_T=2.5), err("`total_T`"), "same"),
    ("stable_spam", "eta_min=2", spam(eta_min=2), err("`eta_min`"), "same"),
    ("stable_spam", "reset_interval=-1", spam(reset_interval=-1), err("`reset_interval`"), "same"),
    ("stable_spam", "adaclip='yes'", spam(adaclip="yes"), err("`adaclip`"), "same"),
    ("stable_spam", "nonfinite='ignore'", spam(nonfinite="ignore"), err("`nonfinite`"), "same"),
    ("stable_spam", "group betas=(1.5, 0.9)", spam_group(betas=(1.5, 0.9)), err("param group 0: `betas`"), "same"),
    ("stable_spam", "group lr=-1", spam_group(lr=-1), err("param group 0: `lr`"), "same"),
    ("stable_spam", "add_param_group(gamma2=5)", spam_add(gamma2=5), err("param group 1: `gamma2`"), "same"),
    ("stable_spam", "scheduler sets lr=inf", _spam_scheduler_sets_infinite_lr, err("param group 0: `lr`"), "same"),
    ("stable_spam", "params: one tensor", lambda: StableSPAM(torch.ones(3)), err("iterable", TypeError), "same"),
    ("stable_spam", "params: strings", lambda: StableSPAM(["w"]), err("Tensors", TypeError), "same"),
    ("stable_spam", "params: empty", lambda: StableSPAM([]), err("empty parameter list"), "same"),
    # -- AlphaDecay ---------------------------------------------------------------------------------------------
    ("alphadecay", "lr=inf", ad(lr=INF), err("param group 0: `lr`"), "silent"),
    ("alphadecay", "lr=-1", ad(lr=-1), err("learning rate"), "same"),
    ("alphadecay", "weight_decay=inf", ad(weight_decay=INF), err("`weight_decay`"), "silent"),
    ("alphadecay", "weight_decay=-1", ad(weight_decay=-1), err("`weight_decay`"), "same"),
    ("alphadecay", "weight_decay='0.1'", ad(weight_decay="0.1"), err("`weight_decay`"), "deep"),
    ("alphadecay", "interval=0", ad(interval=0), err("`interval`"), "same"),
    ("alphadecay", "interval=2.5", ad(interval=2.5), err("`interval`"), "same"),
    ("alphadecay", "interval=None", ad(interval=None), err("`interval`"), "deep"),
    ("alphadecay", "wd_min_ratio > wd_max_ratio", ad(wd_min_ratio=3, wd_max_ratio=1), err("`wd_min_ratio`"), "same"),
    ("alphadecay", "wd_min_ratio=nan", ad(wd_min_ratio=NAN), err("`wd_min_ratio`"), "same"),
    ("alphadecay", "wd_max_ratio=inf", ad(wd_max_ratio=INF), err("`wd_max_ratio`"), "silent"),
    ("alphadecay", "xmin_pos=1", ad(xmin_pos=1), err("`xmin_pos`"), "same"),
    ("alphadecay", "xmin_pos=inf", ad(xmin_pos=INF), err("`xmin_pos`"), "silent"),
    ("alphadecay", "min_eigs=1", ad(min_eigs=1), err("`min_eigs`"), "same"),
    ("alphadecay", "esd_streams=0", ad(esd_streams=0), err("`esd_streams`"), "same"),
    ("alphadecay", "merge_groups='no'", ad(merge_groups="no"), err("`merge_groups`"), "silent"),
    ("alphadecay", "overlap_refresh='yes'", ad(overlap_refresh="yes"), err("`overlap_refresh`"), "same"),
    ("alphadecay", "other_params='none'", ad(other_params="none"), err("`other_params`"), "same"),
    ("alphadecay", "base='lion'", ad(base="lion"), err("`base`"), "same"),
    ("alphadecay", "an unknown base option", ad(gamma1=0.5), err("gamma1", TypeError), "same"),
    (
        "alphadecay",
        "a parameter list instead of the model",
        lambda: AlphaDecay()(list(_mlp().parameters()), lr=1e-3, weight_decay=0.1),
        err("nn.Module", TypeError),
        "deep",
    ),
    ("alphadecay", "add_param_group(lr=-1)", ad_add(lr=-1), err("param group 4: `lr`"), "silent"),
    ("alphadecay", "add_param_group(lr=inf)", ad_add(lr=INF), err("param group 4: `lr`"), "silent"),
    ("alphadecay", "add_param_group(weight_decay=-1)", ad_add(weight_decay=-1), err("`weight_decay`"), "silent"),
    (
        "alphadecay",
        "Stable-SPAM base, add_param_group(gamma2=5)",
        ad_add("stable_spam", gamma2=5),
        err("`gamma2`"),
        "same",
    ),
    ("alphadecay", "Stable-SPAM base, gamma1=2", ad(base="stable_spam", gamma1=2), err("`gamma1`"), "same"),
    (
        "alphadecay",
        "optimizer class built directly, interval=0",
        _alphadecay_class_interval_0,
        err("`interval`"),
        "silent",
    ),
]


# -- MEAP -------------------------------------------------------------------------------------------------------------
def _tok(pad=True):
    tok = tiny_tokenizer()
    add_mask_token(tok)
    if not pad:
        tok.pad_token = None
    return tok


EX = [{"input_ids": [1, 10, 11, 12, 13, 2]}, {"input_ids": [1, 14, 15, 2]}]


def meap(**kw):
    return lambda: DataCollatorForMEAP(tokenizer=_tok(), **kw)


def collate(examples, **kw):
    return lambda: DataCollatorForMEAP(tokenizer=_tok(), **kw)(examples)


def _neurotrails():
    return tiny_model("neurotrails", num_trails=2, blocks_in_head=1)


MEAP_ROWS = [
    ("meap", "mask_ratio=-0.1", meap(mask_ratio=-0.1), err("`mask_ratio`"), "same"),
    ("meap", "mask_ratio=1.5", meap(mask_ratio=1.5), err("`mask_ratio`"), "same"),
    ("meap", "mask_ratio=nan", meap(mask_ratio=NAN), err("`mask_ratio`"), "same"),
    ("meap", "mask_ratio='high'", meap(mask_ratio="high"), err("`mask_ratio`"), "deep"),
    ("meap", "mask_ratio=True", meap(mask_ratio=True), err("`mask_ratio`"), "silent"),
    ("meap", "a schedule returning 2.0", collate(EX, mask_ratio=lambda b: 2.0), err("`mask_ratio`"), "same"),
    ("meap", "MaskRatioSchedule(end=1.5)", lambda: MaskRatioSchedule(end=1.5), err("`end`"), "same"),
    ("meap", "MaskRatioSchedule(num_batches=2.5)", lambda: MaskRatioSchedule(num_batches=2.5), err("`num_"), "silent"),
    ("meap", "MaskRatioSchedule(kind='exp')", lambda: MaskRatioSchedule(kind="exp"), err("`kind`"), "same"),
    ("meap", "mode='mlm'", meap(mode="mlm"), err("`mode`"), "same"),
    ("meap", "sft_mode='interleave'", meap(mode="sft", sft_mode="interleave"), err("`sft_mode`"), "same"),
    (
        "meap",
        "concat_order='random'",
        meap(mode="sft", sft_mode="concat", concat_order="random"),
        err("`concat_"),
        "same",
    ),
    (
        "meap",
        "tokenizer without a mask token",
        lambda: DataCollatorForMEAP(tokenizer=tiny_tokenizer()),
        err("add_mask_token"),
        "same",
    ),
    ("meap", "neither base nor tokenizer", lambda: DataCollatorForMEAP(mask_token_id=3), err("Pass `base`"), "same"),
    ("meap", "mask_token_id=-1", meap(mask_token_id=-1), err("`mask_token_id`"), "same"),
    ("meap", "mask_token_id beyond the vocabulary", meap(mask_token_id=10**6), err("outside the tokenizer"), "same"),
    ("meap", "min_answer_length=2.5", meap(mode="sft", min_answer_length=2.5), err("`min_answer_length`"), "silent"),
    ("meap", "max_length=0", meap(mode="sft", sft_mode="concat", max_length=0), err("`max_length`"), "same"),
    (
        "meap",
        "max_length with sft_mode='separate_rows'",
        meap(mode="sft", max_length=20),
        err("`max_length`"),
        "silent",
    ),
    ("meap", "max_length in pre-training mode", meap(max_length=20), err("`max_length`"), "silent"),
    ("meap", "base that is not a collator", meap(base=3), err("`base`"), "silent"),
    ("meap", "enabled='no'", meap(enabled="no"), err("`enabled`"), "silent"),
    ("meap", "return_tensors='np'", meap(return_tensors="np"), err("`return_tensors`"), "same"),
    (
        "meap",
        "SFT mode on transformers' LM collator",
        lambda: DataCollatorForMEAP(
            base=DataCollatorForLanguageModeling(_tok(), mlm=False), tokenizer=_tok(), mode="sft"
        ),
        err("keeps the examples' labels"),
        "same",
    ),
    (
        "meap",
        "tokenizer without pad, unequal lengths",
        lambda: DataCollatorForMEAP(tokenizer=_tok(pad=False))(EX),
        err("padding token"),
        "same",
    ),
    ("meap", "an empty batch", collate([]), err("empty batch"), "deep"),
    ("meap", "pre-training examples without input_ids", collate([{"text": "a b"}]), err("input_ids"), "same"),
    (
        "meap",
        "SFT examples without input_ids",
        collate([{"labels": [1, 2]}], mode="sft"),
        err("no `input_ids`"),
        "deep",
    ),
    (
        "meap",
        "SFT examples with a text column",
        collate([{"input_ids": [1, 2], "text": "x"}], mode="sft"),
        err("can only rebuild"),
        "same",
    ),
    (
        "meap",
        "SFT labels shorter than input_ids",
        collate([{"input_ids": [1, 2, 3], "labels": [1, 2]}], mode="sft"),
        err("must agree"),
        "same",
    ),
    ("meap", "a negative token id", collate([{"input_ids": [1, -5, 12, 2]}]), err("negative token id"), "silent"),
    (
        "meap",
        "a token id beyond the vocabulary",
        collate([{"input_ids": [1, 10**6, 12, 2]}]),
        err("beyond the tokenizer"),
        "silent",
    ),
    ("meap", "nested input_ids", collate([{"input_ids": [[1, 10], [12, 2]]}]), err("flat list"), "deep"),
    ("meap", "add_mask_token(tokenizer=None)", lambda: add_mask_token(None), err("`tokenizer`", TypeError), "deep"),
    (
        "meap",
        "add_mask_token(model='gpt2')",
        lambda: add_mask_token(tiny_tokenizer(), "gpt2"),
        err("`model`", TypeError),
        "deep",
    ),
    (
        "meap",
        "add_mask_token(mask_token='')",
        lambda: add_mask_token(tiny_tokenizer(), mask_token=""),
        err("non-empty"),
        "same",
    ),
    (
        "meap",
        "add_mask_token on NeuroTrails (cannot resize)",
        lambda: add_mask_token(tiny_tokenizer(), _neurotrails()),
        err("cannot grow"),
        "same",
    ),
]


# -- CoE / LNS / NeuroTrails ------------------------------------------------------------------------------------------
COE = {
    "vocab_size": 99,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
}
NT = {k: v for k, v in COE.items() if k not in ("num_experts", "num_experts_per_tok", "moe_intermediate_size")}
NT.update(num_hidden_layers=3, num_trails=2, blocks_in_head=1)


def coe(**kw):
    return lambda: CoEConfig(**{**COE, **kw})


def nt(**kw):
    return lambda: NeuroTrailsConfig(**{**NT, **kw})


def mutated(cls, fields, **changes):
    """A model built from a valid config changed afterwards (assignments are only type-checked)."""

    def act():
        config = cls(**fields)
        for name, value in changes.items():
            setattr(config, name, value)
        AutoModelForCausalLM.from_config(config)

    return act


def _moe(**kw):
    return AutoModelForCausalLM.from_config(CoEConfig(**{**COE, "num_iterations": 1, **kw}))


MODEL_ROWS = [
    # -- CoE ----------------------------------------------------------------------------------------------------
    ("coe", "num_experts=0", coe(num_experts=0), err("`num_experts`"), "same"),
    ("coe", "num_experts_per_tok > num_experts", coe(num_experts_per_tok=5), err("`num_experts_per_tok`"), "same"),
    ("coe", "num_iterations=0", coe(num_iterations=0), err("`num_iterations`"), "same"),
    (
        "coe",
        "num_iterations=2.5",
        coe(num_iterations=2.5),
        err("num_iterations", StrictDataclassFieldValidationError),
        "same",
    ),
    ("coe", "residual_mode='post_ln'", coe(residual_mode="post_ln"), err("`residual_mode`"), "same"),
    ("coe", "outer_residual with pre_ln", coe(outer_residual=True), err("`outer_residual`"), "same"),
    ("coe", "first_k_dense_replace > layers", coe(first_k_dense_replace=5), err("`first_k_dense_replace`"), "same"),
    ("coe", "routed_scaling_factor=inf", coe(routed_scaling_factor=INF), err("`routed_scaling_factor`"), "silent"),
    (
        "coe",
        "scaling with norm_topk_prob",
        coe(routed_scaling_factor=2.0, norm_topk_prob=True),
        err("no effect"),
        "same",
    ),
    ("coe", "router_aux_loss_coef=-1", coe(router_aux_loss_coef=-1.0), err("`router_aux_loss_coef`"), "same"),
    ("coe", "router_aux_loss_coef=inf", coe(router_aux_loss_coef=INF), err("`router_aux_loss_coef`"), "silent"),
    (
        "coe",
        "mutated config: num_iterations=0",
        mutated(CoEConfig, COE, num_iterations=0),
        err("`num_iterations`"),
        "same",
    ),
    (
        "coe",
        "mutated config: num_experts_per_tok=9",
        mutated(CoEConfig, COE, num_experts_per_tok=9),
        err("`num_experts_per"),
        "same",
    ),
    ("coe", "moe_to_coe on a Llama", lambda: moe_to_coe(tiny_llama()), err("expects a CoEForCausalLM"), "same"),
    ("coe", "moe_to_coe on a config", lambda: moe_to_coe(CoEConfig(**COE)), err("expects a CoEForCausalLM"), "same"),
    (
        "coe",
        "moe_to_coe on a model with 2 iterations",
        lambda: moe_to_coe(_moe(num_iterations=2)),
        err("num_iterations=1"),
        "same",
    ),
    (
        "coe",
        "moe_to_coe(num_iterations=1)",
        lambda: moe_to_coe(_moe(), num_iterations=1),
        err("`num_iterations`"),
        "same",
    ),
    (
        "coe",
        "moe_to_coe(num_iterations=2.0)",
        lambda: moe_to_coe(_moe(), num_iterations=2.0),
        err("`num_iterations`"),
        "same",
    ),
    (
        "coe",
        "moe_to_coe, official layout without inner residual",
        lambda: moe_to_coe(_moe(residual_mode="official", inner_residual=False)),
        err("inner residual"),
        "same",
    ),
    # -- LNS ----------------------------------------------------------------------------------------------------
    (
        "lns",
        "layernorm_scaling='yes'",
        lambda: LnsLlamaConfig(layernorm_scaling="yes"),
        err("layernorm_scaling", StrictDataclassFieldValidationError),
        "same",
    ),
    (
        "lns",
        "to_lns(layernorm_scaling='no')",
        lambda: to_lns(tiny_llama(), layernorm_scaling="no"),
        err("`layernorm_scaling`"),
        "silent",
    ),
    ("lns", "to_lns on GPT-2", lambda: to_lns(tiny_model("gpt2")), err("supports model types"), "same"),
    ("lns", "to_lns on a Mistral config", lambda: to_lns(tiny_config("mistral")), err("'mistral'"), "same"),
    (
        "lns",
        "to_lns on a CoE model",
        lambda: to_lns(AutoModelForCausalLM.from_config(CoEConfig(**COE))),
        err("'coe'"),
        "same",
    ),
    ("lns", "to_lns on a base model (no lm_head)", lambda: to_lns(tiny_llama().model), err("causal-LM"), "same"),
    ("lns", "to_lns(3)", lambda: to_lns(3), err("got int"), "same"),
    # -- NeuroTrails -------------------------------------------------------------------------------------------
    ("neurotrails", "num_trails=0", nt(num_trails=0), err("`num_trails`"), "same"),
    ("neurotrails", "blocks_in_head > layers", nt(blocks_in_head=5), err("`blocks_in_head`"), "same"),
    ("neurotrails", "density=0", nt(density=0.0), err("`density`"), "same"),
    ("neurotrails", "density=nan", nt(density=NAN), err("`density`"), "same"),
    ("neurotrails", "prune_rate=1", nt(prune_rate=1.0), err("`prune_rate`"), "same"),
    ("neurotrails", "prune_criterion='random'", nt(prune_criterion="random"), err("`prune_criterion`"), "same"),
    ("neurotrails", "prune_temperature=nan", nt(prune_temperature=NAN), err("`prune_temperature`"), "silent"),
    ("neurotrails", "prune_temperature=inf", nt(prune_temperature=INF), err("`prune_temperature`"), "silent"),
    ("neurotrails", "embedding_init_std=inf", nt(embedding_init_std=INF), err("`embedding_init_std`"), "silent"),
    ("neurotrails", "tie_word_embeddings=True", nt(tie_word_embeddings=True), err("`tie_word_embeddings`"), "same"),
    ("neurotrails", "num_heads= (attention or trails?)", nt(num_heads=3), err("`num_trails`"), "same"),
    (
        "neurotrails",
        "mutated config: blocks_in_head=5",
        mutated(NeuroTrailsConfig, NT, blocks_in_head=5),
        err("`blocks_in_head`"),
        "same",
    ),
    (
        "neurotrails",
        "mutated config: density=2",
        mutated(NeuroTrailsConfig, NT, density=2.0),
        err("`density`"),
        "same",
    ),
    (
        "neurotrails",
        "resize_token_embeddings",
        lambda: _neurotrails().resize_token_embeddings(200),
        err("cannot resize", NotImplementedError),
        "same",
    ),
]

ROWS = OPTIM_ROWS + MEAP_ROWS + MODEL_ROWS


@pytest.mark.parametrize("plugin, case, act, expect, before", ROWS, ids=[f"{r[0]}: {r[1]}" for r in ROWS])
def test_bad_input_gets_one_clear_error_or_warning(plugin, case, act, expect, before):
    expect_outcome(expect, act)


def test_the_table_covers_every_plugin_and_no_row_repeats():
    check_table(ROWS, {"stable_spam", "alphadecay", "meap", "coe", "lns", "neurotrails"}, kinds=("raises",))
