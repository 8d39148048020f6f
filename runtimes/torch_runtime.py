"""PyTorch: runs an in-memory nn.Module, the reference every exported artifact is compared with.

Devices:
  "cpu"               eager, torch.set_num_threads(threads) (a process-wide setting)
  "cuda[:N]"          eager on the GPU, on the session's own stream
  "cuda-graph[:N]"    the forward pass captured once as a CUDA graph with static input/output
                      buffers and replayed per call; removes per-kernel launch overhead, which
                      dominates small models at batch 1. A new input shape is captured anew.
"""
from __future__ import annotations

import copy

import numpy as np

from runtimes.base import CannotLoad, as_batch, package_version, unimportable_reason
from runtimes.cuda_staging import PinnedStaging, cuda_unavailable_reason

NAME = "torch"
FORMATS = ("torch",)
DEFAULT_DEVICE = "cpu"
KNOWN_DEVICES = ("cpu", "cuda", "cuda-graph")  # asked about even where absent: rows say why

_KINDS = ("cpu", "cuda", "cuda-graph")
_GRAPH_WARMUP = 3  # eager passes on a side stream before capture, so lazy inits are not captured


def version() -> str | None:
    """Installed torch version, or None."""
    return package_version("torch", "torch")


def _parse(device: str) -> tuple[str, str]:
    """("cuda-graph", "cuda:1") from "cuda-graph:1"; the second item is a torch device string."""
    kind, _, index = device.lower().partition(":")
    torch_device = "cpu" if kind == "cpu" else ("cuda:" + index if index else "cuda")
    return kind, torch_device


def unavailable(device: str = "cpu") -> str | None:
    """Why `device` cannot be used with torch, or None."""
    reason = unimportable_reason("torch", "torch")
    if reason:
        return reason
    kind, torch_device = _parse(device)
    if kind not in _KINDS:
        return f"torch runtime has no device {device!r}; use one of {list(_KINDS)}"
    if kind == "cpu":
        return None
    return cuda_unavailable_reason(torch_device)


def devices() -> list[str]:
    """["cpu"], plus "cuda" and "cuda-graph" when a CUDA device is visible."""
    if unimportable_reason("torch", "torch"):
        return []
    return ["cpu"] + ([] if cuda_unavailable_reason("cuda") else ["cuda", "cuda-graph"])


def _logits(output):
    # Distillation students may return (logits, distill_logits); the first is the prediction.
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output.float()


class TorchCpuSession:
    def __init__(self, model) -> None:
        self._model = model

    @property
    def settings(self) -> dict:
        import torch
        return {"mode": "eager", "torch_threads": torch.get_num_threads()}

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _logits(self._model(torch.from_numpy(as_batch(batch)))).numpy()

    def sync(self) -> None:
        return None


class TorchCudaSession:
    """Eager forward on the GPU; pinned host buffers and a dedicated stream."""

    def __init__(self, model, device: str) -> None:
        self._model = model
        self._staging = PinnedStaging(device)
        self._input = None
        self.settings = {"mode": "eager"}

    @property
    def cuda_stream(self):
        """The torch.cuda.Stream the model runs on (for CUDA-event timing)."""
        return self._staging.stream

    def _input_buffer(self, shape: tuple[int, ...]):
        import torch

        if self._input is None or tuple(self._input.shape) != shape:
            with torch.cuda.stream(self._staging.stream):
                self._input = torch.empty(shape, device=self._staging.device)
        return self._input

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = as_batch(batch)
        x = self._input_buffer(batch.shape)
        self._staging.upload(batch, x)
        with torch.inference_mode(), torch.cuda.stream(self._staging.stream):
            out = _logits(self._model(x))
        return self._staging.download(out)

    def sync(self) -> None:
        self._staging.sync()


class TorchCudaGraphSession(TorchCudaSession):
    """The forward pass replayed from a captured CUDA graph with static buffers."""

    def __init__(self, model, device: str) -> None:
        super().__init__(model, device)
        self._graph = None
        self._output = None
        self.settings = {"mode": "cuda-graph"}

    def _capture(self, shape: tuple[int, ...]) -> None:
        import torch

        x = self._input_buffer(shape)
        x.zero_()
        stream = self._staging.stream
        stream.wait_stream(torch.cuda.current_stream(self._staging.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(_GRAPH_WARMUP):
                self._model(x)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._output = _logits(self._model(x))
        self._graph = graph

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = as_batch(batch)
        if self._graph is None or tuple(self._input.shape) != batch.shape:
            self._capture(batch.shape)
        self._staging.upload(batch, self._input)
        with torch.cuda.stream(self._staging.stream):
            self._graph.replay()
        return self._staging.download(self._output)


def load(model, device: str = "cpu", threads: int | None = None):
    """Wrap an nn.Module for inference on `device` ("cpu", "cuda[:N]", "cuda-graph[:N]").

    The module is put in eval mode; for CUDA a copy is moved to the GPU, so the caller's
    module stays on the CPU.
    """
    reason = unavailable(device)
    if reason:
        raise CannotLoad("torch", device, reason)
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"torch runtime loads an in-memory torch.nn.Module, got "
                        f"{type(model).__name__}; rebuild the model before loading it")
    if threads:
        torch.set_num_threads(int(threads))
    kind, torch_device = _parse(device)
    if kind == "cpu":
        return TorchCpuSession(model.eval())
    gpu_model = copy.deepcopy(model).to(torch_device).eval()
    # The weights were copied on the default stream; sessions run on their own stream.
    torch.cuda.synchronize(torch_device)
    if kind == "cuda-graph":
        return TorchCudaGraphSession(gpu_model, torch_device)
    return TorchCudaSession(gpu_model, torch_device)
