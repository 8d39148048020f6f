"""Where a TensorRT session keeps its I/O tensors and which CUDA stream it runs on.

Two backends with one interface (allocate / upload / download / sync / stream_handle /
current_device):

- TorchBuffers: torch CUDA tensors on a torch stream, chosen when torch imports and sees a GPU,
  so the harness can time the session with CUDA events on that stream (`cuda_stream`).
- CudartBuffers: raw device and pinned host memory from libcudart (runtimes.cudart), for a device
  with TensorRT but no torch, such as a Jetson with only JetPack.

Both copy through page-locked host buffers, so uploads and downloads are DMA on the session's
stream and nothing is allocated inside a timed loop.
"""
from __future__ import annotations

import contextlib
import ctypes
import weakref
from typing import Dict, Optional, Tuple

import numpy as np

from runtimes import cudart
from runtimes.cuda_staging import PinnedStaging, cuda_unavailable_reason


def torch_has_cuda() -> bool:
    """True when torch imports and sees a CUDA device (then torch holds the buffers)."""
    try:
        import torch
    except Exception:  # missing, blocked, or a broken install: libcudart serves instead
        return False
    return bool(torch.cuda.is_available())


def unavailable(device: str) -> Optional[str]:
    """Why no buffer backend can hold tensors on CUDA `device`, or None."""
    return cuda_unavailable_reason(device) if torch_has_cuda() else cudart.unavailable(device)


def open_buffers(device: str):
    """TorchBuffers when torch has CUDA, else CudartBuffers, for CUDA `device`."""
    return TorchBuffers(device) if torch_has_cuda() else CudartBuffers(device)


class TorchBuffers:
    """I/O tensors as torch CUDA tensors, copied through PinnedStaging on its stream."""

    NAME = "torch"

    def __init__(self, device: str) -> None:
        import torch

        torch.cuda.init()  # TensorRT then shares torch's (primary) CUDA context
        self._staging = PinnedStaging(device)
        self.cuda_stream = self._staging.stream  # the harness records CUDA events on it
        self._tensors: Dict[str, object] = {}

    @property
    def stream_handle(self) -> int:
        """The cudaStream_t as an int, for execute_async_v3."""
        return int(self._staging.stream.cuda_stream)

    def current_device(self):
        """Context in which the session's device is current (for deserializing and executing)."""
        import torch

        return torch.cuda.device(self._staging.device)

    def allocate(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> int:
        """A device buffer for tensor `name` (replacing its previous one); its address."""
        import torch

        with torch.cuda.stream(self._staging.stream):
            buf = torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=self._staging.device)
        self._tensors[name] = buf
        return int(buf.data_ptr())

    def upload(self, name: str, batch: np.ndarray) -> None:
        """Enqueue the host->device copy of `batch` into tensor `name`."""
        self._staging.upload(batch, self._tensors[name])

    def download(self, name: str) -> np.ndarray:
        """Copy tensor `name` back, wait for the stream, and return it as float32."""
        return self._staging.download(self._tensors[name])

    def sync(self) -> None:
        """Wait for all work queued on the session stream."""
        self._staging.sync()


class CudartBuffers:
    """I/O tensors in cudaMalloc memory with a pinned host twin each, on a libcudart stream."""

    NAME = "cudart"

    def __init__(self, device: str) -> None:
        self._rt = cudart.runtime()
        _, _, index = device.partition(":")
        self._index = int(index or 0)
        self._rt.set_device(self._index)
        self.stream_handle = self._rt.stream_create()
        # name -> (device ptr, host ptr, host view); freed by the finalizer, never by __del__,
        # so a session dropped mid-run still waits for its stream before the memory goes.
        self._tensors: Dict[str, Tuple[int, int, np.ndarray]] = {}
        self._finalizer = weakref.finalize(self, _release, self._rt, self.stream_handle, self._tensors)

    def current_device(self):
        """Make the session's device current; TensorRT uses the thread's current device."""
        self._rt.set_device(self._index)
        return contextlib.nullcontext()

    def allocate(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> int:
        """A device buffer for tensor `name` (replacing its previous one); its address."""
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        self._rt.stream_synchronize(self.stream_handle)  # the old buffer may still be in use
        _free(self._rt, self._tensors.pop(name, None))
        device = self._rt.malloc(nbytes)
        try:
            host = self._rt.malloc_host(nbytes)
        except cudart.CudaError:
            self._rt.free(device)
            raise
        # A numpy view straight onto the pinned memory: filling it is the only host-side copy.
        pinned = (ctypes.c_ubyte * nbytes).from_address(host)
        view = np.frombuffer(pinned, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)
        self._tensors[name] = (device, host, view)
        return device

    def upload(self, name: str, batch: np.ndarray) -> None:
        """Enqueue the host->device copy of `batch` into tensor `name`."""
        device, host, view = self._tensors[name]
        # The pinned buffer must not be refilled while the previous copy may still read it.
        self._rt.stream_synchronize(self.stream_handle)
        view[...] = batch
        self._rt.memcpy_async(device, host, view.nbytes, cudart.HOST_TO_DEVICE, self.stream_handle)

    def download(self, name: str) -> np.ndarray:
        """Copy tensor `name` back, wait for the stream, and return it as float32."""
        device, host, view = self._tensors[name]
        self._rt.memcpy_async(host, device, view.nbytes, cudart.DEVICE_TO_HOST, self.stream_handle)
        self._rt.stream_synchronize(self.stream_handle)
        return view.astype(np.float32, copy=True)  # the pinned buffer is reused by the next call

    def sync(self) -> None:
        """Wait for all work queued on the session stream."""
        self._rt.stream_synchronize(self.stream_handle)

    def close(self) -> None:
        """Free every buffer and the stream now (also done when the object is collected)."""
        self._finalizer()


def _free(rt, entry) -> None:
    if entry is not None:
        device, host, _ = entry
        rt.free(device)
        rt.free_host(host)


def _release(rt, stream: int, tensors: dict) -> None:
    # Errors are swallowed: at interpreter exit the CUDA runtime may already be unloading, and a
    # finalizer has no caller to report to.
    with contextlib.suppress(cudart.CudaError):
        rt.stream_synchronize(stream)
    for entry in list(tensors.values()):
        with contextlib.suppress(cudart.CudaError):
            _free(rt, entry)
    tensors.clear()
    with contextlib.suppress(cudart.CudaError):
        rt.stream_destroy(stream)
