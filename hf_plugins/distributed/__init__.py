"""Helpers that keep hf_plugins' state correct under data parallelism (DDP) and sharding (FSDP2).

Every function is a no-op (or the identity) in a single process, so plugin code can call them unconditionally.

- `is_distributed()`, `rank()`, `world_size()`, `barrier()`.
- `broadcast_object(obj, src=0)`: one picklable Python object from `src` to every rank (decays, masks' metadata).
- `all_reduce_mean_(tensor)`: in place, the mean over ranks (e.g. a dense gradient seen by a backward hook, which is
  the *local* gradient under DDP: DDP only averages the parameters' `.grad`).
- `full_tensor(t)` / `local_tensor(t)`: the whole matrix / this rank's shard of an FSDP2 `DTensor` (plain tensors
  pass through). Use `full_tensor` for statistics that need the whole matrix (ESD, top-k masks).
- `shard_like(full, dtensor)`: this rank's piece of a whole tensor, laid out as `dtensor` (write-back of a whole
  tensor computed identically on every rank, e.g. LIFT / SEFT values and their Adam moments after re-selection).
- `sharded_norms(tensors, ord)`: per-tensor 2- or inf-norms of possibly sharded tensors, with the partial sums
  (2-norm) or partial maxima (inf-norm) all-reduced over each tensor's mesh: the whole-matrix norm on every rank.
- `all_reduce_partials_(vectors, groups, op)`: per-tensor partial statistics (`local_partial`) of any number of
  tensors reduced over their shard groups (`shard_group`) in one collective per group: the bucketed reduction.
- `assert_same_on_all_ranks(tensor_or_obj, what)`: raise if ranks disagree (masks, decays; used by the tests).
- `check_deepspeed_optimizer(...)`: refuse DeepSpeed configs that would silently replace our optimizer.
- `save_full_state` / `load_full_state`: a checkpoint of the full (unsharded) model and optimizer state written once
  by rank 0 as safetensors + JSON; it loads under any number of processes, sharded or not.

See docs/distributed.md for the support matrix.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


__all__ = [
    "all_reduce_mean_",
    "all_reduce_partials_",
    "assert_same_on_all_ranks",
    "barrier",
    "broadcast_object",
    "check_deepspeed_optimizer",
    "refuse_sharded_parameters",
    "full_tensor",
    "is_distributed",
    "is_dtensor",
    "load_full_state",
    "local_partial",
    "local_tensor",
    "rank",
    "save_full_state",
    "shard_group",
    "shard_like",
    "sharded_norms",
    "world_size",
]


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (identity in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of `tensor` over all ranks (identity in one process). Returns `tensor`."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def is_dtensor(t: Any) -> bool:
    """Whether `t` is an FSDP2 / tensor-parallel `DTensor`. Called on every LIFT/SEFT forward: no import here (a
    DTensor can only exist once its module is loaded), just a dict lookup and an isinstance."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: `t.full_tensor()` for a sharded `DTensor` (a collective: every rank must call it), `t`
    itself otherwise (`.detach()` is not applied; call it on `p.detach()` or under `torch.no_grad()`)."""
    return t.full_tensor() if is_dtensor(t) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a `DTensor` (`t.to_local()`), `t` itself otherwise."""
    return t.to_local() if is_dtensor(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `full` (a whole tensor, identical on every rank) laid out as the `DTensor` `like` (the
    shape of `like.to_local()`); `full` itself when `like` is a plain tensor. No communication. Write it back with
    `local_tensor(like).copy_(shard_like(full, like))`: the local shard shares storage with the DTensor (FSDP2's
    sharded parameters and their optimizer state alike)."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"shard_like: whole tensor of shape {tuple(full.shape)} for a DTensor of {tuple(like.shape)}")
    full = full.to(device=local_tensor(like).device)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def shard_group(t: torch.Tensor):
    """The process group over which the DTensor `t` is sharded (FSDP2 `Shard(0)`); None for a plain or replicated
    tensor (its local value is already the whole one)."""
    if is_dtensor(t) and any(p.is_shard() for p in t.placements):
        return t.device_mesh.get_group()
    return None


def all_reduce_partials_(vectors: list[torch.Tensor], groups: list[list], op: str = "sum") -> list[torch.Tensor]:
    """In place: entry j of `vectors[i]` (1-D) reduced (`op` "sum" or "max") over the process group `groups[i][j]`;
    entries whose group is None stay as they are. One collective per distinct group for all vectors together (FSDP2:
    one group, so one collective however many tensors and parameter groups contribute): the bucketed reduction of
    per-tensor partial statistics. Entries are sent in the dtype of the first vector that has one (fp64 or fp32).
    For "max" a NaN is sent as +inf (gloo's MAX may drop a NaN operand), so every rank sees a non-finite value."""
    if op not in ("sum", "max"):
        raise ValueError(f"`op` must be 'sum' or 'max', got {op!r}")
    # per group: (group, [(vector index, entry index or None for the whole vector)])
    by_group: dict[int, tuple[Any, list[tuple[int, int | None]]]] = {}
    for i, gs in enumerate(groups):
        if not gs:
            continue
        if all(g is gs[0] for g in gs):
            if gs[0] is not None:  # the usual case (FSDP2): every entry on one mesh, the vector goes whole
                by_group.setdefault(id(gs[0]), (gs[0], []))[1].append((i, None))
            continue
        for j, g in enumerate(gs):  # mixed sharded / replicated entries: entry by entry
            if g is not None:
                by_group.setdefault(id(g), (g, []))[1].append((i, j))
    for group, slots in by_group.values():
        parts = [vectors[i] if j is None else vectors[i][j : j + 1] for i, j in slots]
        dtype = parts[0].dtype
        buf = torch.cat([x.to(dtype) for x in parts])
        if op == "max":
            buf = torch.where(buf.isnan(), torch.full_like(buf, float("inf")), buf)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)
        for x, chunk in zip(parts, buf.split([x.numel() for x in parts])):
            x.copy_(chunk)  # views of `vectors`: written in place
    return vectors


def local_partial(t: torch.Tensor, ord: float) -> torch.Tensor:
    """fp32 partial statistic of this rank's piece of `t`: max |x| (`ord=inf`, 0 for an empty shard) or the sum of
    squares (`ord=2`)."""
    local = local_tensor(t).float()
    if ord == float("inf"):
        return local.abs().max() if local.numel() else local.new_zeros(())
    return local.square().sum()


def sharded_norms(tensors: list[torch.Tensor], ord: float = 2.0) -> torch.Tensor:
    """Per-tensor norms (fp32, shape `(len(tensors),)`) of the *whole* tensors, on every rank.

    Plain tensors: `torch.linalg.vector_norm`. Sharded `DTensor`s (FSDP2 `Shard(0)`): the local partial sums of
    squares (`ord=2`) or partial maxima (`ord=inf`) are all-reduced over the tensor's mesh in one collective
    (`all_reduce_partials_`), so spike thresholds and gradient-norm statistics see the whole matrix. Replicated
    DTensors use their local copy. A NaN in any shard gives a non-finite norm on every rank."""
    if ord not in (2, 2.0, float("inf")):
        raise ValueError(f"`ord` must be 2 or inf, got {ord!r}")
    if not tensors:
        return torch.zeros(0)
    inf = ord == float("inf")
    out = torch.stack([local_partial(t, ord) for t in tensors])
    all_reduce_partials_([out], [[shard_group(t) for t in tensors]], "max" if inf else "sum")
    return out if inf else out.sqrt()


def _digest(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        t = full_tensor(obj.detach()).cpu()
        return ("tensor", tuple(t.shape), str(t.dtype), t.double().sum().item() if t.is_floating_point() else None, t)
    return obj


def assert_same_on_all_ranks(obj: Any, what: str = "value") -> None:
    """Raise `AssertionError` naming `what` if `obj` (a tensor, or any picklable object) differs between ranks."""
    if not is_distributed():
        return
    mine = _digest(obj)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    ref = gathered[0]
    for r, other in enumerate(gathered[1:], start=1):
        if isinstance(ref, tuple) and ref and ref[0] == "tensor":
            same = other[:3] == ref[:3] and torch.equal(other[4], ref[4])
        else:
            same = other == ref
        if not same:
            raise AssertionError(f"{what} differs between rank 0 and rank {r}")


def refuse_sharded_parameters(model: torch.nn.Module, plugin: str) -> None:
    """Raise a `ValueError` that says what to do if `model` has FSDP2-sharded (`DTensor`) parameters: `plugin`
    selects positions from whole matrices and does not support sharding yet (docs/distributed.md)."""
    for name, p in model.named_parameters():
        if is_dtensor(p):
            raise ValueError(
                f"{plugin} does not support FSDP2 sharding yet (parameter `{name}` is a sharded DTensor): its mask "
                "selection needs whole matrices on every rank. Train it with DDP (`accelerate launch --config_file "
                "examples/accelerate/ddp.yaml`), which is supported and tested; see docs/distributed.md."
            )


# ---------------------------------------------------------------------------------------------------------------
# DeepSpeed
# ---------------------------------------------------------------------------------------------------------------

_DS_REFUSAL = (
    "{name} cannot run under DeepSpeed with an `optimizer` section in the DeepSpeed config: DeepSpeed would build "
    "its own optimizer and silently drop {name}. Remove the `optimizer` (and `scheduler`, if you want the Trainer's) "
    "section from the DeepSpeed config: the Trainer then passes {name} to `deepspeed.initialize` as a client "
    "optimizer (ZeRO stages 0-2; {name} sees each rank's flat fp32 partition, so per-matrix statistics are not "
    "those of whole matrices: use FSDP2 for exact per-matrix behaviour). ZeRO-3 is not supported."
)


def check_deepspeed_optimizer(name: str, ds_config: dict | None = None, trainer_args=None) -> None:
    """Raise a `ValueError` that says what to do when DeepSpeed would replace the custom optimizer `name`
    (`"StableSPAM"`, `"AlphaDecay"`), or when ZeRO-3 is requested (per-matrix state needs whole matrices).

    `ds_config` is the DeepSpeed config dict; with `trainer_args` (TrainingArguments) it is read from
    `args.hf_deepspeed_config.config` (or `args.deepspeed` when it is a dict or a JSON path)."""
    if ds_config is None and trainer_args is not None:
        hf_ds = getattr(trainer_args, "hf_deepspeed_config", None)
        if hf_ds is not None:
            ds_config = hf_ds.config
        else:
            spec = getattr(trainer_args, "deepspeed", None)
            if isinstance(spec, dict):
                ds_config = spec
            elif isinstance(spec, (str, os.PathLike)) and Path(spec).is_file():
                ds_config = json.loads(Path(spec).read_text())
    if not ds_config:
        return
    if "optimizer" in ds_config:
        raise ValueError(_DS_REFUSAL.format(name=name))
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise ValueError(
            f"{name} is not supported under DeepSpeed ZeRO-3 (parameters are partitioned flat, so no rank holds a "
            "whole matrix). Use FSDP2 (`accelerate launch --config_file examples/accelerate/fsdp2.yaml`) or ZeRO-2."
        )


# ---------------------------------------------------------------------------------------------------------------
# Full-state checkpoints that load under any world size
# ---------------------------------------------------------------------------------------------------------------


def _state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _flatten_optim(osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta_state = {}, {}
    for fqn, entry in osd["state"].items():
        meta_state[fqn] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{fqn}.{key}"] = value.detach().cpu().contiguous()
                meta_state[fqn][key] = "__tensor__"
            else:
                meta_state[fqn][key] = value
    return tensors, {"state": meta_state, "param_groups": osd["param_groups"]}


def _unflatten_optim(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for fqn, entry in meta["state"].items():
        state[fqn] = {k: tensors[f"state.{fqn}.{k}"] if v == "__tensor__" else v for k, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_full_state(
    path: str | os.PathLike, model: torch.nn.Module, optimizer=None, extra: dict | None = None
) -> None:
    """Write the full model state (`model.safetensors`), optimizer state (`optimizer.safetensors` + `optimizer.json`)
    and `extra` (JSON) to `path`. Collective under DDP/FSDP2 (every rank must call it); only rank 0 writes.

    Keys are fully qualified parameter names without wrapper prefixes, so the checkpoint loads into a plain,
    DDP or FSDP2 model with any number of processes (`load_full_state`)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _state_dict_options()
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, _inner(optimizer), options=opts) if optimizer is not None else None
    if rank() == 0:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in msd.items()}, str(path / "model.safetensors"))
        if osd is not None:
            tensors, meta = _flatten_optim(osd)
            save_file(tensors, str(path / "optimizer.safetensors"))
            (path / "optimizer.json").write_text(json.dumps(meta))
        (path / "extra.json").write_text(json.dumps(extra or {}))
    barrier()


def load_full_state(path: str | os.PathLike, model: torch.nn.Module, optimizer=None) -> dict:
    """Load a `save_full_state` checkpoint into `model` (plain, DDP or FSDP2) and `optimizer`; returns `extra`.
    Every rank reads the files (they are small next to the training run's data loading); collective."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    opts = _state_dict_options()
    set_model_state_dict(model, load_file(str(path / "model.safetensors")), options=opts)
    if optimizer is not None and (path / "optimizer.json").is_file():
        osd = _unflatten_optim(
            load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text())
        )
        set_optimizer_state_dict(model, _inner(optimizer), osd, options=opts)
    return json.loads((path / "extra.json").read_text())


def _inner(optimizer):
    """The torch optimizer inside accelerate's `AcceleratedOptimizer`."""
    return getattr(optimizer, "optimizer", optimizer)
