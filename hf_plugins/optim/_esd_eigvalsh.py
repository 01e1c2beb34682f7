"""The eigenvalue backends of the ESD analysis (`esd.py`): batched `eigvalsh` on the device, optionally over several
CUDA streams, and LAPACK on a pool of CPU threads, alone or sharing one queue with GPU workers ("hybrid")."""

from __future__ import annotations

import contextlib
import os

import torch


__all__ = ["default_cpu_threads", "eigvalsh_chunks", "eigvalsh_host_pool", "resolve_backend"]


def eigvalsh_chunks(grams: list[torch.Tensor], num_streams: int) -> list[torch.Tensor]:
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


def eigvalsh_host_pool(chunks, cpu_threads: int, use_device: bool = False, device_workers: int = 1):
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
