"""AlphaDecay's spectral refresh overlapped with training: the ESD of the refresh due at update k starts right after
update k - 1 and is collected at update k, so the forward and backward pass of step k hide its latency.

Update k - 1 leaves exactly the weights the synchronous refresh reads at the start of update k (nothing between two
`step()` calls changes them: forward, backward, `zero_grad` and LR schedulers do not), so the alphas, hence the decays
and every later update, are those of the synchronous refresh. Phase 1 (`prepare_grams`: the batched Gram matmuls and
their copies to pinned memory) is enqueued by the calling thread on a side CUDA stream that waits for the update; the
TF32 switch it needs is flipped and restored there, so training kernels launched later never see it. Phase 2 (LAPACK /
cuSOLVER `eigvalsh` and the Hill fit) runs on a worker thread with that side stream current; it reads only the Grams.
Before update k writes the weights, the training stream waits for the side stream's Gram matmuls.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from .esd import alphas_from_eigenvalues, default_cpu_threads, prepare_grams, resolve_backend


__all__ = ["BackgroundRefresh", "can_overlap"]


def can_overlap(weights: list[torch.Tensor]) -> bool:
    """The weights live on one device (the side stream and the worker serve one device)."""
    return bool(weights) and len({w.device for w in weights}) == 1


class BackgroundRefresh:
    """The alphas of `weights` for the refresh due at update `target`, computed on a worker thread."""

    def __init__(self, weights: list[torch.Tensor], xmin_pos: float, num_streams: int, target: int):
        self.target = target
        self._xmin_pos, self._num_streams = xmin_pos, num_streams
        self._result: list[float] | None = None
        self._error: BaseException | None = None
        self._side = self._done = None
        device = weights[0].device
        # The synchronous refresh's backend, with one LAPACK thread fewer: a core stays free for the training thread
        # (LAPACK decomposes each matrix on one thread either way, so the eigenvalues are the same).
        threads = default_cpu_threads()
        kw = {"backend": resolve_backend("auto", threads, device.type), "cpu_threads": max(1, threads - 1)}
        if device.type == "cuda":
            current = torch.cuda.current_stream(device)
            self._side = torch.cuda.Stream(device)
            self._side.wait_stream(current)  # the Grams read the weights as the last update left them
            for w in weights:
                w.record_stream(self._side)  # e.g. gathered FSDP2 matrices freed by the caller meanwhile
            with torch.cuda.stream(self._side):
                self._prepared = prepare_grams(weights, **kw)
            self._done = torch.cuda.Event()
            self._done.record(self._side)
            self._device = device
        else:
            self._prepared = prepare_grams(weights, **kw)
        self._thread = threading.Thread(target=self._run, name="alphadecay-esd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            ctx = torch.cuda.stream(self._side) if self._side is not None else contextlib.nullcontext()
            with torch.no_grad(), ctx:
                eigs = self._prepared.eigenvalues(self._num_streams)
                self._result = alphas_from_eigenvalues(eigs, self._xmin_pos)
        except BaseException as exc:  # re-raised in the training thread by `result()`
            self._error = exc
        finally:
            self._prepared = None

    def result(self) -> list[float]:
        """The alphas (waits for the worker if it is still running); afterwards the current stream may write the
        weights again. Re-raises an error of the worker."""
        self._thread.join()
        if self._done is not None:
            torch.cuda.current_stream(self._device).wait_event(self._done)
        if self._error is not None:
            raise self._error
        return list(self._result)
