"""The runtimes and devices each artifact is measured on, and why a pair cannot run here.

Every runtime that can run an artifact's format is asked about every device it knows, so a CPU
machine's report still lists the GPU rows, each with the runtime's own reason ("onnxruntime 1.x
has no CUDAExecutionProvider ..."), and a GPU machine fills them in without a config change.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.artifact import Format
from pipeline.config import Benchmark


def device_family(device: str) -> str:
    """"cuda" for "cuda", "cuda:1" and "cuda-graph"; "cpu" for "cpu"; OpenVINO's "gpu.0" as is;
    a configured target's device ("jetson/cuda") is the target's name, its own family."""
    if "/" in device:
        return device.split("/", 1)[0]
    return device.lower().split(":", 1)[0].split("-", 1)[0]


REFERENCE_RUNTIME = "torch"   # PyTorch eager FP32: what every other row is compared with


def is_eager(runtime: str, device: str) -> bool:
    """PyTorch eager on a plain device: the baseline a headline compares against."""
    return runtime == REFERENCE_RUNTIME and device.lower().split(":", 1)[0] in ("cpu", "cuda")


def is_reference(runtime: str, device: str) -> bool:
    """PyTorch eager on the CPU: where the teacher's accuracy and every agreement are measured."""
    return runtime == REFERENCE_RUNTIME and device == "cpu"


@dataclass(frozen=True)
class Target:
    runtime: str
    device: str
    unavailable: str | None = None   # why this runtime cannot use this device here


def _devices(module) -> list[str]:
    # The devices a runtime knows are asked about beyond those it reports, so the GPU rows
    # appear with a reason where there is no GPU.
    devices = list(getattr(module, "KNOWN_DEVICES", (module.DEFAULT_DEVICE,)))
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
    for module in runtimes.for_format(fmt):
        if module.NAME not in wanted:
            continue
        for device in _devices(module):
            out.append(Target(module.NAME, device, _reason(module, device, bench)))
    return out
