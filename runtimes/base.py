"""What every runtime module provides, and the small helpers they share.

A runtime module (one file per backend) exposes:

    NAME: str                   registry key ("torch", "onnxruntime", ...)
    FORMATS: tuple[str, ...]    artifact formats it can run ("torch", "onnx", "openvino", "tensorrt")
    DEFAULT_DEVICE: str         the device `describe()` asks about ("cpu", or "cuda" for TensorRT)
    version() -> str | None
    unavailable(device) -> str | None   a human reason, or None when the device can be used
    devices() -> list[str]
    load(model, device, threads) -> Session

Modules import their backend inside functions only, so importing `runtimes` stays cheap and a
missing backend is a reason string instead of an ImportError.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import Protocol, runtime_checkable

import numpy as np

from runtimes.errors import Unavailable


class CannotLoad(Unavailable, RuntimeError):
    """`load()` was asked for a runtime or device that cannot be used here; the message is the
    runtime's own `unavailable()` reason, so the CLI prints one line and exits 8."""

    def __init__(self, runtime: str, device: str, reason: str):
        super().__init__(f"cannot load on {runtime} device {device!r}: {reason}")


@runtime_checkable
class Session(Protocol):
    """A loaded model on one device: NCHW float32 batch in, logits out."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and return the logits on the host."""
        ...

    def sync(self) -> None:
        """Wait until all device work issued by `run` has finished (no-op on CPU)."""
        ...


def install_hint(package: str, extra: str | None = None) -> str:
    """The reason string for a backend that cannot be imported."""
    target = f"edgeship[{extra}]" if extra else "edgeship"
    return f"{package} is not installed: pip install '{target}'"


def import_failure(module: str) -> str | None:
    """Why `import module` fails (missing, or broken install), or None when it imports."""
    if importlib.util.find_spec(module) is None:
        return "missing"
    try:
        importlib.import_module(module)
    except Exception as exc:  # a present but broken install (missing shared library, ABI clash)
        return f"{type(exc).__name__}: {exc}"
    return None


def unimportable_reason(module: str, package: str, extra: str | None = None) -> str | None:
    """A reason naming the fix when `module` cannot be imported, else None."""
    failure = import_failure(module)
    if failure is None:
        return None
    if failure == "missing":
        return install_hint(package, extra)
    return f"{package} is installed but fails to import ({failure}); reinstall it"


def package_version(module: str, *distributions: str) -> str | None:
    """Installed version of a backend, read from package metadata before importing it.

    Some installs carry no metadata (TensorRT from JetPack's apt packages), so the module's
    own `__version__` is the fallback.
    """
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(getattr(importlib.import_module(module), "__version__", None) or "") or None
    except Exception:
        return None


def as_batch(batch: np.ndarray) -> np.ndarray:
    """The batch as a C-contiguous float32 NCHW array (no copy when it already is one)."""
    arr = np.ascontiguousarray(batch, dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"batch has shape {arr.shape}; expected NCHW (4 dimensions), "
                         f"e.g. add a batch axis with batch[None]")
    return arr
