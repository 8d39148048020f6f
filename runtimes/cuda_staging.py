"""Host<->GPU transfers for CUDA sessions (torch eager, CUDA graphs, TensorRT).

Inputs arrive as numpy arrays and logits leave as numpy arrays, so every CUDA session copies
host->device and device->host on each call. Page-locked (pinned) host buffers make those copies
asynchronous DMA on the session's own stream, and a session that reuses one buffer pair per
shape pays no allocation inside the timed loop.
"""
from __future__ import annotations

import numpy as np


def cuda_unavailable_reason(device: str) -> str | None:
    """Why torch cannot use CUDA device `device` ("cuda", "cuda:N"), or None."""
    try:
        import torch
    except Exception as exc:
        return f"torch cannot be imported ({type(exc).__name__}: {exc}); pip install 'edgeship'"
    if not torch.cuda.is_available():
        build = torch.version.cuda
        if build is None:
            return (f"no CUDA device: torch {torch.__version__} is a CPU-only build; install a "
                    f"CUDA build of torch on a machine with an NVIDIA GPU")
        return f"no CUDA device: torch (CUDA {build}) sees no NVIDIA GPU or driver"
    _, _, index = device.partition(":")
    if index:
        if not index.isdigit():
            return f"device {device!r} has a non-numeric index; use 'cuda' or 'cuda:N'"
        if int(index) >= torch.cuda.device_count():
            return (f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA "
                    f"device(s) visible")
    return None


class PinnedStaging:
    """A stream plus pinned host buffers for one input and one output tensor shape."""

    def __init__(self, device) -> None:
        import torch

        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self._host_in = None
        self._host_out = None

    def upload(self, batch: np.ndarray, device_tensor) -> None:
        """Enqueue host->device copy of `batch` into `device_tensor` on the session stream."""
        import torch

        if self._host_in is None or tuple(self._host_in.shape) != batch.shape:
            self._host_in = torch.empty(batch.shape, dtype=device_tensor.dtype, pin_memory=True)
        # The pinned buffer must not be refilled while the previous copy may still read it.
        self.stream.synchronize()
        self._host_in.numpy()[...] = batch
        with torch.cuda.stream(self.stream):
            device_tensor.copy_(self._host_in, non_blocking=True)

    def download(self, device_tensor) -> np.ndarray:
        """Enqueue device->host copy of `device_tensor`, wait for the stream, return numpy."""
        import torch

        shape = tuple(device_tensor.shape)
        if self._host_out is None or tuple(self._host_out.shape) != shape \
                or self._host_out.dtype != device_tensor.dtype:
            self._host_out = torch.empty(shape, dtype=device_tensor.dtype, pin_memory=True)
        with torch.cuda.stream(self.stream):
            self._host_out.copy_(device_tensor, non_blocking=True)
        self.stream.synchronize()
        # Copy out: the pinned buffer is overwritten by the next call.
        return self._host_out.numpy().astype(np.float32, copy=True)

    def sync(self) -> None:
        """Wait for all work queued on the session stream."""
        self.stream.synchronize()
