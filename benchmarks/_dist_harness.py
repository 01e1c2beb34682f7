"""A small accelerate training loop that runs every hf_plugins plugin and every stock baseline the same way in 1
process, under DDP and under FSDP2, on the same global batches. Shared by `tests/test_distributed.py` (tiny models,
CPU, gloo), `benchmarks/comm_account.py` (collectives and host syncs per step) and `benchmarks/scaling_bench.py`
(the Qwen2-0.5B shape of `_results.QWEN2_05B`, bf16, NCCL).

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

import _results
import torch
from torch import nn

from hf_plugins.distributed import assert_same_on_all_ranks, full_tensor, is_dtensor, load_full_state, save_full_state


__all__ = ["BASELINES", "BASELINE_OF", "CASES", "PLUGINS", "Case", "RunConfig", "build_case", "global_rows", "run"]

PLUGINS = ("lift", "seft", "stable_spam", "alphadecay", "meap", "coe", "neurotrails")
BASELINES = ("lora", "adamw", "llama")  # PEFT LoRA + AdamW; Qwen2 + AdamW; Llama + AdamW
CASES = PLUGINS + BASELINES
# The stock set-up each plugin replaces: LIFT / SEFT replace LoRA; the optimizers and the collator run on the plain
# Qwen2 model with AdamW; the model types are Llama-based.
BASELINE_OF = {
    "lift": "lora",
    "seft": "lora",
    "stable_spam": "adamw",
    "alphadecay": "adamw",
    "meap": "adamw",
    "coe": "llama",
    "neurotrails": "llama",
}
_SPECIAL = 6  # ids 0..5 are the tiny tokenizer's special tokens; data never uses them
_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class RunConfig:
    plugin: str  # one of CASES
    mode: str = "single"  # "single" | "ddp" | "fsdp2"
    size: str = "tiny"  # "tiny" | "bench" (Qwen2-0.5B shape)
    steps: int = 4
    global_batch: int = 4
    seq_len: int = 16
    seed: int = 0
    lr: float = 3e-3
    interval: int | None = None  # refresh / cycle / topology interval; None: 2 (tiny) or max(2, steps // 2)
    total_steps: int | None = None  # the schedules' run length (cosines, last cycle); None: `steps` (stop earlier)
    mixed_precision: str = "no"
    save_at: int | None = None
    save_dir: str | None = None
    resume_from: str | None = None
    return_state: bool = True  # gather the full final weights (tests); the benchmark skips it
    adapter_dir: str | None = None  # PEFT plugins: save the final adapter here (rank 0 only, from the full state)
    timed_from: int = 1  # tokens/s over the steps from this one on (earlier ones warm up)
    sync_each_step: bool = True  # wait for the device after every step (per-step times); False: only around the window


@dataclass
class Case:
    model: nn.Module
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    vocab_size: int
    before_train: Callable = lambda model, opt: None
    before_step: Callable = lambda step, model: None
    after_step: Callable = lambda step, model, opt: None
    step_kind: Callable[[int], str] = lambda step: "steady"  # "steady", "window" (SEFT's grow window), "refresh"
    collators: dict = field(default_factory=dict)  # rank -> MEAP collator
    layer_classes: tuple = ()


def _base_config(family: str, size: str, **overrides):
    from hf_plugins.testing import tiny_config

    if size == "tiny":
        return tiny_config(family, **overrides)
    fields = dict(_results.QWEN2_05B)
    if family in ("coe", "neurotrails"):  # Llama-based model types: keep ~0.5-0.65B total with 12 layers
        fields.update(num_hidden_layers=12, tie_word_embeddings=False)
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
    return tuple(getattr(model, "_no_split_modules", None) or [])


def _every(interval: int, offset: int = 0, last: int | None = None) -> Callable[[int], str]:
    """`step_kind` of a plugin that refreshes at the 0-based steps s with (s + offset) % interval == 0."""
    return lambda s: "refresh" if (s + offset) % interval == 0 and (last is None or s + 1 < last) else "steady"


def _peft_case(plugin: str, size: str, seed: int, steps: int, interval: int, adamw) -> Case:
    from peft import get_peft_model

    tiny = size == "tiny"
    model = _model(_base_config("qwen2", size), seed)
    layers = _layer_classes(model)
    if plugin == "lora":
        from peft import LoraConfig

        peft = get_peft_model(model, LoraConfig(r=2 if tiny else 16, lora_alpha=32, target_modules=_TARGETS))
        return Case(peft, adamw, model.config.vocab_size, layer_classes=layers)
    if plugin == "lift":
        from hf_plugins import LiftConfig

        peft = get_peft_model(
            model, LiftConfig(r=2 if tiny else 16, update_interval=interval, target_modules=_TARGETS)
        )
        lift = peft.base_model
        return Case(
            peft,
            adamw,
            model.config.vocab_size,
            before_train=lambda m, opt: lift.initialize_masks(opt),
            after_step=lambda step, m, opt: lift.maybe_refresh(step + 1, opt, max_steps=steps),
            step_kind=_every(interval, offset=2, last=steps),  # after updates T - 1, 2T - 1, ... (LiftModel)
            layer_classes=layers,
        )
    from hf_plugins import SeftConfig
    from hf_plugins.pruning import prune_magnitude_

    with torch.no_grad():  # SEFT starts from a pruned copy: 50% magnitude pruning of every decoder linear
        for module in model.model.layers.modules():
            if isinstance(module, nn.Linear):
                prune_magnitude_(module, 0.5)
    accumulation = max(1, min(5, interval - 1))  # the last steps of a cycle grow (SeftConfig's default: 5)
    cfg = SeftConfig(
        density=0.05 if tiny else 0.01,
        update_interval=interval,
        accumulation_steps=accumulation,
        total_steps=steps,
        target_modules=_TARGETS,
    )
    peft = get_peft_model(model, cfg)
    seft = peft.base_model

    def kind(s: int) -> str:
        if seft.seft_is_cycle_step(s, steps):
            return "refresh"
        if not (s % interval >= interval - accumulation and s - s % interval + interval < steps):
            return "steady"
        return "refresh" if s % interval == interval - accumulation else "window"  # the first picks candidates

    return Case(
        peft,
        adamw,
        model.config.vocab_size,
        before_step=lambda step, m: seft.seft_prepare_step(step, steps),
        after_step=lambda step, m, opt: seft.seft_after_optimizer_step(opt, step, steps),
        step_kind=kind,
        layer_classes=layers,
    )


def build_case(
    plugin: str, size: str = "tiny", seed: int = 0, steps: int = 4, lr: float = 3e-3, interval: int | None = None
) -> Case:
    """The model, optimizer factory and per-step hooks of one plugin or baseline (`CASES`), as its docs prescribe."""
    tiny = size == "tiny"
    interval = interval or (2 if tiny else max(2, steps // 2))
    adamw = lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)  # noqa: E731
    if plugin in ("lift", "seft", "lora"):
        return _peft_case(plugin, size, seed, steps, interval, adamw)
    if plugin in ("stable_spam", "alphadecay", "meap", "adamw", "llama"):
        model = _model(_base_config("llama" if plugin == "llama" else "qwen2", size), seed)
        case = Case(model, adamw, model.config.vocab_size, layer_classes=_layer_classes(model))
        if plugin == "stable_spam":
            from hf_plugins import StableSPAM

            case.make_optimizer = lambda m: StableSPAM(m.parameters(), lr=lr, total_T=steps)
        elif plugin == "alphadecay":
            from hf_plugins import AlphaDecay

            case.make_optimizer = lambda m: AlphaDecay()(
                m, lr=lr, weight_decay=0.1, interval=interval, min_eigs=8 if tiny else 50
            )
            case.step_kind = _every(interval, offset=1)  # inside the update whose number is a multiple of interval
        elif plugin == "meap":
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
        return Case(model, adamw, model.config.vocab_size, layer_classes=_layer_classes(model))
    if plugin == "neurotrails":
        # bench: 2 trails of 2 blocks each, 12 layers: ~0.6B with the 2 untied 151936-row heads
        extra = {"num_trails": 2, "blocks_in_head": 1} if tiny else {"num_trails": 2, "blocks_in_head": 2}
        model = _model(_base_config("neurotrails", size, update_frequency=interval, density=0.8, **extra), seed)
        return Case(
            model,
            adamw,
            model.config.vocab_size,
            before_train=lambda m, opt: model.apply_masks(),
            after_step=lambda step, m, opt: model.sparsity_step(opt, step=step, total_steps=steps, seed=seed),
            step_kind=_every(interval, offset=1),
            layer_classes=_layer_classes(model),
        )
    raise ValueError(f"unknown case {plugin!r}; choose from {CASES}")


def global_rows(seed: int, step: int, batch: int, seq_len: int, vocab: int) -> torch.Tensor:
    """The global batch of `step`: token ids in [6, vocab - 1) (no special ids, no mask id)."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    return torch.randint(_SPECIAL, vocab - 1, (batch, seq_len), generator=g)


@contextlib.contextmanager
def _as_rank(r: int):
    """Make MEAP's collator see rank `r` in a single process (even one with a process group of one, as under
    torchrun): it seeds its mask stream by the process rank."""
    from unittest import mock

    from hf_plugins.collators.meap import collator

    with mock.patch.object(collator, "_process_rank", lambda: r):
        yield


def _batch(case: Case, rows: torch.Tensor, r: int, single: bool) -> dict:
    if case.collators:
        feats = [{"input_ids": row.tolist()} for row in rows]
        with _as_rank(r) if single else contextlib.nullcontext():
            out = case.collators[r](feats)
        return {k: v for k, v in out.items() if k in ("input_ids", "labels", "attention_mask")}
    return {"input_ids": rows, "labels": rows.clone(), "attention_mask": torch.ones_like(rows)}


def _accelerator(cfg: RunConfig, case: Case):
    from accelerate import Accelerator

    os.environ.pop("ACCELERATE_USE_FSDP", None)  # set by an FSDP Accelerator elsewhere in this process
    # FSDP2: the mixed precision is the sharding's (`_fully_shard`); accelerate only sets up the processes
    kw = {
        "mixed_precision": "no" if cfg.mode == "fsdp2" else cfg.mixed_precision,
        "cpu": not torch.cuda.is_available(),
    }
    return Accelerator(**kw)


def _fully_shard(model: nn.Module, layer_classes, mixed_precision: str) -> None:
    """FSDP2 as accelerate's `TRANSFORMER_BASED_WRAP` applies it (`fully_shard` on every decoder block, then on the
    root; resharded after forward), the same code on CPU and GPU and for any number of processes (one included: the
    benchmark's 1-GPU arm). bf16: parameters gathered in bf16, gradients reduced in fp32."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():  # one process: a group of one
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group(backend, rank=0, world_size=1)
    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(cfg: RunConfig, simulated_world: int = 2, account=None) -> dict:
    """Train `cfg.steps` steps; returns `{"losses", "state" (name: full fp32 tensor), "step_times", "step_kinds",
    "window_s" / "window_steps" / "tokens_per_s" (the steps from `timed_from` on), "peak_gib", "world", "sharded"}`.

    `cfg.mode="single"` is one process on the whole global batch (MEAP: collated as `simulated_world` ranks would).
    `save_at`/`save_dir` writes a `save_full_state` checkpoint after that many steps; `resume_from` continues one.
    `account(step)` (optional) returns a context manager entered around each training step (forward, backward,
    optimizer step and the plugin's per-step hooks): `comm_account.py` counts collectives and host syncs there."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # a fresh state per run (tests run several in one process)
    case = build_case(cfg.plugin, cfg.size, cfg.seed, cfg.total_steps or cfg.steps, cfg.lr, cfg.interval)
    acc = _accelerator(cfg, case)
    model = case.model.to(acc.device)
    if cfg.mode == "fsdp2":
        _fully_shard(model, case.layer_classes, cfg.mixed_precision)
        optimizer = case.make_optimizer(model)
    else:
        optimizer = case.make_optimizer(model)
        model, optimizer = acc.prepare(model, optimizer)
    world, me = acc.num_processes, acc.process_index
    sharded = any(is_dtensor(p) for p in model.parameters())
    start = 0
    if cfg.resume_from:
        start = int(load_full_state(cfg.resume_from, model, optimizer)["step"])
        for collator in case.collators.values():  # as MEAPCallback.on_train_begin: continue the mask stream
            collator.num_batches = start
    else:
        case.before_train(model, optimizer)
    per_rank = cfg.global_batch // (world if cfg.mode != "single" else 1)
    batches = []  # every step's batch on the device before the first step: no host-to-device copy in between
    for step in range(start, cfg.steps):
        rows = global_rows(cfg.seed, step, cfg.global_batch, cfg.seq_len, case.vocab_size)
        if cfg.mode == "single":
            parts = rows.chunk(simulated_world) if case.collators else [rows]
            pieces = [_batch(case, part, r, True) for r, part in enumerate(parts)]
            batch = {k: torch.cat([b[k] for b in pieces]) for k in pieces[0]}
        else:
            batch = _batch(case, rows[me * per_rank : (me + 1) * per_rank], me, False)
        batches.append({k: v.to(acc.device) for k, v in batch.items()})
    losses, times, window_start = [], [], None
    if torch.cuda.is_available():
        _sync()
        torch.cuda.reset_peak_memory_stats()
    for step, batch in zip(range(start, cfg.steps), batches):
        if cfg.sync_each_step or step == start + cfg.timed_from:
            _sync()
        t0 = time.perf_counter()
        if step == start + cfg.timed_from:
            window_start = t0
        with account(step) if account is not None else contextlib.nullcontext():
            case.before_step(step, model)
            loss = model(**batch).loss
            acc.backward(loss)
            optimizer.step()
            case.after_step(step, model, optimizer)
            optimizer.zero_grad(set_to_none=True)
        if cfg.sync_each_step:
            _sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss.detach().float())  # read (and averaged over ranks) after the last step
        if cfg.plugin == "neurotrails" and cfg.size == "tiny" and cfg.mode != "single":
            for name, module in case.model.sparse_modules():  # identical on every rank after every step
                assert_same_on_all_ranks(module.weight_mask, f"NeuroTrails mask of {name} after step {step}")
        if cfg.save_at is not None and step + 1 == cfg.save_at:
            save_full_state(cfg.save_dir, model, optimizer, extra={"step": step + 1})
    _sync()
    window_s = time.perf_counter() - window_start if window_start is not None else math.nan
    window_steps = cfg.steps - start - cfg.timed_from
    losses = acc.reduce(torch.stack(losses), reduction="mean").tolist() if losses else []
    peak = torch.cuda.max_memory_allocated() / _results.GIB if torch.cuda.is_available() else math.nan
    tps = cfg.global_batch * cfg.seq_len * window_steps / window_s if window_steps > 0 else math.nan
    state = {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(model, options=opts) if cfg.return_state or cfg.adapter_dir else {}
    if cfg.plugin in ("lift", "seft") and cfg.mode != "single" and cfg.return_state:
        for name, buf in model.named_buffers():  # positions, residuals, R, grow window: identical on every rank
            assert_same_on_all_ranks(buf, f"{cfg.plugin} buffer {name}")
    if cfg.adapter_dir and acc.is_main_process:  # as the Trainer: the main process saves the gathered adapter once
        acc.unwrap_model(model).save_pretrained(cfg.adapter_dir, state_dict=sd)
    acc.wait_for_everyone()
    for name, t in sd.items():
        if torch.is_tensor(t) and t.is_floating_point():
            state[name] = full_tensor(t).detach().float().cpu()
    acc.free_memory()
    return {
        "losses": losses,
        "state": state,
        "step_times": times,
        "window_s": window_s,
        "window_steps": window_steps,
        "step_kinds": [case.step_kind(s) for s in range(start, cfg.steps)],
        "tokens_per_s": tps,
        "peak_gib": peak,
        "world": world,
        "sharded": sharded,
    }
