"""Count the collectives and host synchronisations of a block of code (one training step).

`StepCounter()` is a context manager; inside it

- every collective that reaches the c10d dispatcher (`c10d.allreduce_`, `c10d._allgather_base_`, the functional
  collectives of DTensor, ...: DDP's reducer and bucket broadcasts and FSDP2's all-gathers / reduce-scatters included,
  since both call the same ops) is recorded with its payload in bytes (all-reduce / broadcast: the tensor; all-gather:
  the gathered output; reduce-scatter: the input) and its origin;
- every host synchronisation is recorded with its origin (reads of a host copy made one step earlier, by the
  functions in `DEFERRED_READERS`, apart): what reads a device value on the host (`.item()`,
  `bool()` / `int()` / `float()` of a tensor, `.tolist()`, `.cpu()`, `.numpy()`), what needs a result size from the
  device (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, `repeat_interleave` without `output_size`,
  `bincount`, `torch.equal`) and explicit waits (`torch.cuda.synchronize`, `Event` / `Stream.synchronize`).

On the CPU nothing actually waits, but the same calls would wait for the GPU there: the counts are those of a GPU run
(except for tensors that stay on the host in a GPU run too, such as torch's AdamW step counters: see `ORIGINS`).

The origin of a record is the innermost frame of hf_plugins on the Python stack ("plugin": our code issued it, or
a function of the stack that our code called), else "stack" (DDP, FSDP2, transformers, torch.optim, accelerate).
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode


__all__ = ["ORIGINS", "StepCounter", "StepRecord"]

ORIGINS = ("plugin", "stack")
# Functions of ours whose host reads are of a copy made asynchronously one step earlier (pinned memory, an event
# recorded after that step's kernels): at the next step the GPU has long passed them, so nothing waits. Listed apart.
DEFERRED_READERS = ("_resolve_pending",)
_PKG = os.sep + "hf_plugins" + os.sep
_c10d = torch.ops.c10d
_fun = torch.ops._c10d_functional
_aten = torch.ops.aten

# op -> where its payload is: argument i (all-reduce / broadcast: the tensors; all-gather: the gathered output;
# reduce-scatter: the input), or "ret" (functional all-gathers return the gathered tensor)
_C10D = {
    "allreduce_": 0,
    "allreduce_coalesced_": 0,
    "broadcast_": 0,
    "reduce_": 0,
    "_allgather_base_": 0,
    "allgather_": 0,
    "allgather_coalesced_": 0,
    "allgather_into_tensor_coalesced_": 0,
    "_reduce_scatter_base_": 1,
    "reduce_scatter_": 1,
    "reduce_scatter_tensor_coalesced_": 1,
    "alltoall_": 1,
    "alltoall_base_": 1,
    "gather_": 1,
    "scatter_": 1,
    "barrier": 0,
}
_FUNCTIONAL = {
    "all_reduce": 0,
    "all_reduce_coalesced": 0,
    "all_gather_into_tensor": "ret",
    "all_gather_into_tensor_coalesced": "ret",
    "reduce_scatter_tensor": 0,
    "reduce_scatter_tensor_coalesced": 0,
    "all_to_all_single": 0,
    "broadcast": 0,
}
_COLLECTIVE_PACKETS = {
    getattr(ns, name): where
    for ns, table in ((_c10d, _C10D), (_fun, _FUNCTIONAL))
    for name, where in table.items()
    if hasattr(ns, name)
}
_SIZE_SYNCS = {
    _aten.nonzero,
    _aten.masked_select,
    _aten._unique,
    _aten._unique2,
    _aten.unique_dim,
    _aten.unique_consecutive,
    _aten.bincount,
    _aten.equal,
}
_BOOL_INDEX = {_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_}


@dataclass
class StepRecord:
    collectives: list[tuple[str, int, str, str]] = field(default_factory=list)  # (op, bytes, origin, where)
    syncs: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, origin, where)

    def summary(self) -> dict:
        """Counts and bytes, in total and of plugin origin; sync kinds per origin."""
        out = {"collectives": len(self.collectives), "bytes": sum(c[1] for c in self.collectives)}
        mine = [c for c in self.collectives if c[2] == "plugin"]
        out["plugin_collectives"], out["plugin_bytes"] = len(mine), sum(c[1] for c in mine)
        deferred = [
            s for s in self.syncs if s[1] == "plugin" and s[2].endswith(tuple(f"({f})" for f in DEFERRED_READERS))
        ]
        syncs = [s for s in self.syncs if s not in deferred]
        out["syncs"] = len(syncs)
        out["plugin_syncs"] = sum(o == "plugin" for _, o, _ in syncs)
        out["deferred_reads"] = len(deferred)
        out["ops"] = dict(Counter(c[0] for c in self.collectives))
        out["plugin_collective_sites"] = sorted({c[3] for c in mine})
        out["plugin_sync_sites"] = sorted({w for _, o, w in syncs if o == "plugin"})
        return out


# Frames of torch that issue collectives or syncs on their own account (the optimizers, DDP, FSDP2): a record whose
# innermost non-torch-internal frame is one of these, or transformers / peft / accelerate / the harness, is "stack".
_STACK_TORCH = tuple(
    os.sep.join(("torch", *p.split("/"))) + os.sep
    for p in ("optim", "nn/parallel", "distributed/fsdp", "distributed/_composable", "distributed/algorithms")
)
_STDLIB = os.path.dirname(os.__file__) + os.sep


def _origin() -> tuple[str, str]:
    """("plugin", "path:line") when the innermost frame that is not torch's machinery (dispatch, autograd, c10d,
    DTensor) nor the standard library is hf_plugins code, else ("stack", "file:line")."""
    for f in reversed(traceback.extract_stack()):
        name = f.filename
        if _PKG in name:
            return "plugin", f"{name.split(_PKG, 1)[1]}:{f.lineno} ({f.name})"
        if "_comm_count" in name or (name.startswith(_STDLIB) and "site-packages" not in name):
            continue
        if os.sep + "torch" + os.sep in name and not any(p in name for p in _STACK_TORCH):
            continue
        return "stack", f"{os.path.basename(name)}:{f.lineno}"
    return "stack", "torch"


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(y) for y in x)
    return 0


def _has_bool_index(indices) -> bool:
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (indices or []) if i is not None
    )


class _Mode(TorchDispatchMode):
    def __init__(self, record: StepRecord):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        if any(t.__name__ == "DTensor" for t in types):
            return NotImplemented  # let DTensor desugar into local ops and collectives first; they come back here
        packet = func.overloadpacket
        where = _COLLECTIVE_PACKETS.get(packet)
        out = func(*args, **kwargs)
        if where is not None:
            payload = _nbytes(out) if where == "ret" else _nbytes(args[where]) if len(args) > where else 0
            self.record.collectives.append((packet.__name__, payload, *_origin()))
        elif packet is _aten._local_scalar_dense:
            self._sync("item")
        elif packet in _SIZE_SYNCS:
            self._sync(packet.__name__)
        elif packet is _aten.repeat_interleave and kwargs.get("output_size") is None and len(args) < 3:
            if isinstance(args[0], torch.Tensor) and not isinstance(args[1] if len(args) > 1 else None, int):
                self._sync("repeat_interleave")
        elif packet in _BOOL_INDEX and _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices")):
            self._sync("boolean index")
        return out

    def _sync(self, kind: str) -> None:
        origin, where = _origin()
        self.record.syncs.append((kind, origin, where))


_PATCHED = (
    (torch.Tensor, "tolist"),
    (torch.Tensor, "cpu"),
    (torch.Tensor, "numpy"),
    (torch.cuda, "synchronize"),
    (torch.cuda.Event, "synchronize"),
    (torch.cuda.Stream, "synchronize"),
)


class StepCounter:
    """`with StepCounter() as rec:` ... `rec` (a `StepRecord`) holds what ran inside. Not reentrant."""

    def __enter__(self) -> StepRecord:
        self.record = StepRecord()
        self._saved = []
        for owner, name in _PATCHED:
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._wrap(name, original))
        self._mode = _Mode(self.record)
        self._mode.__enter__()
        return self.record

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        return False

    def _wrap(self, name: str, original):
        record = self.record

        def wrapper(*args, **kwargs):
            origin, where = _origin()
            record.syncs.append((name, origin, where))
            return original(*args, **kwargs)

        return wrapper
