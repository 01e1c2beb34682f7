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
import os
import re
from collections import defaultdict

import torch
from torch import nn

from .param_groups import strip_wrapper_prefixes


__all__ = ["default_cpu_threads", "eligible_linears", "esd_alphas", "gram_eigenvalues", "hill_alpha", "model_esd"]

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


def _eigvalsh_chunks(grams: list[torch.Tensor], num_streams: int) -> list[torch.Tensor]:
    """`eigvalsh` of each batched Gram chunk; on CUDA with `num_streams > 1` the chunks run concurrently on side
    streams from a thread pool (cuSOLVER's per-matrix syevd is latency-bound at these sizes)."""
    if grams and grams[0].device.type == "cpu":
        # LAPACK decomposes one matrix at a time anyway, and torch's batched CPU call parallelises over the batch
        # on top of a multithreaded LAPACK: oversubscribed, it was 50x slower than this loop on a busy 2-core box.
        return [torch.stack([torch.linalg.eigvalsh(x) for x in g]) for g in grams]
    if num_streams <= 1 or not grams or grams[0].device.type != "cuda":
        return [torch.linalg.eigvalsh(g) for g in grams]
    from concurrent.futures import ThreadPoolExecutor

    device = grams[0].device
    current = torch.cuda.current_stream(device)
    streams = [torch.cuda.Stream(device) for _ in range(min(num_streams, len(grams)))]
    for s in streams:
        s.wait_stream(current)

    def work(k: int) -> torch.Tensor:
        stream = streams[k % len(streams)]
        with torch.cuda.device(device), torch.cuda.stream(stream):
            grams[k].record_stream(stream)
            return torch.linalg.eigvalsh(grams[k])

    with ThreadPoolExecutor(len(streams)) as pool:
        out = list(pool.map(work, range(len(grams))))
    for s in streams:
        current.wait_stream(s)
    for e in out:
        e.record_stream(current)
    return out


_BACKENDS = ("auto", "cuda", "cpu_threads", "hybrid")


def default_cpu_threads() -> int:
    """CPU threads of the `cpu_threads` backend: the cores this process may use, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def resolve_backend(backend: str, cpu_threads: int | None = None, device_type: str = "cuda") -> str:
    """`auto` -> with at least 4 CPU threads: `hybrid` for CUDA weights (LAPACK on one core per matrix plus the GPU,
    both pulling matrices from one queue; cuSOLVER alone decomposes these Grams one at a time), `cpu_threads` for
    CPU weights; with fewer threads `cuda` (eigvalsh on the weights' device)."""
    if backend not in _BACKENDS:
        raise ValueError(f"`backend` must be one of {_BACKENDS}, got {backend!r}.")
    if backend == "hybrid" and device_type != "cuda":
        return "cpu_threads"
    if backend != "auto":
        return backend
    if (cpu_threads or default_cpu_threads()) < 4:
        return "cuda"
    return "hybrid" if device_type == "cuda" else "cpu_threads"


@contextlib.contextmanager
def _single_threaded_torch():
    # One LAPACK call per pool thread: intra-op / MKL threads on top would oversubscribe the cores.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Queue:
    """The matrices of a refresh, largest Gram first (longest-processing-time order, so the small ones fill the end),
    shared by the LAPACK threads and the device workers. With both sides present, a LAPACK thread does not start a
    matrix that the device workers would finish, together with everything still queued, before that thread could:
    the refresh would otherwise end with the GPU idle behind one CPU core's last matrix. Durations are measured per
    Gram size as the refresh goes; until both sides have timed a size, the CPU takes it (plain shared queue)."""

    def __init__(self, sizes: list[int], device_workers: int):
        import threading

        self.order = sorted(range(len(sizes)), key=lambda k: -sizes[k])  # stable: equal sizes in chunk order
        self.sizes = sizes
        self.pos = 0
        self.left: dict[int, int] = {}
        for s in sizes:
            self.left[s] = self.left.get(s, 0) + 1
        self.device_workers = device_workers
        self.seconds: dict[str, dict[int, float]] = {"cpu": {}, "device": {}}
        self.lock = threading.Lock()

    def _device_would_finish_first(self, size: int) -> bool:
        cpu, dev = self.seconds["cpu"].get(size), self.seconds["device"]
        if not self.device_workers or cpu is None or any(s not in dev for s, n in self.left.items() if n):
            return False
        return sum(dev[s] * n for s, n in self.left.items()) / self.device_workers < cpu

    def take(self, side: str) -> int | None:
        with self.lock:
            if self.pos >= len(self.order):
                return None
            k = self.order[self.pos]
            if side == "cpu" and self._device_would_finish_first(self.sizes[k]):
                return None
            self.pos += 1
            self.left[self.sizes[k]] -= 1
            return k

    def timed(self, side: str, k: int, seconds: float) -> None:
        self.seconds[side][self.sizes[k]] = seconds


def _eigvalsh_host_pool(chunks, cpu_threads: int, use_device: bool = False, device_workers: int = 1):
    """`chunks`: list of (host fp32 [b, k, k] tensor, CUDA event or None, device tensor or None). Per-matrix
    `torch.linalg.eigvalsh` on the host in a pool of `cpu_threads` threads (torch releases the GIL in LAPACK), each
    task waiting only for its own chunk's device-to-host copy, so LAPACK starts on the first chunk while the GPU still
    computes later Grams. With `use_device`, `device_workers` threads (the calling one and more, each on its own CUDA
    stream) take matrices from the same queue (`_Queue`) and decompose them on the GPU from the device copy."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    items = [(c, j) for c, (host, _, _) in enumerate(chunks) for j in range(host.shape[0])]
    results: list[torch.Tensor | None] = [None] * len(items)
    n_dev = max(1, device_workers) if use_device else 0
    queue = _Queue([chunks[c][0].shape[-1] for c, _ in items], n_dev)

    def cpu_worker():
        torch.set_num_threads(1)  # this worker thread's OpenMP setting
        while (k := queue.take("cpu")) is not None:
            c, j = items[k]
            host, event, _ = chunks[c]
            if event is not None:
                event.synchronize()
            t0 = time.perf_counter()
            results[k] = torch.linalg.eigvalsh(host[j])
            queue.timed("cpu", k, time.perf_counter() - t0)

    def device_worker(stream):
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with ctx:
            while (k := queue.take("device")) is not None:
                c, j = items[k]
                t0 = time.perf_counter()
                results[k] = torch.linalg.eigvalsh(chunks[c][2][j]).cpu()
                queue.timed("device", k, time.perf_counter() - t0)

    streams: list = [None] * n_dev
    dev_tensor = next((d for _, _, d in chunks if d is not None), None)
    if n_dev > 1 and dev_tensor is not None and dev_tensor.device.type == "cuda":
        current = torch.cuda.current_stream(dev_tensor.device)
        streams = [current] + [torch.cuda.Stream(dev_tensor.device) for _ in range(n_dev - 1)]
        for s in streams[1:]:
            s.wait_stream(current)  # the Grams were written on the current stream
    with _single_threaded_torch(), ThreadPoolExecutor(max(1, cpu_threads) + max(0, n_dev - 1)) as pool:
        futures = [pool.submit(cpu_worker) for _ in range(max(1, cpu_threads))]
        futures += [pool.submit(device_worker, s) for s in streams[1:]]
        if n_dev:
            device_worker(streams[0])
        for fut in futures:
            fut.result()
    out, pos = [], 0
    for host, _, _ in chunks:
        out.append(torch.stack(results[pos : pos + host.shape[0]]))
        pos += host.shape[0]
    return out


def _gram_eigenvalues(weights, max_batch_bytes, num_streams, backend, cpu_threads):
    """(eigenvalues per weight, on the host for `cpu_threads` and on the weights' devices for `cuda`)."""
    for i, w in enumerate(weights):
        if w.dim() != 2:
            raise ValueError(f"gram_eigenvalues expects 2-D weights, got shape {tuple(w.shape)} at index {i}.")
    threads = cpu_threads or default_cpu_threads()
    on_cuda = any(w.device.type == "cuda" for w in weights)
    backend = resolve_backend(backend, threads, "cuda" if on_cuda else "cpu")
    host_side = backend in ("cpu_threads", "hybrid")
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(weights):
        by_shape[(tuple(w.shape), w.device)].append(i)
    by_size: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)  # (k, device) -> [(index, gram)]
    host_chunks: list[tuple[torch.Tensor, object, torch.Tensor | None]] = []
    host_order: list[list[int]] = []
    with _full_fp32_matmul():
        for (shape, device), idx in by_shape.items():
            m, n = shape
            per = max(1, max_batch_bytes // max(4 * m * n, 1))
            for start in range(0, len(idx), per):
                chunk = idx[start : start + per]
                w = torch.stack([weights[i].detach().float() for i in chunk])
                gram = w.mT @ w if m >= n else w @ w.mT
                del w
                if host_side:
                    # One transfer per chunk, queued right after its matmul; LAPACK threads wait on its event.
                    if gram.device.type == "cuda":
                        host = torch.empty(gram.shape, dtype=gram.dtype, pin_memory=True)
                        host.copy_(gram, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record()
                    else:
                        host, event = gram, None
                    host_chunks.append((host, event, gram if backend == "hybrid" else None))
                    host_order.append(chunk)
                else:
                    by_size[(min(m, n), device)].extend(zip(chunk, gram.unbind(0)))
    out: list[torch.Tensor | None] = [None] * len(weights)
    if host_side:
        # hybrid: `num_streams` threads drive the GPU (one stream each; their synchronisations spin), the rest LAPACK
        n_dev = max(1, num_streams) if backend == "hybrid" else 0
        workers = max(1, threads - n_dev)
        for idx, eigs in zip(host_order, _eigvalsh_host_pool(host_chunks, workers, n_dev > 0, n_dev)):
            for j, i in enumerate(idx):
                out[i] = eigs[j]
        return out
    order: list[list[int]] = []
    batches: list[torch.Tensor] = []
    for (k, _), items in by_size.items():
        per = max(1, max_batch_bytes // max(4 * k * k, 1))
        if num_streams > 1:  # at least one chunk per stream
            per = min(per, max(1, -(-len(items) // num_streams)))
        for start in range(0, len(items), per):
            chunk = items[start : start + per]
            order.append([i for i, _ in chunk])
            batches.append(torch.stack([g for _, g in chunk]))
    for idx, eigs in zip(order, _eigvalsh_chunks(batches, num_streams)):
        for j, i in enumerate(idx):
            out[i] = eigs[j]
    return out


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
    `cuda` backend, none beyond the transfers with `cpu_threads`). See `gram_eigenvalues` for the backends."""
    with torch.no_grad():
        eigs = _gram_eigenvalues(weights, max_batch_bytes, num_streams, backend, cpu_threads)
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(eigs):
        by_shape[(e.shape[-1], e.device)].append(i)
    alphas = [math.nan] * len(weights)
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
