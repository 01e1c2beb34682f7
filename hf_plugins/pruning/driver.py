"""Layer-by-layer one-shot pruning of a causal LM: `prune_model(model, "wanda", 0.5, calibration=ids)`.

Both reference codes prune sequentially (Wanda `lib/prune.py::prune_wanda`, SparseGPT `llama.py`): the
calibration windows are run up to the first decoder block; then for every block, hooks on its linear layers
collect input statistics while the block runs on the current hidden states, the block's linears are pruned,
and the block is run again so that the next block is calibrated on the outputs of the already-pruned ones.
All linears of a block are calibrated in one pass (the references' default; SparseGPT's `--true-sequential`
variant, which re-runs the block between sub-groups, is not implemented). Embeddings and `lm_head` are not
pruned, as in both references.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from numbers import Real

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .magnitude import prune_magnitude_
from .masks import check_n_m, parse_n_m
from .sparsegpt import SparseGPTStats, prune_sparsegpt_
from .wanda import WandaStats, prune_wanda_


__all__ = ["METHODS", "PruningReport", "decoder_layers", "prunable_linears", "prune_model", "sparsity_report"]

METHODS = ("wanda", "sparsegpt", "magnitude")


@dataclass
class PruningReport:
    """Per-matrix sparsity after pruning. `matrices`: dicts with name, shape, zeros, numel, sparsity, n_m_ok."""

    method: str
    target_sparsity: float
    n_m: tuple[int, int] | None
    seconds: float = 0.0
    calibration_tokens: int = 0
    matrices: list[dict] = field(default_factory=list)

    @property
    def overall(self) -> float:
        numel = sum(m["numel"] for m in self.matrices)
        return sum(m["zeros"] for m in self.matrices) / max(numel, 1)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["overall_sparsity"] = self.overall
        return out

    def format_table(self) -> str:
        lines = [f"{'matrix':<48} {'shape':>14} {'sparsity':>9}" + ("  N:M ok" if self.n_m else "")]
        for m in self.matrices:
            shape = "x".join(str(s) for s in m["shape"])
            ok = f"  {m['n_m_ok']}" if self.n_m else ""
            lines.append(f"{m['name']:<48} {shape:>14} {m['sparsity']:>9.4f}{ok}")
        lines.append(
            f"overall sparsity of the pruned matrices: {self.overall:.4f} ({self.method}, {self.seconds:.1f} s)"
        )
        return "\n".join(lines)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (`model.model.layers` for Llama/Qwen2/Mistral and our models)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__}: expected `model.get_decoder().layers` or an "
        "nn.ModuleList with config.num_hidden_layers entries"
    )


def prunable_linears(model: nn.Module, target_modules: list[str] | None = None) -> dict[str, nn.Linear]:
    """`{qualified name: nn.Linear}` of the decoder blocks (optionally only names ending in `target_modules`).

    Linears wrapped by a PEFT tuner layer (e.g. LoRA) are listed by the wrapper's name, with its base layer."""
    layers = decoder_layers(model)
    prefix = next(name for name, mod in model.named_modules() if mod is layers)
    out, adapter_layers = {}, []
    for name, mod in layers.named_modules():
        if any(name.startswith(a + ".") for a in adapter_layers):
            continue  # inside a PEFT layer: its adapter linears (lora_A, ...) are not base weights
        wanted = target_modules is None or any(name == t or name.endswith("." + t) for t in target_modules)
        if isinstance(mod, BaseTunerLayer):  # a PEFT-wrapped linear: prune its base layer
            adapter_layers.append(name)
            mod = mod.get_base_layer()
        if isinstance(mod, nn.Linear) and name and wanted:
            out[f"{prefix}.{name}"] = mod
    return out


def sparsity_report(
    model: nn.Module, n_m: str | tuple[int, int] | None = None, target_modules: list[str] | None = None
) -> PruningReport:
    """Measure the sparsity (and N:M conformance) of every prunable linear of `model`."""
    nm = parse_n_m(n_m)
    report = PruningReport(method="measured", target_sparsity=float("nan"), n_m=nm)
    for name, lin in prunable_linears(model, target_modules).items():
        w = lin.weight.detach()
        zeros = int((w == 0).sum())
        report.matrices.append(
            {
                "name": name,
                "shape": list(w.shape),
                "zeros": zeros,
                "numel": w.numel(),
                "sparsity": zeros / w.numel(),
                "n_m_ok": check_n_m(w, *nm) if nm else None,
            }
        )
    return report


def _calibration_batches(calibration, batch_size: int, device, vocab_size: int | None) -> list[torch.Tensor]:
    """The calibration token ids as (batch, seqlen) LongTensors, checked: integer ids of the model's vocabulary."""
    tensors = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    for t in tensors:
        if (
            not isinstance(t, torch.Tensor)
            or t.dtype.is_floating_point
            or t.dtype == torch.bool
            or t.dim() not in (1, 2)
        ):
            what = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"`calibration` must hold integer token ids, as a (num_windows, seqlen) tensor or a list of "
                f"(batch, seqlen) tensors (see hf_plugins.pruning.calibration_windows); got a {what}."
            )
        if t.numel() and (int(t.min()) < 0 or (vocab_size is not None and int(t.max()) >= vocab_size)):
            raise ValueError(
                f"`calibration` holds token id {int(t.max()) if int(t.min()) >= 0 else int(t.min())}, outside the "
                f"model's vocabulary of {vocab_size}: tokenize the calibration text with the model's own tokenizer."
            )
    if isinstance(calibration, torch.Tensor):
        rows = calibration if calibration.dim() == 2 else calibration.unsqueeze(0)
        batches = list(rows.split(batch_size))
    else:
        batches = [c if c.dim() == 2 else c.unsqueeze(0) for c in tensors]
    batches = [b for b in batches if b.numel()]
    if not batches:
        raise ValueError("`calibration` is empty: Wanda and SparseGPT need calibration token ids")
    return [b.to(device=device, dtype=torch.long) for b in batches]


def _check_fraction(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"`sparsity` must be a number in [0, 1), got {value!r} (for {where}).")
    return float(value)


class _Stop(Exception):
    pass


def _capture_first_block_inputs(model, layers, batches):
    captured = []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append([hidden, kwargs])
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _run_block(block, captured) -> None:
    for item in captured:
        out = block(item[0], **item[1])
        item[0] = out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def prune_model(
    model: nn.Module,
    method: str = "wanda",
    sparsity: float | dict[str, float] = 0.5,
    n_m: str | tuple[int, int] | None = None,
    calibration: torch.Tensor | list[torch.Tensor] | None = None,
    *,
    batch_size: int = 1,
    target_modules: list[str] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    per_row: bool = False,
) -> PruningReport:
    """Prune every linear of the decoder blocks of `model` in place and return the measured sparsity report.

    Args:
        method: "wanda" (default), "sparsegpt" or "magnitude".
        sparsity: fraction of each matrix to zero (unstructured), or `{matrix name: fraction}` (names as in
            `prunable_linears`); ignored when `n_m` is given.
        n_m: "2:4" / "4:8" (N zeros in every M consecutive input columns of every row).
        calibration: LongTensor (num_windows, seqlen) of token ids, or a list of (batch, seqlen) tensors.
            Required by Wanda and SparseGPT (see `hf_plugins.pruning.calibration_windows`).
        batch_size: windows per forward when `calibration` is one tensor.
        target_modules: prune only linears whose name ends in one of these (default: all of the blocks).
        blocksize, percdamp: SparseGPT's column block (128) and Hessian damping (0.01), as in its paper.
        per_row: magnitude pruning per output row instead of per matrix (the Wanda paper's baseline is per
            matrix).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    nm = parse_n_m(n_m)
    if per_row and (method != "magnitude" or nm is not None):
        raise ValueError(
            "`per_row` chooses magnitude pruning's comparison group (rows instead of the whole matrix); Wanda always "
            f"compares within rows, SparseGPT within column blocks, N:M within groups. Got method={method!r}, "
            f"n_m={n_m!r}: drop per_row."
        )
    for name, value, low in (("batch_size", batch_size, 1), ("blocksize", blocksize, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    if isinstance(percdamp, bool) or not isinstance(percdamp, Real) or not 0.0 <= percdamp < float("inf"):
        raise ValueError(f"`percdamp` must be a finite number >= 0 (SparseGPT's default: 0.01), got {percdamp!r}.")
    linears = prunable_linears(model, target_modules)
    if not linears:
        raise ValueError(f"no nn.Linear in the decoder blocks matches target_modules={target_modules}")
    if isinstance(sparsity, dict):
        missing = sorted(set(linears) - set(sparsity))
        if missing:
            raise ValueError(f"`sparsity` is a dict but has no entry for {missing}")
        unknown = sorted(set(sparsity) - set(linears))
        if unknown:
            raise ValueError(
                f"`sparsity` names matrices the model does not prune: {unknown}; use the names of "
                "hf_plugins.pruning.prunable_linears(model)."
            )
    if nm is not None:  # the pattern fixes the sparsity: `sparsity` is ignored
        sparsity_of = dict.fromkeys(linears, nm[0] / nm[1])
    elif isinstance(sparsity, dict):
        sparsity_of = {name: _check_fraction(sparsity[name], name) for name in linears}
    else:
        sparsity_of = dict.fromkeys(linears, _check_fraction(sparsity, "every matrix"))
    if nm is not None:
        bad = [f"{n} (in_features={m.in_features})" for n, m in linears.items() if m.in_features % nm[1]]
        if bad:
            raise ValueError(f"N:M pruning with M={nm[1]} needs in_features divisible by M; not the case for: {bad}")
    report_sparsity = sum(sparsity_of.values()) / len(sparsity_of)
    t0 = time.perf_counter()
    ids_of = {id(m): n for n, m in linears.items()}
    tokens = 0
    if method == "magnitude":
        for name, lin in linears.items():
            prune_magnitude_(lin, sparsity_of[name], nm, per_row)
    else:
        if calibration is None:
            raise ValueError(f"{method} needs `calibration` token ids (see hf_plugins.pruning.calibration_windows)")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        layers = decoder_layers(model)
        embeddings = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
        vocab = getattr(embeddings, "num_embeddings", None)
        batches = _calibration_batches(calibration, batch_size, device, vocab)
        captured = _capture_first_block_inputs(model, layers, batches)
        tokens = sum(item[0].shape[0] * item[0].shape[1] for item in captured)
        stats_cls = WandaStats if method == "wanda" else SparseGPTStats
        for block in layers:
            mine = {n: m for n, m in block.named_modules() if id(m) in ids_of}
            stats = {n: stats_cls(m.in_features, device=m.weight.device) for n, m in mine.items()}
            handles = [
                m.register_forward_hook(lambda mod, inp, out, s=stats[n]: s.add(inp[0])) for n, m in mine.items()
            ]
            try:
                _run_block(block, [[item[0], item[1]] for item in captured])
            finally:
                for h in handles:
                    h.remove()
            for n, m in mine.items():
                s = sparsity_of[ids_of[id(m)]]
                if method == "wanda":
                    prune_wanda_(m, stats[n], s, nm)
                else:
                    prune_sparsegpt_(m, stats[n], s, nm, blocksize, percdamp)
                stats[n] = None  # free the Hessian before the next matrix
            _run_block(block, captured)
        model.train(was_training)
    report = sparsity_report(model, nm, target_modules)
    report.method, report.target_sparsity = method, report_sparsity
    report.seconds, report.calibration_tokens = time.perf_counter() - t0, tokens
    return report
