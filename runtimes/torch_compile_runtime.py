"""torch.compile: the PyTorch model compiled by the inductor backend, on the CPU or a CUDA GPU.

The baseline users ask about first ("why not just torch.compile?"): the same FP32 module as the
torch runtime, compiled to fused C++/OpenMP (CPU) or Triton (CUDA) kernels. Inductor specialises
on the input shape, so each new shape compiles once on its first call; that time is reported as
`compile_seconds` in the session's settings, apart from the latency the harness measures after
warm-up, and scoring feeds one image per call so accuracy reuses the latency shape's compile.
"""
from __future__ import annotations

import copy
import functools
import os
import shutil
import time

import numpy as np

from runtimes import torch_runtime
from runtimes.base import CannotLoad, as_batch, package_version, unimportable_reason
from runtimes.cuda_staging import cuda_unavailable_reason
from runtimes.parity import ParityError, compare_logits
from runtimes.precision import Precision

NAME = "torch_compile"
FORMATS = ("torch",)
DEFAULT_DEVICE = "cpu"
KNOWN_DEVICES = ("cpu", "cuda")
MAX_SCORING_BATCH = 1
_COMPILERS = ("g++", "c++", "clang++")  # inductor's CPU code is C++ built at compile time


def version() -> str | None:
    """The installed torch version (torch.compile ships with it), or None."""
    return package_version("torch", "torch")


def unavailable(device: str = "cpu") -> str | None:
    """Why torch.compile cannot run on `device`, or None."""
    reason = unimportable_reason("torch", "torch")
    if reason:
        return reason
    kind = device.lower().split(":", 1)[0]
    if kind == "cpu":
        if not any(shutil.which(c) for c in _COMPILERS):
            return ("torch.compile's inductor backend builds C++ on the CPU and no compiler was "
                    "found: install one (apt install g++)")
        return None
    if kind == "cuda":
        return cuda_unavailable_reason(device)
    return f"torch_compile has no device {device!r}; use one of {list(KNOWN_DEVICES)}"


def devices() -> list[str]:
    """["cpu"] (with a C++ compiler), plus "cuda" when a CUDA device is visible."""
    return [d for d in KNOWN_DEVICES if unavailable(d) is None]


class CompiledSession:
    """A torch session around a compiled module, timing each input shape's first (compiling) call
    and checking its output against the eager module's on that same batch."""

    def __init__(self, inner, eager) -> None:
        self._inner, self._eager = inner, eager
        self._compile_seconds: dict[tuple[int, ...], float] = {}
        if hasattr(inner, "cuda_stream"):
            self.cuda_stream = inner.cuda_stream

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = as_batch(batch)
        if batch.shape in self._compile_seconds:
            return self._inner.run(batch)
        t0 = time.perf_counter()
        out = self._inner.run(batch)
        self._inner.sync()
        self._compile_seconds[batch.shape] = time.perf_counter() - t0
        self._check(batch, out)
        return out

    def _check(self, batch: np.ndarray, out: np.ndarray) -> None:
        """A miscompiled kernel gives logits that look like a model's; accuracy alone would not
        say why. Held to the fp16 bound: compiled kernels sum in another order (and may use TF32
        on a GPU), while a broken kernel is off by orders of magnitude."""
        result = compare_logits(self._eager.run(batch), out, Precision.FP16)
        if not result.passed:
            raise ParityError(f"torch.compile's output differs from eager PyTorch on the same batch: "
                              f"{result.describe()}; inductor's kernel cache is "
                              f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'the default')}, and kernels it "
                              "cached under another ATEN_CPU_CAPABILITY are reused as they are: remove "
                              "it, or give each capability its own TORCHINDUCTOR_CACHE_DIR", result)

    def sync(self) -> None:
        self._inner.sync()

    @property
    def settings(self) -> dict:
        return {**self._inner.settings, "mode": "torch.compile (inductor)",
                "compile_seconds": (round(sum(self._compile_seconds.values()), 3)
                                    if self._compile_seconds else None),
                "compiled_shapes": [list(s) for s in self._compile_seconds]}


def load(model, device: str = "cpu", threads: int | None = None) -> CompiledSession:
    """Compile an nn.Module with inductor for `device` ("cpu" or "cuda[:N]"); the compilation
    itself happens on the first call of each input shape. The caller's module is not changed."""
    reason = unavailable(device)
    if reason:
        raise CannotLoad("torch_compile", device, reason)
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"torch_compile loads an in-memory torch.nn.Module, got {type(model).__name__}")
    if threads:
        torch.set_num_threads(int(threads))
    _cache_per_capability()
    module = copy.deepcopy(model).eval()
    if device.lower().startswith("cpu"):
        session = torch_runtime.TorchCpuSession
    else:
        module = module.to(device.lower())
        torch.cuda.synchronize(device.lower())
        session = functools.partial(torch_runtime.TorchCudaSession, device=device.lower())
    compiled = torch.compile(module, backend="inductor", dynamic=False)
    return CompiledSession(session(compiled), session(module))   # the same weights, compiled and eager


def _cache_per_capability() -> None:
    """Inductor's on-disk kernel cache does not tell kernels built under one ATEN_CPU_CAPABILITY
    from another's: in torch 2.14, kernels cached with AVX-512 and reused with
    ATEN_CPU_CAPABILITY=avx2 gave NaN logits, and the reverse corrupted the heap. So a capability
    set by hand gets a cache folder of its own, unless the cache folder was chosen by hand too."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if not capability:
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen in (None, default_cache_dir()):   # inductor writes its default there on first use
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}-{capability}"
