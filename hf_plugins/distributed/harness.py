"""A small accelerate training loop that runs every hf_plugins plugin the same way in 1 process, under DDP and under
FSDP2, on the same global batches. Shared by `tests/test_distributed.py` (tiny models, CPU, gloo) and
`benchmarks/multigpu_fsdp.py` (a ~0.5B Qwen2-shaped model, bf16, NCCL).

Equivalence: the global batch of step s is generated from (seed, s); rank r of W takes rows
[r * B / W, (r + 1) * B / W). Every row has the same length and no padding, so the mean of the ranks' mean losses is
the single-process mean loss and the averaged gradients are the single-process gradients. MEAP draws masks per rank
(seeded by rank, as the collator does); the single-process reference reproduces them by collating each rank's rows
with that rank's collator.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import assert_same_on_all_ranks, full_tensor, load_full_state, save_full_state


__all__ = ["PLUGINS", "Case", "RunConfig", "build_case", "global_rows", "run"]

PLUGINS = ("lift", "seft", "stable_spam", "alphadecay", "meap", "coe", "neurotrails")
_NO_FSDP2: dict[str, str] = {}  # plugins refused under FSDP2 (none left): see docs/distributed.md
_SPECIAL = 6  # ids 0..5 are the tiny tokenizer's special tokens; data never uses them


@dataclass
class RunConfig:
    plugin: str
    mode: str = "single"  # "single" | "ddp" | "fsdp2"
    size: str = "tiny"  # "tiny" | "bench" (Qwen2.5-0.5B shape)
    steps: int = 4
    global_batch: int = 4
    seq_len: int = 16
    seed: int = 0
    lr: float = 3e-3
    mixed_precision: str = "no"
    save_at: int | None = None
    save_dir: str | None = None
    resume_from: str | None = None
    return_state: bool = True  # gather the full final weights (tests); the benchmark skips it
    adapter_dir: str | None = None  # PEFT plugins: save the final adapter here (rank 0 only, from the full state)


@dataclass
class Case:
    model: nn.Module
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    vocab_size: int
    before_train: Callable = lambda model, opt: None
    before_step: Callable = lambda step, model: None
    after_step: Callable = lambda step, model, opt: None
    collators: dict = field(default_factory=dict)  # rank -> MEAP collator
    find_unused_parameters: bool = False
    layer_classes: tuple = ()


def _base_config(family: str, size: str, **overrides):
    from hf_plugins.testing import tiny_config

    if size == "tiny":
        return tiny_config(family, **overrides)
    fields = {  # Qwen2.5-0.5B shape (494M parameters)
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    if family in ("coe", "neurotrails"):  # Llama-based configs: keep ~0.5B total with fewer layers
        fields.update(num_hidden_layers=12)
    fields.update(overrides)
    return tiny_config(family, **fields)


def _model(config, seed: int) -> nn.Module:
    """Built on CUDA when available (a 0.5B random init takes seconds there, much longer on CPU); the same seed
    gives the same weights on every GPU."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


def _layer_classes(model) -> tuple:
    names = getattr(model, "_no_split_modules", None) or []
    return tuple(names)


def build_case(plugin: str, size: str = "tiny", seed: int = 0, steps: int = 4, lr: float = 3e-3) -> Case:
    """The model, optimizer factory and per-step hooks of one plugin (`PLUGINS`), as its docs prescribe."""
    tiny = size == "tiny"
    interval = 2 if tiny else max(2, steps // 2)
    adamw = lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)  # noqa: E731
    if plugin in ("lift", "seft"):
        from peft import get_peft_model

        model = _model(_base_config("qwen2", size), seed)
        layers = _layer_classes(model)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        if plugin == "lift":
            from hf_plugins import LiftConfig

            peft = get_peft_model(
                model, LiftConfig(r=2 if tiny else 16, update_interval=interval, target_modules=targets)
            )
            lift = peft.base_model
            return Case(
                peft,
                adamw,
                model.config.vocab_size,
                before_train=lambda m, opt: lift.initialize_masks(opt),
                after_step=lambda step, m, opt: lift.maybe_refresh(step + 1, opt, max_steps=steps),
                layer_classes=layers,
            )
        from hf_plugins import SeftConfig
        from hf_plugins.pruning import prune_magnitude_

        with torch.no_grad():  # SEFT starts from a pruned copy: 50% magnitude pruning of every decoder linear
            for module in model.model.layers.modules():
                if isinstance(module, nn.Linear):
                    prune_magnitude_(module, 0.5)
        cfg = SeftConfig(
            density=0.05 if tiny else 0.01,
            update_interval=interval,
            accumulation_steps=1,
            total_steps=steps,
            target_modules=targets,
        )
        peft = get_peft_model(model, cfg)
        seft = peft.base_model
        return Case(
            peft,
            adamw,
            model.config.vocab_size,
            before_step=lambda step, m: seft.seft_prepare_step(step, steps),
            after_step=lambda step, m, opt: seft.seft_after_optimizer_step(opt, step, steps),
            layer_classes=layers,
        )
    if plugin in ("stable_spam", "alphadecay", "meap"):
        model = _model(_base_config("qwen2", size), seed)
        case = Case(model, adamw, model.config.vocab_size, layer_classes=_layer_classes(model))
        if plugin == "stable_spam":
            from hf_plugins import StableSPAM

            case.make_optimizer = lambda m: StableSPAM(m.parameters(), lr=lr, total_T=steps)
        elif plugin == "alphadecay":
            from hf_plugins import AlphaDecay

            case.make_optimizer = lambda m: AlphaDecay()(
                m, lr=lr, weight_decay=0.1, interval=interval, min_eigs=8 if tiny else 50
            )
        else:
            from hf_plugins import DataCollatorForMEAP
            from hf_plugins.testing import tiny_tokenizer

            tok = tiny_tokenizer()
            vocab = model.config.vocab_size
            # the bench model's vocabulary (151936) is larger than the tiny tokenizer's: mask with its last id then
            mask_id = vocab - 1 if vocab <= len(tok) else len(tok) - 1
            case.collators = {
                r: DataCollatorForMEAP(
                    tokenizer=tok, mask_token_id=mask_id, special_token_ids=list(range(_SPECIAL)), seed=seed
                )
                for r in range(8)
            }
        return case
    if plugin == "coe":
        extra = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
        if not tiny:  # ~0.65B with 12 layers; official CoE-2 uses 63 routed experts of 704 (scaled down here)
            extra = {"num_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 704}
        model = _model(_base_config("coe", size, router_aux_loss_coef=0.0, **extra), seed)
        return Case(
            model, adamw, model.config.vocab_size, find_unused_parameters=True, layer_classes=_layer_classes(model)
        )
    if plugin == "neurotrails":
        # bench: 2 trails of 2 blocks each, 12 layers: ~0.6B with the 2 untied 151936-row heads
        extra = {"num_trails": 2, "blocks_in_head": 1} if tiny else {"num_trails": 2, "blocks_in_head": 2}
        model = _model(_base_config("neurotrails", size, update_frequency=interval, density=0.8, **extra), seed)
        nt = model

        def after_step(step, m, opt):
            nt.sparsity_step(opt, step=step, total_steps=steps, seed=seed)
            if tiny:  # masks identical on every rank after every step (DDP and FSDP2; no-op in one process)
                for name, module in nt.sparse_modules():
                    assert_same_on_all_ranks(module.weight_mask, f"NeuroTrails mask of {name} after step {step}")

        return Case(
            model,
            adamw,
            model.config.vocab_size,
            before_train=lambda m, opt: nt.apply_masks(),
            after_step=after_step,
            layer_classes=_layer_classes(model),
        )
    raise ValueError(f"unknown plugin {plugin!r}; choose from {PLUGINS}")


def global_rows(seed: int, step: int, batch: int, seq_len: int, vocab: int) -> torch.Tensor:
    """The global batch of `step`: token ids in [6, vocab - 1) (no special ids, no mask id)."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    return torch.randint(_SPECIAL, vocab - 1, (batch, seq_len), generator=g)


@contextlib.contextmanager
def _as_rank(r: int):
    """Make MEAP's collator see rank `r` in a single process (it reads `RANK` when no process group exists)."""
    old = os.environ.get("RANK")
    os.environ["RANK"] = str(r)
    try:
        yield
    finally:
        if old is None:
            del os.environ["RANK"]
        else:
            os.environ["RANK"] = old


def _batch(case: Case, rows: torch.Tensor, r: int, single: bool) -> dict:
    if case.collators:
        feats = [{"input_ids": row.tolist()} for row in rows]
        with _as_rank(r) if single else contextlib.nullcontext():
            out = case.collators[r](feats)
        return {k: v for k, v in out.items() if k in ("input_ids", "labels", "attention_mask")}
    return {"input_ids": rows, "labels": rows.clone(), "attention_mask": torch.ones_like(rows)}


def _accelerator(cfg: RunConfig, case: Case):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, FullyShardedDataParallelPlugin

    kw = {"mixed_precision": cfg.mixed_precision, "cpu": not torch.cuda.is_available()}
    os.environ.pop("ACCELERATE_USE_FSDP", None)  # set by a previous FSDP Accelerator in this process
    if cfg.mode == "fsdp2":
        kw["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=list(case.layer_classes),
            reshard_after_forward=True,
            state_dict_type="FULL_STATE_DICT",
        )
    elif cfg.mode == "ddp" and case.find_unused_parameters:
        kw["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    return Accelerator(**kw)


def _fully_shard(model: nn.Module, layer_classes) -> None:
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module)
    fully_shard(model)


def run(cfg: RunConfig, simulated_world: int = 2) -> dict:
    """Train `cfg.steps` steps; returns `{"losses": [...], "state": {name: full fp32 tensor}, "tokens_per_s": ...}`.

    `cfg.mode="single"` is one process on the whole global batch (MEAP: collated as `simulated_world` ranks would).
    `save_at`/`save_dir` writes a `save_full_state` checkpoint after that many steps; `resume_from` continues one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # a fresh state per run (tests run several in one process)
    case = build_case(cfg.plugin, cfg.size, cfg.seed, cfg.steps, cfg.lr)
    acc = _accelerator(cfg, case)
    model = case.model.to(acc.device)
    from accelerate.utils import DistributedType

    if cfg.mode == "fsdp2" and acc.distributed_type != DistributedType.FSDP:
        # accelerate runs FSDP on GPUs only; on CPU (gloo) apply the same FSDP2 wrapping it would:
        # `fully_shard` every decoder block, then the root.
        _fully_shard(model, case.layer_classes)
        optimizer = case.make_optimizer(model)
    else:
        optimizer = case.make_optimizer(model)
        model, optimizer = acc.prepare(model, optimizer)
    world, me = acc.num_processes, acc.process_index
    from . import is_dtensor

    sharded = any(is_dtensor(p) for p in model.parameters())
    if cfg.mode == "fsdp2" and world > 1 and not sharded:
        raise RuntimeError(
            f"FSDP2 was requested but accelerate did not shard the model (state: {acc.distributed_type})"
        )
    start = 0
    if cfg.plugin in _NO_FSDP2:
        from . import refuse_sharded_parameters

        refuse_sharded_parameters(model, _NO_FSDP2[cfg.plugin])
    if cfg.resume_from:
        start = int(load_full_state(cfg.resume_from, model, optimizer)["step"])
        for collator in case.collators.values():  # as MEAPCallback.on_train_begin: continue the mask stream
            collator.num_batches = start
    else:
        case.before_train(model, optimizer)
    per_rank = cfg.global_batch // (world if cfg.mode != "single" else 1)
    losses, times, tokens = [], [], 0
    for step in range(start, cfg.steps):
        rows = global_rows(cfg.seed, step, cfg.global_batch, cfg.seq_len, case.vocab_size)
        if cfg.mode == "single":
            parts = rows.chunk(simulated_world) if case.collators else [rows]
            batches = [_batch(case, part, r, True) for r, part in enumerate(parts)]
            batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        else:
            batch = _batch(case, rows[me * per_rank : (me + 1) * per_rank], me, False)
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        case.before_step(step, model)
        loss = model(**batch).loss
        acc.backward(loss)
        optimizer.step()
        case.after_step(step, model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens += cfg.global_batch * cfg.seq_len
        losses.append(float(acc.reduce(loss.detach().float(), reduction="mean")))
        if cfg.save_at is not None and step + 1 == cfg.save_at:
            save_full_state(cfg.save_dir, model, optimizer, extra={"step": step + 1})
    measured = times[1:] if len(times) > 1 else times
    tps = cfg.global_batch * cfg.seq_len / (sum(measured) / len(measured)) if measured else math.nan
    state = {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(model, options=opts) if cfg.return_state or cfg.adapter_dir else {}
    if cfg.plugin in ("lift", "seft") and cfg.mode != "single" and cfg.return_state:
        from . import assert_same_on_all_ranks

        for name, buf in model.named_buffers():  # positions, residuals, R, grow window: identical on every rank
            assert_same_on_all_ranks(buf, f"{cfg.plugin} buffer {name}")
    if cfg.adapter_dir and acc.is_main_process:  # as the Trainer: the main process saves the gathered adapter once
        acc.unwrap_model(model).save_pretrained(cfg.adapter_dir, state_dict=sd)
    acc.wait_for_everyone()
    for name, t in sd.items():
        if torch.is_tensor(t) and t.is_floating_point():
            state[name] = full_tensor(t).detach().float().cpu()
    acc.free_memory()
    return {"losses": losses, "state": state, "tokens_per_s": tps, "world": world, "sharded": sharded}
