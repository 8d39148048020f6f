"""The runtimes and devices each artifact is measured on, and why a pair cannot run here.

Every runtime that can run an artifact's format is asked about every device it knows, so a CPU
machine's report still lists the GPU rows, each with the runtime's own reason ("onnxruntime 1.x
has no CUDAExecutionProvider ..."), and a GPU machine fills them in without a config change.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.artifact import Format
from pipeline.config import Benchmark

# The devices asked about for each runtime, beyond those it reports itself (OpenVINO adds its
# own, e.g. "gpu.0" or "npu"): the GPU rows appear with a reason where there is no GPU.
KNOWN_DEVICES = {"torch": ("cpu", "cuda", "cuda-graph"), "onnxruntime": ("cpu", "cuda"),
                 "openvino": ("cpu",), "tensorrt": ("cuda",)}


def device_family(device: str) -> str:
    """"cuda" for "cuda", "cuda:1" and "cuda-graph"; "cpu" for "cpu"; OpenVINO's "gpu.0" as is."""
    return device.lower().split(":", 1)[0].split("-", 1)[0]


def is_eager(runtime: str, device: str) -> bool:
    """PyTorch eager on a plain device: the baseline a headline compares against."""
    return runtime == "torch" and device.lower().split(":", 1)[0] in ("cpu", "cuda")


@dataclass(frozen=True)
class Target:
    runtime: str
    device: str
    unavailable: str | None = None   # why this runtime cannot use this device here


def _devices(module) -> list[str]:
    devices = list(KNOWN_DEVICES.get(module.NAME, (module.DEFAULT_DEVICE,)))
    try:
        reported = module.devices()
    except Exception:  # a backend that cannot enumerate still gets its known devices asked
        reported = []
    return devices + [d for d in reported if d not in devices]


def _reason(module, device: str, bench: Benchmark) -> str | None:
    try:
        reason = module.unavailable(device)
    except Exception as exc:  # a broken backend becomes a row with a reason, not a crash
        reason = f"{module.NAME} failed to report on {device!r} ({type(exc).__name__}: {exc})"
    if reason is None and device_family(device) == "cuda" and not bench.cuda:
        reason = "benchmark.cuda is false in the config; set it to true to measure on the GPU"
    return reason


def targets_for(fmt: Format, bench: Benchmark) -> list[Target]:
    """The (runtime, device) pairs for artifacts of `fmt`, among the configured runtimes."""
    import runtimes
    wanted = {r.value for r in bench.runtimes}
    out = []
    for module in runtimes.for_format(fmt.value):
        if module.NAME not in wanted:
            continue
        for device in _devices(module):
            out.append(Target(module.NAME, device, _reason(module, device, bench)))
    return out


def openvino_precision(artifact_precision: str, device: str, pin: bool) -> str | None:
    """The inference precision an OpenVINO artifact is compiled with (None: the device default).

    Pinned, the measurement is of the artifact, not of the device's precision policy: f32 for
    fp32 artifacts and for int8 ones (their quantized layers run int8 either way; the float
    remainder stays f32 so the accuracy reflects quantization alone); f16 for fp16 artifacts on
    devices that compute in f16, else f32 (OpenVINO's CPU plugin would substitute bf16, which
    is a different number format from the artifact's).
    """
    if not pin:
        return None
    if artifact_precision == "fp16" and "FP16" in _capabilities(device):
        return "f16"
    return "f32"


def _capabilities(device: str) -> list[str]:
    import openvino as ov
    try:
        return list(ov.Core().get_property(device.upper(), "OPTIMIZATION_CAPABILITIES"))
    except Exception:
        return []
