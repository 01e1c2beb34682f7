"""Batched empirical spectral density (ESD) analysis of weight matrices: eigenvalues of each matrix's smaller Gram
matrix and the power-law exponent alpha of their tail (Hill estimator, xmin at the median eigenvalue).

This is the measurement AlphaDecay (arXiv 2506.14562) refreshes every few hundred steps, and a light
WeightWatcher-like tool on its own (`hf-plugins esd MODEL`). Matrices of equal shape go through one batched Gram
matmul on the device they live on, in fp32 with TF32 disabled; the eigenvalues come either from LAPACK in a pool of
CPU threads (default with >= 4 cores: cuSOLVER decomposes the k > 32 Grams one at a time) or from a batched
`eigvalsh` on the device (`backend="cuda"`).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import defaultdict

import torch
from torch import nn

from ._esd_eigvalsh import default_cpu_threads, eigvalsh_chunks, eigvalsh_host_pool, resolve_backend
from .param_groups import strip_wrapper_prefixes


__all__ = [
    "PreparedGrams",
    "alphas_from_eigenvalues",
    "default_cpu_threads",
    "eligible_linears",
    "esd_alphas",
    "gram_eigenvalues",
    "hill_alpha",
    "model_esd",
    "prepare_grams",
    "resolve_backend",
]

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


@contextlib.contextmanager
def _full_fp32_matmul():
    # TF32 (10-bit mantissa) would make the Gram matrices, hence the small eigenvalues, ~1e-3 relative off.
    old_cuda = torch.backends.cuda.matmul.allow_tf32
    old_prec = torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_cuda
        torch.set_float32_matmul_precision(old_prec)


class PreparedGrams:
    """Phase 1 of an ESD (`prepare_grams`): the Grams of the weights, computed on the weights' devices (enqueued on
    CUDA, no synchronisation) and, for the host backends, queued for copy to pinned memory. Phase 2
    (`PreparedGrams.eigenvalues`) decomposes them; it reads only the Grams, never the weights, so it may run on
    another thread while the weights change."""

    def __init__(self, n: int, backend: str, threads: int, max_batch_bytes: int):
        self.n, self.backend, self.threads, self.max_batch_bytes = n, backend, threads, max_batch_bytes
        self.host_side = backend in ("cpu_threads", "hybrid")
        # host backends: (host copy, its copy event, device Gram for hybrid), its weight indices, its finite flags
        self.host_chunks: list[tuple[torch.Tensor, object, torch.Tensor | None]] = []
        self.host_order: list[list[int]] = []
        self.host_finite: list[torch.Tensor] = []
        # device backend: (k, device) -> [(index, gram, finite flag)]
        self.by_size: dict[tuple, list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def eigenvalues(self, num_streams: int = 1) -> list[torch.Tensor]:
        """Phase 2: ascending eigenvalues per weight (on the host for the host backends, on the weights' devices for
        `cuda`); NaN for a weight with a non-finite entry."""
        out: list[torch.Tensor | None] = [None] * self.n
        if self.host_side:
            # hybrid: `num_streams` threads drive the GPU (one stream each; their synchronisations spin), the others
            # run LAPACK
            n_dev = max(1, num_streams) if self.backend == "hybrid" else 0
            workers = max(1, self.threads - n_dev)
            results = eigvalsh_host_pool(self.host_chunks, workers, n_dev > 0, n_dev)
            for (_, event, _), idx, finite, eigs in zip(self.host_chunks, self.host_order, self.host_finite, results):
                if event is not None:
                    event.synchronize()  # the finite flags travelled with the chunk's copy
                eigs = torch.where(finite[:, None], eigs, math.nan)
                for j, i in enumerate(idx):
                    out[i] = eigs[j]
            return out
        order: list[list[int]] = []
        batches: list[torch.Tensor] = []
        flags: list[torch.Tensor] = []
        for (k, _), items in self.by_size.items():
            per = max(1, self.max_batch_bytes // max(4 * k * k, 1))
            if num_streams > 1:  # at least one chunk per stream
                per = min(per, max(1, -(-len(items) // num_streams)))
            for start in range(0, len(items), per):
                chunk = items[start : start + per]
                order.append([i for i, _, _ in chunk])
                batches.append(torch.stack([g for _, g, _ in chunk]))
                flags.append(torch.stack([f for _, _, f in chunk]))
        for idx, finite, eigs in zip(order, flags, eigvalsh_chunks(batches, num_streams)):
            eigs = torch.where(finite[:, None], eigs, math.nan)
            for j, i in enumerate(idx):
                out[i] = eigs[j]
        return out


@torch.no_grad()
def prepare_grams(
    weights: list[torch.Tensor], max_batch_bytes: int = 2**31, backend: str = "auto", cpu_threads: int | None = None
) -> PreparedGrams:
    """Phase 1 of `gram_eigenvalues` (see there): the batched Grams, in fp32 with TF32 off. A Gram with a non-finite
    entry is zeroed (LAPACK and cuSOLVER fail or hang on NaN) and flagged: its eigenvalues come back NaN."""
    for i, w in enumerate(weights):
        if w.dim() != 2:
            raise ValueError(f"gram_eigenvalues expects 2-D weights, got shape {tuple(w.shape)} at index {i}.")
    threads = cpu_threads or default_cpu_threads()
    on_cuda = any(w.device.type == "cuda" for w in weights)
    prepared = PreparedGrams(
        len(weights), resolve_backend(backend, threads, "cuda" if on_cuda else "cpu"), threads, max_batch_bytes
    )
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(weights):
        by_shape[(tuple(w.shape), w.device)].append(i)
    with _full_fp32_matmul():
        for (shape, device), idx in by_shape.items():
            m, n = shape
            per = max(1, max_batch_bytes // max(4 * m * n, 1))
            for start in range(0, len(idx), per):
                chunk = idx[start : start + per]
                w = torch.stack([weights[i].detach().float() for i in chunk])
                gram = w.mT @ w if m >= n else w @ w.mT
                del w
                finite = gram.flatten(1).isfinite().all(1)
                gram.masked_fill_(~finite[:, None, None], 0.0)
                if prepared.host_side:
                    # One transfer per chunk, queued right after its matmul; LAPACK threads wait on its event.
                    if gram.device.type == "cuda":
                        host = torch.empty(gram.shape, dtype=gram.dtype, pin_memory=True)
                        host.copy_(gram, non_blocking=True)
                        host_finite = torch.empty(finite.shape, dtype=finite.dtype, pin_memory=True)
                        host_finite.copy_(finite, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record()
                    else:
                        host, host_finite, event = gram, finite, None
                    prepared.host_chunks.append((host, event, gram if prepared.backend == "hybrid" else None))
                    prepared.host_order.append(chunk)
                    prepared.host_finite.append(host_finite)
                else:
                    prepared.by_size[(min(m, n), device)].extend(zip(chunk, gram.unbind(0), finite.unbind(0)))
    return prepared


def _gram_eigenvalues(weights, max_batch_bytes, num_streams, backend, cpu_threads):
    """(eigenvalues per weight, on the host for `cpu_threads` and on the weights' devices for `cuda`)."""
    return prepare_grams(weights, max_batch_bytes, backend, cpu_threads).eigenvalues(num_streams)


@torch.no_grad()
def gram_eigenvalues(
    weights: list[torch.Tensor],
    max_batch_bytes: int = 2**31,
    num_streams: int = 1,
    backend: str = "auto",
    cpu_threads: int | None = None,
) -> list[torch.Tensor]:
    """Ascending eigenvalues (fp32, on each matrix's device) of the smaller Gram matrix of each 2-D tensor,
    i.e. the squared singular values, min(m, n) of them.

    The smaller Gram is required: the larger one adds max - min exact zeros, which moves the median (the Hill
    estimator's xmin) to ~0. Equal shapes on one device are stacked into one batched Gram matmul (fp32, TF32 off)
    on the weights' device, in chunks of at most `max_batch_bytes` of fp32 input. Then, by `backend`:

    - `"cuda"`: Grams of equal size go through one batched `eigvalsh` on the weights' device (cuSOLVER decomposes
      them one by one for k > 32; on CPU weights a per-matrix loop). `num_streams > 1` runs the chunks
      concurrently on CUDA side streams.
    - `"cpu_threads"`: each chunk of Grams is copied to pinned host memory right after its matmul (one transfer
      per chunk) and LAPACK `eigvalsh` runs per matrix in a pool of `cpu_threads` threads (default: the usable
      cores, at most 16), one core each, overlapping with the GPU's remaining Grams.
    - `"hybrid"` (CUDA weights; `cpu_threads` otherwise): as `cpu_threads` with `cpu_threads - num_streams` LAPACK
      threads, and `num_streams` threads (the calling one first, one CUDA stream each) decompose matrices from the
      same queue on the GPU, so the faster side takes more. The queue hands out the largest Grams first and keeps a
      LAPACK thread from starting a matrix the GPU would finish sooner (per-size durations measured on the fly).
    - `"auto"` (default): with at least 4 CPU threads `hybrid` on CUDA and `cpu_threads` on CPU, else `cuda`."""
    eigs = _gram_eigenvalues(weights, max_batch_bytes, num_streams, backend, cpu_threads)
    # Back to each weight's device, one transfer per device.
    by_dev: dict[torch.device, list[int]] = defaultdict(list)
    for i, (w, e) in enumerate(zip(weights, eigs)):
        if e.device != w.device:
            by_dev[w.device].append(i)
    for device, idx in by_dev.items():
        flat = torch.cat([eigs[i] for i in idx]).to(device)
        for i, part in zip(idx, flat.split([eigs[i].numel() for i in idx])):
            eigs[i] = part
    return eigs


def hill_alpha(eigs: torch.Tensor, xmin_pos: float = 2.0) -> torch.Tensor:
    """Power-law exponent of the tail of ascending eigenvalues `eigs` (`[..., N]`): the continuous MLE
    alpha = 1 + n / sum_{j >= i} ln(lambda_j / lambda_i) with i = int(N / xmin_pos), n = N - i ("PL_Alpha_Hill" of
    the AlphaDecay / TempBalance code; `xmin_pos=2` puts xmin at the median). NaN where lambda_i <= 0."""
    N = eigs.shape[-1]
    i = int(N / xmin_pos)
    if not 0 <= i < N:
        raise ValueError(f"`xmin_pos` must be > 1 so that the tail is non-empty, got {xmin_pos} for N={N}.")
    n = N - i
    lam = eigs.double()
    xmin = lam[..., i]
    safe = xmin.clamp_min(torch.finfo(torch.float64).tiny)
    log_sum = torch.log(lam[..., i:].clamp_min(torch.finfo(torch.float64).tiny) / safe.unsqueeze(-1)).sum(-1)
    alpha = 1.0 + n / log_sum
    return torch.where(xmin > 0, alpha, torch.full_like(alpha, math.nan))


def esd_alphas(
    weights: list[torch.Tensor],
    xmin_pos: float = 2.0,
    max_batch_bytes: int = 2**31,
    num_streams: int = 1,
    backend: str = "auto",
    cpu_threads: int | None = None,
) -> list[float]:
    """Hill alpha of each 2-D weight (Python floats; one host synchronisation per eigenvalue-count bucket with the
    `cuda` backend, none beyond the transfers with `cpu_threads`); NaN for a weight with a non-finite entry. See
    `gram_eigenvalues` for the backends."""
    with torch.no_grad():
        eigs = _gram_eigenvalues(weights, max_batch_bytes, num_streams, backend, cpu_threads)
    return alphas_from_eigenvalues(eigs, xmin_pos)


def alphas_from_eigenvalues(eigs: list[torch.Tensor], xmin_pos: float = 2.0) -> list[float]:
    """`hill_alpha` of each eigenvalue vector, batched by length and device, as Python floats."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(eigs):
        by_shape[(e.shape[-1], e.device)].append(i)
    alphas = [math.nan] * len(eigs)
    for idx in by_shape.values():
        values = hill_alpha(torch.stack([eigs[i] for i in idx]), xmin_pos).cpu().tolist()
        for i, a in zip(idx, values):
            alphas[i] = float(a)
    return alphas


def eligible_linears(
    model: nn.Module,
    min_eigs: int = 50,
    remove_first: bool = True,
    remove_last: bool = True,
    trainable_only: bool = True,
) -> list[tuple[str, torch.Tensor]]:
    """`(name, weight)` of the matrices AlphaDecay analyses: every `nn.Linear` in `named_modules()` order (its
    weight trainable if `trainable_only`), without the first and the last one (official `remove_first_layer` /
    `remove_last_layer`; for an HF Llama `layers.0.self_attn.q_proj` and `lm_head`) and without matrices with
    fewer than `min_eigs` eigenvalues (official `eigs_thresh=50`). Shared weights are listed once."""
    linears = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        if (trainable_only and not w.requires_grad) or id(w) in seen:
            continue
        seen.add(id(w))
        linears.append((strip_wrapper_prefixes(name), w))
    if remove_first:
        linears = linears[1:]
    if remove_last:
        linears = linears[:-1]
    return [(n, w) for n, w in linears if min(w.shape) >= min_eigs]


def _module_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _layer_index(name: str) -> int | None:
    m = _LAYER_RE.search("." + name + ".")
    return int(m.group(1)) if m else None


@torch.no_grad()
def model_esd(model: nn.Module, min_eigs: int = 50, xmin_pos: float = 2.0) -> list[dict]:
    """One row per `nn.Linear` weight with at least `min_eigs` eigenvalues (all of them, first and last included):
    `name`, `module_type` (last name part), `layer` (decoder index or None), `shape`, `n_eigs`, `alpha`,
    `lambda_max`, `xmin` (the median eigenvalue) and `alphadecay` (whether AlphaDecay's defaults analyse it)."""
    rows = eligible_linears(model, min_eigs=min_eigs, remove_first=False, remove_last=False, trainable_only=False)
    analysed = {
        n
        for n, _ in eligible_linears(
            model, min_eigs=min_eigs, remove_first=True, remove_last=True, trainable_only=False
        )
    }
    weights = [w for _, w in rows]
    eigs = gram_eigenvalues(weights)
    out = []
    for (name, w), e in zip(rows, eigs):
        N = e.shape[-1]
        out.append(
            {
                "name": name,
                "module_type": _module_type(name),
                "layer": _layer_index(name),
                "shape": list(w.shape),
                "n_eigs": N,
                "alpha": float(hill_alpha(e, xmin_pos)),
                "lambda_max": float(e[-1]),
                "xmin": float(e[int(N / xmin_pos)]),
                "alphadecay": name in analysed,
            }
        )
    return out
