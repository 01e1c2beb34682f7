"""Bad input to LIFT, SEFT and the pruning they build on: one table, one row per input, each with the one clear error
or warning it must give. No row may become silent again.

Columns: plugin, input, expected (`raises` an exception type / `warns` a warning type, and a pattern of the message),
and `before`: what the code did before these checks existed ("silent" = accepted, possibly with a wrong result;
"deep" = an error from deep inside, not naming the input; "same" = an error already, possibly worded otherwise).
Every "silent" and "deep" row fails on that code.
"""

import copy
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch
from _bad_input_table import check_table, err, expect_outcome, warns  # tests/_bad_input_table.py
from peft import PeftModel, get_peft_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import hf_plugins  # noqa: F401  (registers LIFT and SEFT)
from hf_plugins import LiftConfig, SeftConfig
from hf_plugins.pruning import calibration_windows, parse_n_m, prunable_linears, prune_model, text_file_texts
from hf_plugins.testing import tiny_llama, tiny_model, tiny_tokenizer


IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8]])
LIFT = {"r": 2, "task_type": "CAUSAL_LM"}
SEFT = {"density": 0.05, "update_interval": 2, "accumulation_steps": 1, "task_type": "CAUSAL_LM"}


@dataclass
class Ctx:
    """Models and saved adapters the rows start from, built on first use."""

    pruned: torch.nn.Module
    calib: torch.Tensor
    tmp: Path

    @cached_property
    def lift_dir(self) -> Path:
        """A trained LIFT adapter with a residual (two refreshes)."""
        model = get_peft_model(tiny_llama(), LiftConfig(update_interval=1, init_weights=False, **LIFT))
        model.initialize_masks()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            model(input_ids=self.calib[:2], labels=self.calib[:2]).loss.backward()
            opt.step()
            opt.zero_grad()
            model.refresh_masks(opt)
        model.save_pretrained(self.tmp / "lift")
        return self.tmp / "lift"

    @cached_property
    def seft_dir(self) -> Path:
        """A trained SEFT adapter after one cycle (R non-empty)."""
        model = self.seft()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(3):
            model.seft_prepare_step(step, 3)
            model(input_ids=self.calib[:4], labels=self.calib[:4]).loss.backward()
            opt.step()
            model.seft_after_optimizer_step(opt, step, 3)
            opt.zero_grad()
        model.save_pretrained(self.tmp / "seft")
        return self.tmp / "seft"

    def lift(self, make=tiny_llama, **kw):
        """`get_peft_model` of a fresh model from `make()` with LIFT (test defaults updated by `kw`)."""
        return get_peft_model(make(), LiftConfig(**{**LIFT, **kw}))

    def seft(self, make=None, **kw):
        """`get_peft_model` of a copy of the pruned Llama (or of `make()`) with SEFT."""
        return get_peft_model(make() if make else copy.deepcopy(self.pruned), SeftConfig(**{**SEFT, **kw}))

    def edited(self, src: Path, name: str, edit) -> Path:
        """A copy of a saved adapter whose tensors went through `edit(state_dict)` (in place)."""
        dst = self.tmp / name
        shutil.copytree(src, dst)
        sd = load_file(dst / "adapter_model.safetensors")
        edit(sd)
        save_file(sd, dst / "adapter_model.safetensors")
        return dst


@pytest.fixture(scope="module")
def ctx(pruned_llama, calib, tmp_path_factory):
    return Ctx(pruned_llama, calib, tmp_path_factory.mktemp("bad_inputs"))


def _key(sd, suffix, module="layers.0.self_attn.q_proj"):
    return next(k for k in sd if module in k and k.endswith(suffix))


def _duplicate(suffix):
    def edit(sd):
        key = _key(sd, suffix)
        t = sd[key].clone()
        t[1] = t[0]
        sd[key] = t

    return edit


def _drop(suffix, module="layers.0.self_attn.q_proj"):
    def edit(sd):
        for key in [k for k in sd if module in k and k.endswith(suffix)]:
            del sd[key]

    return edit


def _as_float(suffix):
    def edit(sd):
        key = _key(sd, suffix)
        sd[key] = sd[key].float()

    return edit


def _truncate_bytes(ctx):
    dst = ctx.tmp / "lift_cut"
    shutil.copytree(ctx.lift_dir, dst)
    data = (dst / "adapter_model.safetensors").read_bytes()
    (dst / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    PeftModel.from_pretrained(tiny_llama(), dst)


def _transposed_lift(ctx):
    """A LIFT adapter saved for gate_proj 64x32 (hidden 32, intermediate 64) onto a model where it is 32x64:
    equal entry counts and budgets, so only the recorded shape tells them apart."""
    src = ctx.lift(target_modules=["gate_proj"], init_weights=False)
    src.initialize_masks()
    src.save_pretrained(ctx.tmp / "lift_gate")
    PeftModel.from_pretrained(tiny_llama(hidden_size=64, intermediate_size=32), ctx.tmp / "lift_gate")


def _transformers_load(edit):
    """transformers' `model.load_adapter(dir)` (no PEFT load hooks run) of an edited LIFT adapter, then a forward."""

    def act(ctx):
        model = tiny_llama()
        model.load_adapter(str(ctx.edited(ctx.lift_dir, f"t{len(list(ctx.tmp.iterdir()))}", edit)))
        model(input_ids=IDS)

    return act


def _seft_custom_loop_without_length(ctx):
    model = ctx.seft()
    model.seft_prepare_step(0)


def _seft_stopped_before_first_cycle(ctx):
    model = ctx.seft(target_sparsity=0.7, update_interval=20)
    model.seft_prepare_step(0, 100)
    model(input_ids=ctx.calib[:2], labels=ctx.calib[:2]).loss.backward()
    model.merge_and_unload()


def _seft_sized_config_without_tensors(ctx):
    from peft import PeftConfig

    model = get_peft_model(copy.deepcopy(ctx.pruned), PeftConfig.from_pretrained(ctx.seft_dir))
    model(input_ids=IDS)


def _lift_refresh_while_merged(ctx):
    model = ctx.lift()
    model.initialize_masks()
    model.merge_adapter()
    model.refresh_masks()


def _prune(model=None, **kw):
    def act(ctx):
        args = {"method": "magnitude", "sparsity": 0.5, **kw}
        prune_model(model() if model else tiny_llama(), **args)

    return act


def _prune_with_extra_key(ctx):
    model = tiny_llama()
    sparsity = dict.fromkeys(prunable_linears(model), 0.5)
    prune_model(model, "magnitude", {**sparsity, "lm_head": 0.5})


def _lift_no_refresh_callback(ctx):
    model = ctx.lift(update_interval=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(4):
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()


def _wider_pruned():
    model = tiny_llama(hidden_size=48, intermediate_size=96)
    prune_model(model, "magnitude", 0.5)
    return model


def lc(**kw):
    return lambda c: LiftConfig(**kw)


def sc(**kw):
    return lambda c: SeftConfig(**kw)


def lm(**kw):
    return lambda c: c.lift(**kw)


def sm(**kw):
    return lambda c: c.seft(**kw)


def _lift_file(name, edit):
    return lambda c: PeftModel.from_pretrained(tiny_llama(), c.edited(c.lift_dir, name, edit))


def _seft_file(name, edit):
    return lambda c: PeftModel.from_pretrained(copy.deepcopy(c.pruned), c.edited(c.seft_dir, name, edit))


def _lift_onto_wider(c):
    PeftModel.from_pretrained(tiny_llama(hidden_size=48, intermediate_size=96), c.lift_dir)


def _seft_onto_wider(c):
    PeftModel.from_pretrained(_wider_pruned(), c.seft_dir)


def _no_decoder_blocks(c):
    prune_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "magnitude", 0.5)


def _windows(**kw):
    return lambda c: calibration_windows(tiny_tokenizer(), ["one two"], **kw)


CALIB = torch.zeros(2, 8, dtype=torch.long)

# (input, action, expected, before)
LIFT_ROWS = [
    # -- LIFT: config ------------------------------------------------------------------------------------------
    ("r=0", lc(r=0), err("`r`"), "same"),
    ("r=-3", lc(r=-3), err("`r`"), "same"),
    ("r=2.5", lc(r=2.5), err("`r`"), "same"),
    ("r=True", lc(r=True), err("`r`"), "same"),
    ("density=0", lc(density=0), err("`density`"), "same"),
    ("density=1.5", lc(density=1.5), err("`density`"), "same"),
    ("density='0.1'", lc(density="0.1"), err("`density`"), "silent"),
    ("density=nan", lc(density=float("nan")), err("`density`"), "same"),
    ("lra_rank=0", lc(lra_rank=0), err("`lra_rank`"), "same"),
    ("lra_rank='half'", lc(lra_rank="half"), err("`lra_rank`"), "same"),
    ("selection_method='qr'", lc(selection_method="qr"), err("`selection_method`"), "same"),
    ("oversample=-1", lc(oversample=-1), err("`oversample`"), "same"),
    ("oversample=2.5", lc(oversample=2.5), err("`oversample`"), "silent"),
    ("niter=1.5", lc(niter=1.5), err("`niter`"), "silent"),
    ("selection_seed=1.5", lc(selection_seed=1.5), err("`selection_seed`"), "silent"),
    ("update_interval=0", lc(update_interval=0), err("`update_interval`"), "same"),
    ("update_interval=2.5", lc(update_interval=2.5), err("`update_interval`"), "same"),
    ("on_leave='drop'", lc(on_leave="drop"), err("`on_leave`"), "same"),
    ("cache_effective_weight='yes'", lc(cache_effective_weight="yes"), err("`cache_"), "same"),
    ("residual_sizes={'x': -1}", lc(residual_sizes={"x": -1}), err("`residual_"), "silent"),
    # -- LIFT: model ---------------------------------------------------------------------------------------------
    ("target_modules matching nothing", lm(target_modules=["no_such"]), err("not found"), "same"),
    ("a non-Linear target (embed_tokens)", lm(target_modules=["embed_tokens"]), err("nn.Linear", TypeError), "same"),
    (
        "GPT-2 (Conv1D projections), default targets",
        lm(make=lambda: tiny_model("gpt2")),
        err("nn.Linear", TypeError),
        "same",
    ),
    ("r larger than the matrix (r=64, 32x32)", lm(r=64), warns("budget of every entry"), "silent"),
    ("update_interval set, no refresh called", _lift_no_refresh_callback, warns("no mask refresh happened"), "same"),
    ("refresh while merged", _lift_refresh_while_merged, err("merged"), "same"),
    # -- LIFT: saved adapters ------------------------------------------------------------------------------------
    ("adapter onto a model with other shapes", _lift_onto_wider, err("made for a 32x32 weight"), "same"),
    ("adapter for a 64x32 matrix onto a 32x64 one", _transposed_lift, err("made for a 64x32 weight"), "silent"),
    ("duplicate indices in the file", _lift_file("l1", _duplicate("lift_indices")), err("more than once"), "silent"),
    (
        "duplicate residual indices",
        _lift_file("l2", _duplicate("lift_residual_indices")),
        err("more than once"),
        "silent",
    ),
    ("indices saved as floats", _lift_file("l3", _as_float("lift_indices")), err("integer tensor"), "silent"),
    ("file missing one module's tensors", _lift_file("l4", _drop("")), err("no tensors for 1 of the 14"), "silent"),
    ("file missing one tensor of a module", _lift_file("l5", _drop("lift_indices")), err("lacks"), "silent"),
    ("file cut in half (bytes)", _truncate_bytes, err("incomplete metadata", SafetensorError), "same"),
    ("load_adapter, file missing a module", _transformers_load(_drop("")), err("never loaded"), "silent"),
    (
        "load_adapter, duplicate indices",
        _transformers_load(_duplicate("lift_indices")),
        err("more than once"),
        "silent",
    ),
]

# (input, action, expected, before)
SEFT_ROWS = [
    # -- SEFT: config --------------------------------------------------------------------------------------------
    ("density=0", sc(density=0.0), err("`density`"), "same"),
    ("density=1.5", sc(density=1.5), err("`density`"), "same"),
    ("density='0.1'", sc(density="0.1"), err("`density`"), "deep"),
    ("r=0", sc(r=0), err("`r`"), "same"),
    ("r=2.5", sc(r=2.5), err("`r`"), "deep"),
    ("update_interval=0", sc(update_interval=0), err("`update_interval`"), "same"),
    ("update_interval=2.5", sc(update_interval=2.5), err("`update_interval`"), "silent"),
    ("accumulation_steps=0", sc(accumulation_steps=0), err("`accumulation_steps`"), "same"),
    (
        "accumulation_steps > update_interval",
        sc(update_interval=4, accumulation_steps=5),
        err("`accumulation_steps`"),
        "same",
    ),
    ("drop_fraction=1.5", sc(drop_fraction=1.5), err("`drop_fraction`"), "same"),
    ("drop_schedule='exp'", sc(drop_schedule="exp"), err("`drop_schedule`"), "same"),
    ("grow_criterion='hessian'", sc(grow_criterion="hessian"), err("`grow_criterion`"), "same"),
    ("reprune_criterion='random'", sc(reprune_criterion="random"), err("`reprune_"), "same"),
    ("target_sparsity=1.0", sc(target_sparsity=1.0), err("`target_sparsity`"), "same"),
    ("target_sparsity=-0.1", sc(target_sparsity=-0.1), err("`target_sparsity`"), "same"),
    ("n_m='5:4'", sc(n_m="5:4"), err("0 < N < M"), "same"),
    ("n_m='2-4'", sc(n_m="2-4"), err("look like"), "same"),
    ("n_m=24", sc(n_m=24), err("look like"), "deep"),
    ("n_m and another target_sparsity", sc(n_m="2:4", target_sparsity=0.7), err("contradicts"), "same"),
    ("total_steps=2.5", sc(total_steps=2.5), err("`total_steps`"), "silent"),
    ("init_seed=0.5", sc(init_seed=0.5), err("`init_seed`"), "silent"),
    ("resurrection='yes'", sc(resurrection="yes"), err("`resurrection`"), "silent"),
    # -- SEFT: model and training -----------------------------------------------------------------------------------
    ("SEFT on an unpruned model", sm(make=tiny_llama), warns("have no zero"), "silent"),
    ("target_sparsity below the base's", sm(target_sparsity=0.3), err("never lower"), "same"),
    ("budget above the allowed non-zeros", sm(density=0.6), err("budget k="), "same"),
    ("n_m on an unpruned model", sm(make=tiny_llama, n_m="2:4"), err("does not follow"), "same"),
    ("n_m whose M does not divide in_features", sm(n_m="2:5"), err("divisible by 5"), "same"),
    (
        "target_sparsity, update_interval=None",
        sm(target_sparsity=0.7, update_interval=None),
        err("runs no cycle"),
        "silent",
    ),
    (
        "target_sparsity, total_steps <= update_interval",
        sm(target_sparsity=0.7, total_steps=2),
        err("no room for a cycle"),
        "silent",
    ),
    (
        "target_sparsity, resurrection=False",
        sm(target_sparsity=0.7, resurrection=False),
        err("never re-balances"),
        "silent",
    ),
    (
        "target_sparsity, stopped before the first cycle",
        _seft_stopped_before_first_cycle,
        warns("more non-zeros than"),
        "silent",
    ),
    ("custom loop that never gives its length", _seft_custom_loop_without_length, err("total_steps"), "silent"),
    ("target_modules matching nothing", sm(target_modules=["no_such"]), err("not found"), "same"),
    # -- SEFT: saved adapters ------------------------------------------------------------------------------------
    ("adapter onto a model with other shapes", _seft_onto_wider, err("made for a 32x32 weight"), "same"),
    ("duplicate positions in R", _seft_file("s1", _duplicate("seft_pruned_indices")), err("more than once"), "silent"),
    ("duplicate delta positions", _seft_file("s2", _duplicate("seft_indices")), err("more than once"), "silent"),
    ("file missing one module's tensors", _seft_file("s3", _drop("")), err("no tensors for 1 of the 14"), "silent"),
    ("saved config reused, tensors never loaded", _seft_sized_config_without_tensors, err("never loaded"), "silent"),
]

# (input, action, expected, before)
PRUNING_ROWS = [
    # -- pruning -------------------------------------------------------------------------------------------------
    ("sparsity=1.0", _prune(sparsity=1.0), err("`sparsity` must be a number"), "same"),
    ("sparsity=-0.1", _prune(sparsity=-0.1), err("`sparsity` must be a number"), "same"),
    ("sparsity=nan", _prune(sparsity=float("nan")), err("`sparsity` must be a number"), "same"),
    ("sparsity='half'", _prune(sparsity="half"), err("`sparsity` must be a number"), "deep"),
    (
        "sparsity dict missing a matrix",
        _prune(sparsity={"model.layers.0.mlp.up_proj": 0.5}),
        err("no entry for"),
        "same",
    ),
    ("sparsity dict with an unknown matrix", _prune_with_extra_key, err("does not prune"), "silent"),
    ("n_m='5:4'", _prune(n_m="5:4"), err("0 < N < M"), "same"),
    ("n_m='3:5' (5 does not divide 32)", _prune(n_m="3:5"), err("divisible by M"), "same"),
    ("method='obs'", _prune(method="obs"), err("`method`"), "same"),
    ("Wanda without calibration", _prune(method="wanda"), err("needs `calibration`"), "same"),
    ("empty calibration", _prune(method="wanda", calibration=CALIB[:0]), err("empty"), "deep"),
    (
        "calibration of float values",
        _prune(method="wanda", calibration=torch.rand(2, 8)),
        err("integer token ids"),
        "silent",
    ),
    (
        "calibration ids beyond the vocabulary",
        _prune(method="wanda", calibration=CALIB + 10_000),
        err("vocabulary"),
        "deep",
    ),
    ("calibration as a 3-D tensor", _prune(method="wanda", calibration=CALIB[None]), err("integer token ids"), "deep"),
    ("target_modules matching nothing", _prune(target_modules=["no_such"]), err("matches target_modules"), "same"),
    ("batch_size=0", _prune(method="wanda", batch_size=0, calibration=CALIB), err("`batch_size`"), "deep"),
    ("blocksize=0", _prune(method="sparsegpt", blocksize=0, calibration=CALIB), err("`blocksize`"), "deep"),
    ("percdamp=-1", _prune(method="sparsegpt", percdamp=-1.0, calibration=CALIB), err("`percdamp`"), "deep"),
    ("per_row with Wanda", _prune(method="wanda", per_row=True, calibration=CALIB), err("`per_row`"), "silent"),
    ("a model without decoder blocks", _no_decoder_blocks, err("decoder blocks"), "same"),
    ("parse_n_m((2, 4, 8))", lambda c: parse_n_m((2, 4, 8)), err("look like"), "deep"),
    ("calibration windows: nsamples=0", _windows(nsamples=0), err("nsamples"), "same"),
    ("calibration text shorter than seqlen", _windows(nsamples=1, seqlen=64), err("fewer than seqlen"), "same"),
    (
        "calibration text file missing",
        lambda c: text_file_texts(c.tmp / "none.txt"),
        err("not found", FileNotFoundError),
        "same",
    ),
]

ROWS = [("lift", *r) for r in LIFT_ROWS] + [("seft", *r) for r in SEFT_ROWS] + [("pruning", *r) for r in PRUNING_ROWS]


@pytest.mark.parametrize("plugin, case, act, expect, before", ROWS, ids=[f"{r[0]}: {r[1]}" for r in ROWS])
def test_bad_input_gets_one_clear_error_or_warning(plugin, case, act, expect, before, ctx):
    expect_outcome(expect, lambda: act(ctx))


def test_the_table_covers_every_plugin_and_no_row_repeats():
    check_table(ROWS, {"lift", "seft", "pruning"}, kinds=("raises", "warns"))
    assert len(ROWS) >= 40
