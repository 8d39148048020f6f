"""Inference runtimes (one module per backend) and the one benchmark harness.

Importing this package imports no backend: each runtime module loads torch, onnxruntime,
openvino or tensorrt inside its functions, so listing runtimes is cheap and a missing backend
shows up as a reason string from `unavailable()`, never as an ImportError.
"""
from __future__ import annotations

from types import ModuleType

from runtimes import (onnxruntime_runtime, openvino_runtime, tensorrt_runtime, torch_compile_runtime,
                      torch_runtime)

RUNTIMES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (torch_runtime, torch_compile_runtime, onnxruntime_runtime, openvino_runtime,
                   tensorrt_runtime)
}


def get(name: str) -> ModuleType:
    """The runtime module registered as `name`."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise KeyError(f"unknown runtime {name!r}; known runtimes: {', '.join(RUNTIMES)}") from None


def for_format(fmt) -> list[ModuleType]:
    """Runtimes that can run artifacts of format `fmt` (a name such as "onnx", or a str enum)."""
    name = str(getattr(fmt, "value", fmt)).lower()
    return [module for module in RUNTIMES.values() if name in module.FORMATS]


def describe() -> list[dict]:
    """One row per runtime: name, version, formats, devices, and why it is unavailable (None
    when it can run on its default device). Used by `edgeship runtimes`."""
    rows = []
    for name, module in RUNTIMES.items():
        try:
            reason = module.unavailable(module.DEFAULT_DEVICE)
            found = module.devices()
        except Exception as exc:  # a broken backend must not hide the others
            reason, found = f"{type(exc).__name__}: {exc}", []
        rows.append({"name": name, "version": module.version(), "formats": list(module.FORMATS),
                     "devices": found, "unavailable": reason})
    return rows
